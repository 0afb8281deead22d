"""Service-wide limits and defaults of the MUC service (XEP-0045 §17: security considerations,
limits on rooms, occupants, messages and history).

Set in the ``[muc]`` section of ``switchboard.toml`` or, as for every key, by environment
variable (``SWITCHBOARD_MUC_MAX_OCCUPANTS=500``). The component's own address, secret and
instance mode come from ``[components.muc]``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from core.runtime.config import MUC_CREATORS as CREATORS
from core.runtime.config import Config, MucConfig

ENV_PREFIX = "SWITCHBOARD_MUC_"


class SettingsError(ValueError):
    """A MUC setting has a value that cannot be used."""


@dataclass
class MucSettings:
    # Rooms a single bare JID may create (and own) at once; 0: no limit.
    max_rooms_per_user: int = 100
    # Occupants of one room; the room's own maxusers may only lower it.
    max_occupants: int = 200
    # Default maxusers of a new room.
    default_max_occupants: int = 50
    # Characters of a message body or subject.
    max_message_chars: int = 10000
    # Messages kept per room; the room's history length may only lower it.
    max_history: int = 100
    # History length of a new room (muc#maxhistoryfetch).
    default_history: int = 20
    # Who may create rooms: anyone, local (accounts of the server's domain) or nobody.
    creators: str = "anyone"
    # New rooms are persistent by default (they survive their last occupant leaving).
    persistent_by_default: bool = False
    # The server's domain, for creators = "local".
    server_domain: str = ""
    # Rooms listed in service discovery at most.
    max_listed_rooms: int = 1000

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise SettingsError(f"{ENV_PREFIX}{f.name.upper()}: must not be negative")
        if self.creators not in CREATORS:
            raise SettingsError(
                f"{ENV_PREFIX}CREATORS: expected one of {', '.join(CREATORS)}, "
                f"got {self.creators!r}"
            )
        if self.max_occupants < 1:
            raise SettingsError(f"{ENV_PREFIX}MAX_OCCUPANTS: must be at least 1")
        self.default_max_occupants = min(self.default_max_occupants, self.max_occupants)
        self.default_history = min(self.default_history, self.max_history)


def settings_from_config(config: Config) -> MucSettings:
    """The service settings from the ``[muc]`` section (validated by the config loader)."""
    settings = MucSettings(
        server_domain=config.domain,
        **{f.name: getattr(config.muc, f.name) for f in fields(MucConfig)},
    )
    settings.validate()
    return settings

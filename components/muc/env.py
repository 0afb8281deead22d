"""What the room logic is given besides the room: the service's settings and domain, a clock
and a source of secrets, so that the logic stays free of I/O and runs the same in tests."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree

from components.muc.settings import MucSettings

Out = list  # what a step of the room logic sends, in order: stanzas and Fanouts


@dataclass(slots=True)
class Fanout:
    """One stanza for many recipients (a groupchat message, XEP-0045 §7.4): built once and
    sent to each recipient in turn with only its 'to' changed, instead of a copy each."""

    stanza: etree._Element
    recipients: list[str]


@dataclass
class Env:
    domain: str
    settings: MucSettings = field(default_factory=MucSettings)
    clock: Callable[[], float] = time.time
    new_secret: Callable[[], str] = lambda: secrets.token_urlsafe(24)

    def now(self) -> float:
        return self.clock()

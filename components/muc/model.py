"""The state of a Multi-User Chat room (XEP-0045 §4, §5): configuration, affiliations, occupants
with their roles and sessions, subject and discussion history.

Plain data with no I/O. A room records which of its parts changed since it was last stored,
so that the store writes only those (``Room.changes``). Every part serialises to JSON-ready
dicts for Redis (``to_dict``/``from_dict``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lxml import etree

Element = etree._Element

# XEP-0045 §5.1 and §5.2: roles and affiliations, lowest first.
ROLES = ("none", "visitor", "participant", "moderator")
AFFILIATIONS = ("outcast", "none", "member", "admin", "owner")
ROLE_RANK = {r: i for i, r in enumerate(ROLES)}
AFFILIATION_RANK = {a: i for i, a in enumerate(AFFILIATIONS)}
# XEP-0045 §7.5 / muc#roomconfig_allowpm: who may send private messages.
PM_POLICIES = ("anyone", "participants", "moderators", "none")
# muc#roomconfig_whois: who may see occupants' real JIDs.
WHOIS_POLICIES = ("moderators", "anyone")


class CorruptRoom(Exception):
    """Stored room state that cannot be read back."""


@dataclass
class RoomConfig:
    """The owner-configurable options of a room (XEP-0045 §10.2, muc#roomconfig)."""

    name: str = ""
    description: str = ""
    language: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    moderated: bool = False
    # A non-empty password makes the room password-protected (§7.2.6).
    password: str = ""
    # 0: the service's maximum applies.
    max_users: int = 0
    whois: str = "moderators"
    change_subject: bool = False
    allow_invites: bool = False
    allow_pm: str = "anyone"
    history_length: int = 20
    presence_broadcast: list[str] = field(
        default_factory=lambda: ["moderator", "participant", "visitor"]
    )

    @property
    def non_anonymous(self) -> bool:
        return self.whois == "anyone"

    @property
    def password_protected(self) -> bool:
        return bool(self.password)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoomConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Affiliation:
    """A long-lived relation of a bare JID with the room (§5.2), with the reserved nick of a
    member (§7.10) and the reason given, for the lists of §9 and §10."""

    affiliation: str
    nick: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Affiliation:
        if data.get("affiliation") not in AFFILIATIONS:
            raise CorruptRoom(f"unknown affiliation {data.get('affiliation')!r}")
        return cls(data["affiliation"], data.get("nick"), data.get("reason"))


@dataclass
class Occupant:
    """One nick in the room: a bare JID with one or more sessions (full JIDs) behind it.

    ``sessions`` maps each real full JID to the presence it last sent to the room (serialised,
    addresses stripped); the presence of ``primary`` is the one other occupants see."""

    nick: str
    bare: str
    role: str
    sessions: dict[str, str] = field(default_factory=dict)
    primary: str = ""
    joined: float = 0.0
    _parsed: dict[str, Element] = field(default_factory=dict, repr=False, compare=False)

    def presence(self, full: str | None = None) -> Element:
        """A fresh copy of the stored presence of ``full`` (default: the primary session)."""
        full = full or self.primary
        cached = self._parsed.get(full)
        if cached is None:
            cached = etree.fromstring(self.sessions[full])
            self._parsed[full] = cached
        return etree.fromstring(etree.tostring(cached))

    def set_presence(self, full: str, presence: Element) -> None:
        self.sessions[full] = etree.tostring(presence, encoding="unicode")
        self._parsed.pop(full, None)
        self.primary = full

    def drop_session(self, full: str) -> None:
        self.sessions.pop(full, None)
        self._parsed.pop(full, None)
        if self.primary == full:
            # The most recently joined remaining session becomes the visible one.
            self.primary = next(reversed(self.sessions), "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "nick": self.nick,
            "bare": self.bare,
            "role": self.role,
            "sessions": self.sessions,
            "primary": self.primary,
            "joined": self.joined,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Occupant:
        try:
            occupant = cls(
                nick=str(data["nick"]),
                bare=str(data["bare"]),
                role=str(data["role"]),
                sessions={str(k): str(v) for k, v in data["sessions"].items()},
                primary=str(data.get("primary", "")),
                joined=float(data.get("joined", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptRoom(f"unreadable occupant: {exc}") from None
        if occupant.role not in ROLES or not occupant.sessions:
            raise CorruptRoom(f"invalid occupant {occupant.nick!r}")
        if occupant.primary not in occupant.sessions:
            occupant.primary = next(reversed(occupant.sessions))
        return occupant


@dataclass
class Subject:
    """The room subject (§8.1) and who set it (None: the room itself)."""

    text: str
    nick: str | None = None
    stamp: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subject:
        return cls(str(data.get("text", "")), data.get("nick"), float(data.get("stamp", 0.0)))


@dataclass
class HistoryItem:
    """One groupchat message as the room reflected it (without 'to'), with its time and size."""

    stamp: float
    xml: str

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.stamp, "x": self.xml}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistoryItem:
        try:
            return cls(float(data["t"]), str(data["x"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRoom(f"unreadable history entry: {exc}") from None


@dataclass
class Changes:
    """What changed since the room was loaded or last stored."""

    meta: bool = False
    occupants: set[str] = field(default_factory=set)
    affiliations: set[str] = field(default_factory=set)
    history: list[HistoryItem] = field(default_factory=list)
    created: bool = False
    destroyed: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.meta
            or self.occupants
            or self.affiliations
            or self.history
            or self.created
            or self.destroyed
        )


@dataclass
class Room:
    """A room: its JID (``room@service``), state, and pending changes."""

    jid: str
    config: RoomConfig = field(default_factory=RoomConfig)
    affiliations: dict[str, Affiliation] = field(default_factory=dict)
    occupants: dict[str, Occupant] = field(default_factory=dict)
    subject: Subject | None = None
    history: list[HistoryItem] = field(default_factory=list)
    # §10.1.1: a new room is locked until its owner configures it.
    locked: bool = False
    created: float = 0.0
    creator: str = ""
    # The key of the room's XEP-0421 occupant ids.
    secret: str = ""
    # The token of the stored state this room was loaded from ("" before it is stored).
    version: str = ""
    changes: Changes = field(default_factory=Changes)
    # Until when (the service's monotonic clock) this copy may be used without asking Redis
    # for the room's version (MucService.room); 0: ask first.
    fresh_until: float = field(default=0.0, repr=False, compare=False)
    _by_session: dict[str, str] = field(default_factory=dict, repr=False)
    # XEP-0421 occupant ids already computed, by (secret, bare JID): an HMAC per message
    # otherwise.
    occupant_ids: dict[tuple[str, str], str] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.reindex()

    # Occupants -----------------------------------------------------------------------

    def reindex(self) -> None:
        self._by_session = {full: o.nick for o in self.occupants.values() for full in o.sessions}

    def occupant_of(self, full: str) -> Occupant | None:
        """The occupant a real full JID is joined as, if any."""
        nick = self._by_session.get(full)
        return self.occupants.get(nick) if nick is not None else None

    def occupants_of_bare(self, bare: str) -> list[Occupant]:
        return [o for o in self.occupants.values() if o.bare == bare]

    def put_occupant(self, occupant: Occupant) -> None:
        self.occupants[occupant.nick] = occupant
        for full in occupant.sessions:
            self._by_session[full] = occupant.nick
        self.changes.occupants.add(occupant.nick)

    def touch_occupant(self, occupant: Occupant) -> None:
        """Record a change to an occupant already in the room."""
        self.put_occupant(occupant)

    def drop_session(self, occupant: Occupant, full: str) -> None:
        """Remove one session; the occupant goes with its last session."""
        occupant.drop_session(full)
        self._by_session.pop(full, None)
        if not occupant.sessions:
            self.occupants.pop(occupant.nick, None)
        self.changes.occupants.add(occupant.nick)

    def remove_occupant(self, occupant: Occupant) -> None:
        for full in list(occupant.sessions):
            self._by_session.pop(full, None)
        self.occupants.pop(occupant.nick, None)
        self.changes.occupants.add(occupant.nick)

    def rename(self, occupant: Occupant, new_nick: str) -> None:
        self.occupants.pop(occupant.nick, None)
        self.changes.occupants.add(occupant.nick)
        occupant.nick = new_nick
        self.put_occupant(occupant)

    def sessions(self) -> Iterator[tuple[Occupant, str]]:
        """Every (occupant, real full JID) pair: the addresses of a broadcast."""
        for occupant in self.occupants.values():
            for full in occupant.sessions:
                yield occupant, full

    # Affiliations --------------------------------------------------------------------

    def affiliation(self, jid: str) -> str:
        """The affiliation of a bare JID; a ban on its domain also applies (§9.1)."""
        entry = self.affiliations.get(jid)
        if entry is not None:
            return entry.affiliation
        domain = jid.rpartition("@")[2]
        if domain != jid:
            entry = self.affiliations.get(domain)
            if entry is not None and entry.affiliation == "outcast":
                return "outcast"
        return "none"

    def set_affiliation(
        self, jid: str, affiliation: str, *, nick: str | None = None, reason: str | None = None
    ) -> None:
        if affiliation == "none":
            self.affiliations.pop(jid, None)
        else:
            self.affiliations[jid] = Affiliation(affiliation, nick, reason)
        self.changes.affiliations.add(jid)

    def with_affiliation(self, affiliation: str) -> list[tuple[str, Affiliation]]:
        return sorted(
            (jid, a) for jid, a in self.affiliations.items() if a.affiliation == affiliation
        )

    def owners(self) -> list[str]:
        return [jid for jid, _ in self.with_affiliation("owner")]

    def reserved_nick_owner(self, nick: str) -> str | None:
        """The bare JID that registered ``nick`` in this room (§7.10), if any."""
        for jid, a in self.affiliations.items():
            if a.nick == nick and a.affiliation != "outcast":
                return jid
        return None

    # History and meta ------------------------------------------------------------------

    def add_history(self, item: HistoryItem, limit: int) -> None:
        """Keep ``item`` among the last ``limit`` messages (XEP-0045 §7.2.15 and
        muc#maxhistoryfetch: the room's own setting bounds what is kept). With a
        limit of 0 nothing is kept, so there is nothing to store either."""
        if limit <= 0:
            self.history.clear()
            return
        self.history.append(item)
        self.trim_history(limit)
        self.changes.history.append(item)
        if len(self.changes.history) > limit:
            del self.changes.history[: len(self.changes.history) - limit]

    def trim_history(self, limit: int) -> None:
        """Forget all but the last ``limit`` messages (in memory; the store trims its copy
        on the room's next write)."""
        if len(self.history) > max(limit, 0):
            del self.history[: len(self.history) - max(limit, 0)]

    def touch(self) -> None:
        """Record a change to the configuration, subject, lock or other room-wide state."""
        self.changes.meta = True

    def meta_dict(self) -> dict[str, Any]:
        return {
            "locked": self.locked,
            "created": self.created,
            "creator": self.creator,
            "secret": self.secret,
            "subject": self.subject.to_dict() if self.subject is not None else None,
        }

    def apply_meta(self, data: dict[str, Any]) -> None:
        self.locked = bool(data.get("locked", False))
        self.created = float(data.get("created", 0.0))
        self.creator = str(data.get("creator", ""))
        self.secret = str(data.get("secret", ""))
        subject = data.get("subject")
        self.subject = Subject.from_dict(subject) if isinstance(subject, dict) else None

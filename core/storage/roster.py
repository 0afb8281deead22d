"""Rosters in Redis (RFC 6121 §2, §3): items, the roster version and pending inbound
subscription requests of one account.

Three keys per account, all with the account's hash tag so one MULTI/EXEC covers a change:
``keys.roster`` (contact -> JSON item), ``keys.roster_version`` (the version string) and
``keys.roster_pending`` (contact -> the stored ``subscribe`` stanza). A subscription state of
RFC 6121 Appendix A is the item's ``subscription`` and ``ask`` plus whether a request from the
contact is pending; a pending request alone does not make a roster item (§3.1.3).

Every write changes the version when an item changes, and is one transaction: what a client is
told has happened is in Redis before it is told.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio
from redis.asyncio.client import Pipeline

from core.storage import keys

SUBSCRIPTIONS = ("none", "to", "from", "both")


@dataclass(frozen=True, slots=True)
class RosterItem:
    """One contact in a roster (RFC 6121 §2.1.2)."""

    jid: str
    name: str | None = None
    groups: tuple[str, ...] = ()
    subscription: str = "none"
    ask: bool = False  # ask='subscribe': the user's request awaits the contact's answer
    approved: bool = False  # §3.4: the contact's future request is pre-approved

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"subscription": self.subscription}
        if self.name is not None:
            data["name"] = self.name
        if self.groups:
            data["groups"] = list(self.groups)
        if self.ask:
            data["ask"] = True
        if self.approved:
            data["approved"] = True
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, jid: str, raw: bytes) -> RosterItem:
        data = json.loads(raw)
        sub = data.get("subscription", "none")
        return cls(
            jid=jid,
            name=data.get("name"),
            groups=tuple(data.get("groups", ())),
            subscription=sub if sub in SUBSCRIPTIONS else "none",
            ask=bool(data.get("ask", False)),
            approved=bool(data.get("approved", False)),
        )

    def evolve(self, **changes: Any) -> RosterItem:
        return replace(self, **changes)


@dataclass
class Roster:
    """The roster of one account as loaded: items by contact, the version, pending requests."""

    items: dict[str, RosterItem] = field(default_factory=dict)
    version: str = ""
    pending: dict[str, bytes] = field(default_factory=dict)


def next_version(version: str) -> str:
    """The version after ``version``: ``<epoch>-<n>``. A roster without a version (new, or of
    an account deleted and created again) starts a new epoch, so a client's cached version of
    an earlier roster never matches by accident."""
    epoch, sep, n = version.rpartition("-")
    if sep and epoch and n.isdigit():
        return f"{epoch}-{int(n) + 1}"
    return f"{secrets.token_hex(4)}-1"


class RosterStore:
    """Load and change one account's roster; each change is one MULTI/EXEC transaction.

    Callers serialise changes of one account (the roster module holds a lock per account), so
    a change computed from a loaded roster is written without a WATCH."""

    def __init__(self, redis: redis.asyncio.Redis) -> None:
        self._redis = redis

    async def load(self, bare: str) -> Roster:
        async with self._redis.pipeline(transaction=True) as pipe:
            self.queue_load(pipe, bare)
            return self.loaded(await pipe.execute())

    @staticmethod
    def queue_load(pipe: Pipeline, bare: str) -> None:
        """Queue the reads of ``load`` on a transaction (``core.storage.batch``)."""
        pipe.hgetall(keys.roster(bare))
        pipe.get(keys.roster_version(bare))
        pipe.hgetall(keys.roster_pending(bare))

    @staticmethod
    def loaded(replies: list[Any]) -> Roster:
        """The roster from the replies to the commands ``queue_load`` queued."""
        raw_items, raw_version, raw_pending = replies
        items = {}
        for k, v in raw_items.items():
            jid = k.decode()
            items[jid] = RosterItem.from_json(jid, v)
        return Roster(
            items=items,
            version=raw_version.decode() if raw_version else "",
            pending={k.decode(): v for k, v in raw_pending.items()},
        )

    @staticmethod
    def queue_item(pipe: Pipeline, bare: str, contact: str) -> None:
        """Queue the read of one item of the roster of ``bare``; ``item_loaded`` reads it."""
        pipe.hget(keys.roster(bare), contact)

    @staticmethod
    def item_loaded(contact: str, raw: bytes | None) -> RosterItem | None:
        return RosterItem.from_json(contact, raw) if raw else None

    async def write(
        self,
        bare: str,
        *,
        version: str | None = None,
        items: dict[str, RosterItem | None] | None = None,
        pending: dict[str, bytes | None] | None = None,
    ) -> None:
        """Apply changes in one transaction: ``items`` and ``pending`` map a contact to its
        new value, None to delete it; ``version`` is the new roster version, if any."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for jid, item in (items or {}).items():
                if item is None:
                    pipe.hdel(keys.roster(bare), jid)
                else:
                    pipe.hset(keys.roster(bare), jid, item.to_json())
            for jid, stanza in (pending or {}).items():
                if stanza is None:
                    pipe.hdel(keys.roster_pending(bare), jid)
                else:
                    pipe.hset(keys.roster_pending(bare), jid, stanza)
            if version is not None:
                pipe.set(keys.roster_version(bare), version.encode())
            if len(pipe):
                await pipe.execute()

    async def count(self, bare: str) -> int:
        return int(await self._redis.hlen(keys.roster(bare)))

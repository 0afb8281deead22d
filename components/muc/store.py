"""Rooms in Redis: everything a MUC instance needs to carry on a room another instance served,
written before the room answers (DESIGN "Redis: the shared state").

Keys (every key of one room carries the room JID as hash tag, so a room lives in one Redis
Cluster slot and is written atomically):

=================================  ======  =====================================================
key                                type    contents
=================================  ======  =====================================================
``muc:room:{<room>}``              hash    ``config`` (JSON), ``meta`` (JSON: lock, creator,
                                           subject, occupant-id secret), ``v`` (version token)
``muc:occupants:{<room>}``         hash    nick -> occupant (JSON: bare JID, role, sessions
                                           with their last presence)
``muc:affiliations:{<room>}``      hash    bare JID -> affiliation (JSON, with reserved nick)
``muc:history:{<room>}``           list    the last messages (JSON: time, stanza), oldest first
``muc:rooms:{<service>}``          set     every stored room of the service
``muc:created:{<bare>}``           set     rooms created by a user that still exist
=================================  ======  =====================================================

Every write to a room is one Lua script that first compares the room's version token with
the one the writer loaded and then bumps it: two instances that both believe they serve a
room (while the core moves it between them) cannot overwrite each other's changes; the
loser reloads and handles the stanza again.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

import redis.asyncio as aioredis

from components.muc.model import (
    Affiliation,
    Changes,
    CorruptRoom,
    HistoryItem,
    Occupant,
    Room,
    RoomConfig,
)

log = logging.getLogger(__name__)


def _tagged(prefix: str, tag: str) -> bytes:
    return f"{prefix}:{{{tag}}}".encode()


def room_key(room: str) -> bytes:
    return _tagged("muc:room", room)


def occupants_key(room: str) -> bytes:
    return _tagged("muc:occupants", room)


def affiliations_key(room: str) -> bytes:
    return _tagged("muc:affiliations", room)


def history_key(room: str) -> bytes:
    return _tagged("muc:history", room)


def rooms_key(service: str) -> bytes:
    return _tagged("muc:rooms", service)


def created_key(bare: str) -> bytes:
    return _tagged("muc:created", bare)


class StaleRoom(Exception):
    """The room changed in Redis since it was loaded (another instance wrote it)."""


# KEYS: room, occupants, affiliations, history. ARGV[1]: expected version ("" for a room not
# stored yet), ARGV[2]: new version ("" to leave none: the room is being deleted), then the
# operations, each as: argument count, command, key index, arguments...
_WRITE = """
local v = redis.call('HGET', KEYS[1], 'v') or ''
if v ~= ARGV[1] then return 0 end
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local args = {}
  for j = 1, n do args[j] = ARGV[i + 2 + j] end
  redis.call(ARGV[i + 1], KEYS[tonumber(ARGV[i + 2])], unpack(args))
  i = i + 3 + n
end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'v', ARGV[2]) end
return 1
"""
_ROOM, _OCCUPANTS, _AFFILIATIONS, _HISTORY = 1, 2, 3, 4


class RoomStore:
    """Loads and saves rooms of one MUC service."""

    def __init__(self, redis: aioredis.Redis, service: str) -> None:
        self.redis = redis
        self.service = service
        self._write = redis.register_script(_WRITE)

    async def version(self, jid: str) -> str | None:
        """The room's version token, None when no such room is stored."""
        v = await self.redis.hget(room_key(jid), "v")
        return v.decode() if v is not None else None

    async def load(self, jid: str, history_limit: int) -> Room | None:
        """The stored room, None if there is none; raises CorruptRoom when it is unreadable."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(room_key(jid))
        pipe.hgetall(occupants_key(jid))
        pipe.hgetall(affiliations_key(jid))
        pipe.lrange(history_key(jid), -max(history_limit, 1), -1)
        meta_hash, occupants, affiliations, history = await pipe.execute()
        if not meta_hash or b"v" not in meta_hash:
            return None
        try:
            config = RoomConfig.from_dict(json.loads(meta_hash.get(b"config", b"{}")))
            room = Room(jid=jid, config=config)
            room.apply_meta(json.loads(meta_hash.get(b"meta", b"{}")))
            for nick, raw in occupants.items():
                occupant = Occupant.from_dict(json.loads(raw))
                if occupant.nick != nick.decode():
                    raise CorruptRoom(f"occupant stored under {nick!r} is {occupant.nick!r}")
                room.occupants[occupant.nick] = occupant
            for bare, raw in affiliations.items():
                room.affiliations[bare.decode()] = Affiliation.from_dict(json.loads(raw))
            room.history = [HistoryItem.from_dict(json.loads(raw)) for raw in history]
        except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise CorruptRoom(f"room {jid}: {exc}") from None
        room.reindex()
        room.version = meta_hash[b"v"].decode()
        return room

    async def save(self, room: Room, history_limit: int) -> None:
        """Write what changed; raises StaleRoom (and writes nothing) when the stored room is
        not the version this one was loaded from."""
        changes = room.changes
        if not changes:
            return
        ops: list[Any] = []

        def op(command: str, key: int, *args: Any) -> None:
            ops.extend([len(args), command, key, *args])

        if changes.destroyed:
            for key in (_OCCUPANTS, _AFFILIATIONS, _HISTORY, _ROOM):
                op("DEL", key)
            new_version = ""
        else:
            if changes.meta or changes.created:
                op(
                    "HSET",
                    _ROOM,
                    "config",
                    json.dumps(room.config.to_dict()),
                    "meta",
                    json.dumps(room.meta_dict()),
                )
            for nick in sorted(changes.occupants):
                occupant = room.occupants.get(nick)
                if occupant is None:
                    op("HDEL", _OCCUPANTS, nick)
                else:
                    op("HSET", _OCCUPANTS, nick, json.dumps(occupant.to_dict()))
            for jid in sorted(changes.affiliations):
                entry = room.affiliations.get(jid)
                if entry is None:
                    op("HDEL", _AFFILIATIONS, jid)
                else:
                    op("HSET", _AFFILIATIONS, jid, json.dumps(entry.to_dict()))
            if changes.history:
                op("RPUSH", _HISTORY, *[json.dumps(h.to_dict()) for h in changes.history])
                op("LTRIM", _HISTORY, -max(history_limit, 1), -1)
            new_version = secrets.token_hex(8)
        expected = "" if changes.created else str(room.version)
        keys = [room_key(room.jid), occupants_key(room.jid)]
        keys += [affiliations_key(room.jid), history_key(room.jid)]
        done = await self._write(keys=keys, args=[expected, new_version, *ops])
        if not done:
            raise StaleRoom(room.jid)
        room.version = new_version
        # COMPAT: the indexes live in other cluster slots than the room, so they are written
        # after it; a crash in between leaves an index entry that readers skip and clean.
        if changes.destroyed:
            await self.forget(room.jid, room.creator)
        elif changes.created:
            pipe = self.redis.pipeline(transaction=False)
            pipe.sadd(rooms_key(self.service), room.jid)
            if room.creator:
                pipe.sadd(created_key(room.creator), room.jid)
            await pipe.execute()
        room.changes = Changes()

    async def forget(self, jid: str, creator: str = "") -> None:
        """Remove a room from the indexes (and its keys, for an unreadable room)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.srem(rooms_key(self.service), jid)
        if creator:
            pipe.srem(created_key(creator), jid)
        await pipe.execute()

    async def delete(self, jid: str) -> None:
        """Remove every key of a room, whatever state it is in."""
        await self.redis.delete(
            room_key(jid), occupants_key(jid), affiliations_key(jid), history_key(jid)
        )
        await self.forget(jid)

    async def quarantine(self, jid: str, stamp: int) -> list[bytes]:
        """Move an unreadable room's keys aside (``<key>:corrupt:<stamp>``, same hash tag)
        so that the room can be created afresh while the old data stays for inspection (it
        may have been written by a newer version). Returns the new key names."""
        moved = []
        for key in (room_key(jid), occupants_key(jid), affiliations_key(jid), history_key(jid)):
            target = key + f":corrupt:{stamp}".encode()
            try:
                await self.redis.rename(key, target)
            except aioredis.ResponseError:
                continue  # no such key
            moved.append(target)
        await self.forget(jid)
        return moved

    async def rooms(self) -> list[str]:
        return sorted(m.decode() for m in await self.redis.smembers(rooms_key(self.service)))

    async def created_by(self, bare: str) -> int:
        """How many stored rooms ``bare`` created."""
        return int(await self.redis.scard(created_key(bare)))

    async def summaries(self, jids: list[str]) -> list[tuple[str, RoomConfig, bool]]:
        """(room, configuration, locked) of each stored room among ``jids``, for listings."""
        pipe = self.redis.pipeline(transaction=False)
        for jid in jids:
            pipe.hmget(room_key(jid), "config", "meta")
        out = []
        orphans = []
        for jid, (config, meta) in zip(jids, await pipe.execute(), strict=True):
            if config is None or meta is None:
                orphans.append(jid)
                continue
            try:
                out.append(
                    (
                        jid,
                        RoomConfig.from_dict(json.loads(config)),
                        bool(json.loads(meta).get("locked")),
                    )
                )
            except (ValueError, TypeError, AttributeError):
                log.warning("skipping unreadable room %s in listings", jid)
        if orphans:
            # Index entries of rooms that are gone (see ``save``).
            await self.redis.srem(rooms_key(self.service), *orphans)
        return out

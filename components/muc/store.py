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

The same script announces the room's new version on the service's channel
(``muc:changes:{<service>}``, message ``<writer> <version> <room>``; version "" for a room
that is gone), so that every other instance drops a copy it keeps in memory the moment the
room changes elsewhere (``watch``; DESIGN "Redis: the shared state": caches are invalidated
by pub/sub). A write that only appends discussion history is not announced: it still bumps
the version, so another instance's next write to the room fails the check and reloads, and
nothing another instance does without writing depends on the history (a join, which sends
it, always writes).

A room keeps at most ``muc#maxhistoryfetch`` messages (XEP-0045 §10.2), never more
than the service allows: every write trims the history list to that length, and deletes it
when the length is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
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


def changes_channel(service: str) -> bytes:
    """The pub/sub channel on which writers announce rooms' new versions."""
    return _tagged("muc:changes", service)


class StaleRoom(Exception):
    """The room changed in Redis since it was loaded (another instance wrote it)."""


# KEYS: room, occupants, affiliations, history. ARGV[1]: expected version ("" for a room not
# stored yet), ARGV[2]: new version ("" to leave none: the room is being deleted), ARGV[3]:
# the changes channel, ARGV[4]: the announcement ("" for none), then the operations, each
# as: argument count, command, key index, arguments...
_WRITE = """
local v = redis.call('HGET', KEYS[1], 'v') or ''
if v ~= ARGV[1] then return 0 end
local i = 5
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local args = {}
  for j = 1, n do args[j] = ARGV[i + 2 + j] end
  redis.call(ARGV[i + 1], KEYS[tonumber(ARGV[i + 2])], unpack(args))
  i = i + 3 + n
end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'v', ARGV[2]) end
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1
"""
_ROOM, _OCCUPANTS, _AFFILIATIONS, _HISTORY = 1, 2, 3, 4
# Seconds a pub/sub connection may take to close (a read cancelled mid-command can hang).
PUBSUB_CLOSE_TIMEOUT = 1.0


def history_kept(room: Room, history_limit: int) -> int:
    """How many messages ``room`` keeps: its own history length, within the service's."""
    return max(min(room.config.history_length, history_limit), 0)


class RoomStore:
    """Loads and saves rooms of one MUC service."""

    def __init__(self, redis: aioredis.Redis, service: str) -> None:
        self.redis = redis
        self.service = service
        self._write = redis.register_script(_WRITE)
        self.channel = changes_channel(service)
        # Names this store's writes in announcements, so that it ignores its own.
        self.writer = secrets.token_hex(8)

    def _announcement(self, jid: str, version: str) -> str:
        return f"{self.writer} {version} {jid}"

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
        # Stored before the room's own length bounded the list: its next write trims it.
        room.trim_history(history_kept(room, history_limit))
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
            # §10.2 muc#maxhistoryfetch: at most that many, none when it is 0. Bounded on
            # every write (cheap when there is nothing to cut), which also trims a list
            # stored before a shorter length was set.
            kept = history_kept(room, history_limit)
            if kept == 0:
                op("DEL", _HISTORY)
            else:
                if changes.history:
                    items = changes.history[-kept:]
                    op("RPUSH", _HISTORY, *[json.dumps(h.to_dict()) for h in items])
                op("LTRIM", _HISTORY, -kept, -1)
            new_version = secrets.token_hex(8)
        expected = "" if changes.created else str(room.version)
        keys = [room_key(room.jid), occupants_key(room.jid)]
        keys += [affiliations_key(room.jid), history_key(room.jid)]
        history_only = not (
            changes.destroyed
            or changes.created
            or changes.meta
            or changes.occupants
            or changes.affiliations
        )
        announcement = "" if history_only else self._announcement(room.jid, new_version)
        done = await self._write(
            keys=keys, args=[expected, new_version, self.channel, announcement, *ops]
        )
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
        await self.redis.publish(self.channel, self._announcement(jid, ""))
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
        await self.redis.publish(self.channel, self._announcement(jid, ""))
        await self.forget(jid)
        return moved

    async def watch(
        self,
        changed: Callable[[str, str], None],
        subscribed: Callable[[bool], None],
    ) -> None:
        """Follow the announcements of other writers until cancelled: ``changed(room,
        version)`` for each room written elsewhere, ``subscribed(True)`` each time the
        subscription is (re)established (announcements may have been missed before it),
        ``subscribed(False)`` when it is lost. Retries with backoff, forever."""
        delay = 0.1
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    kind = message.get("type")
                    if kind == "subscribe":
                        # Also after redis-py reconnected on its own: what was announced
                        # meanwhile is lost.
                        subscribed(True)
                        delay = 0.1
                        continue
                    if kind != "message":
                        continue
                    writer, version, jid = _parse_announcement(message["data"])
                    if jid and writer != self.writer:
                        changed(jid, version)
            except asyncio.CancelledError:
                subscribed(False)
                raise
            except Exception:
                subscribed(False)
                log.warning("room announcements: listener failed, retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    # Bounded: closing a pub/sub connection cancelled mid-command can wait
                    # forever on the connection, and shutdown must not.
                    await asyncio.wait_for(pubsub.aclose(), PUBSUB_CLOSE_TIMEOUT)

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


def _parse_announcement(data: Any) -> tuple[str, str, str]:
    """(writer, version, room) of an announcement; empty strings for one that is not."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    parts = text.split(" ", 2)
    if len(parts) != 3:
        return "", "", ""
    return parts[0], parts[1], parts[2]

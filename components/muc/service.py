"""The MUC service of one instance: finds each stanza's room (in memory, else in Redis), runs
the room logic, stores what changed, then sends what the logic produced.

Several instances may serve one MUC domain (``instances = "shard"``): the core hands every
room to exactly one of them (rendezvous hashing of the room JID) and moves rooms when an
instance comes or goes. A room taken over from a dead instance is simply loaded; its
occupants keep their nicks and presence and notice nothing.

An instance therefore never trusts its memory blindly, but it does not ask Redis on every
stanza either: a groupchat message changes nothing but the history, and the instance that
owns a room is its only writer while it owns it.

* Every write is conditional on the room's version token (``RoomStore.save``), so a copy
  that is out of date never overwrites anything: the write fails, the room is reloaded and
  the stanza handled again.
* A copy can only be out of date after another instance wrote the room (it moved away and
  came back, or two instances served it while the core moved it). Such writes are announced
  on Redis pub/sub and drop this instance's copy (``RoomStore.watch``). Redis hands the
  announcement to this instance's socket when it runs the write, before the writer even has
  its reply, so before the core can have moved the room back and routed a stanza here; the
  event loop reads the sockets in the order they became readable. (A write that only adds
  history is not announced: nothing served without a write depends on the history, and a
  write from an old copy fails the version check.)
* While the announcements flow (the subscription is up), a copy confirmed against Redis
  (loaded, written, or its version checked) is used without asking again for
  ``REVALIDATE`` seconds, which bounds how long a copy could be used should an announcement
  be read late (a backlog on the connection). Otherwise (no subscription yet, or lost, or a
  copy read while an announcement arrived) each stanza first compares the version with
  Redis, as every stanza did before.

A groupchat message to a room that keeps no history thus costs no Redis round trip, and one
that is kept costs one (the conditional write). The history is written before the message
is reflected: XEP-0045 does not require it, but then an occupant who saw a message finds it
in the history after a failover, and a write refused as stale is handled again before
anything was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from lxml import etree

from components.muc import admin, disco, join, messages, occupants, owner, register
from components.muc.env import Env, Fanout, Out
from components.muc.errors import Refused
from components.muc.model import CorruptRoom, Occupant, Room
from components.muc.names import QN_X_MUC, STATUS_ERROR_REMOVED, STATUS_SELF
from components.muc.stanzas import add_item, add_statuses, join_error, muc_user
from components.muc.store import RoomStore, StaleRoom, occupants_key
from core.xmpp.errors import StanzaError
from core.xmpp.jid import JID, JIDError, parse_jid
from core.xmpp.ns import NS_CLIENT, NS_VCARD, QN_IQ, QN_PING, QN_PRESENCE, qn
from core.xmpp.stanza import error_reply, make, new_id, payload_of

log = logging.getLogger(__name__)
Element = etree._Element
Step = Callable[[Room | None], Awaitable[Out]]

# Attempts at a stanza whose room another instance changed meanwhile.
MAX_ATTEMPTS = 3
# Rooms kept in memory; others are loaded from Redis when needed.
CACHE_SIZE = 10000
# Seconds a room confirmed against Redis is used without asking again, while changes made
# elsewhere are announced to this instance (see the module docstring).
REVALIDATE = 1.0
QN_VCARD = qn(NS_VCARD, "vCard")
# Seconds an IQ relayed to an occupant may take before its sender gets recipient-unavailable
# (the room goes on meanwhile: the answer is awaited outside the room's turn).
FORWARD_TIMEOUT = 30.0
_SUBSCRIPTION_TYPES = ("subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe")
# RFC 6120 §8.3.3: errors that mean the recipient cannot be reached (§18.1 of XEP-0045: the
# service removes such an occupant).
_GONE_CONDITIONS = frozenset(
    {
        "gone",
        "item-not-found",
        "jid-malformed",
        "recipient-unavailable",
        "redirect",
        "remote-server-not-found",
        "remote-server-timeout",
        "service-unavailable",
    }
)


class MucService:
    """Rooms of one MUC domain, as served by this instance.

    ``send`` must be done with a stanza when it returns (the component client serialises
    it at once): a stanza sent to many occupants is one element whose 'to' changes between
    calls (``Fanout``)."""

    def __init__(
        self,
        store: RoomStore,
        env: Env,
        send: Callable[[Element], Any],
        *,
        iq: Callable[..., Awaitable[Element]] | None = None,
        name: str = "Chatrooms",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.env = env
        self.send = send
        self.iq = iq
        self.name = name
        self.monotonic = monotonic
        self.rooms: OrderedDict[str, Room] = OrderedDict()
        # Changes made elsewhere are announced to us (RoomStore.watch is subscribed).
        self.announced = False
        self._announcing = asyncio.Event()
        # Counts the announcements of changes made elsewhere: a copy read from Redis while
        # one arrived may predate it, so it is not taken as confirmed.
        self._epoch = 0
        self._watcher: asyncio.Future[None] | None = None

    @property
    def domain(self) -> str:
        return self.env.domain

    # Rooms in memory and in Redis -------------------------------------------------------

    def forget_all(self) -> None:
        """Drop every room from memory (the link went down: rooms may move meanwhile)."""
        self.rooms.clear()

    # Announcements of changes made elsewhere --------------------------------------------

    def start_watching(self) -> None:
        """Follow other instances' writes (RoomStore.watch) until ``stop_watching``."""
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(
                self.store.watch(self.changed_elsewhere, self.subscribed)
            )

    async def stop_watching(self) -> None:
        task, self._watcher = self._watcher, None
        if task is not None:
            task.cancel()
            # Bounded: redis-py's pub/sub read can absorb a cancellation.
            with contextlib.suppress(Exception):
                await asyncio.wait([task], timeout=2.0)
        self.announced = False
        self._announcing.clear()

    async def wait_watching(self, timeout: float) -> None:
        """Until changes made elsewhere are announced to this instance."""
        await asyncio.wait_for(self._announcing.wait(), timeout)

    def subscribed(self, up: bool) -> None:
        """The announcements start (again) or stop reaching us. Either way, what was
        announced meanwhile may be lost: every copy is checked against Redis before its
        next use."""
        self.announced = up
        if up:
            self._announcing.set()
        else:
            self._announcing.clear()
        self._epoch += 1
        for room in self.rooms.values():
            room.fresh_until = 0.0

    def changed_elsewhere(self, jid: str, version: str) -> None:
        """Another instance wrote room ``jid`` (``version`` "": removed it)."""
        self._epoch += 1
        cached = self.rooms.get(jid)
        if cached is not None and cached.version != version:
            self.rooms.pop(jid, None)

    def _confirmed(self, room: Room, epoch: int) -> None:
        """``room`` was the stored state when Redis last answered (read since ``epoch``)."""
        if self.announced and epoch == self._epoch:
            room.fresh_until = self.monotonic() + REVALIDATE
        else:
            room.fresh_until = 0.0

    # Rooms in memory and in Redis -------------------------------------------------------

    async def room(self, jid: str) -> Room | None:
        """The current state of room ``jid``, None when it does not exist."""
        cached = self.rooms.get(jid)
        if (
            cached is not None
            and self.announced
            and cached.fresh_until > self.monotonic()
            and not cached.changes
        ):
            # Confirmed recently, and no change announced since (see the module docstring).
            self.rooms.move_to_end(jid)
            return cached
        epoch = self._epoch
        if cached is not None:
            version = await self.store.version(jid)
            if version is None:
                self.rooms.pop(jid, None)
                return None
            if cached.version == version:
                # The cache may have been emptied while Redis answered (forget_all on a link
                # change): the copy is still the stored version, so it is still good to use.
                if jid in self.rooms:
                    self.rooms.move_to_end(jid)
                    self._confirmed(cached, epoch)
                return cached
        try:
            room = await self.store.load(jid, self.env.settings.max_history)
        except CorruptRoom as exc:
            log.error("room %s cannot be read back and is set aside: %s", jid, exc)
            await self._drop_corrupt(jid)
            return None
        if room is None:
            self.rooms.pop(jid, None)
            return None
        if cached is not None:
            log.info("room %s changed elsewhere; reloaded", jid)
        self._cache(room)
        self._confirmed(room, epoch)
        return room

    def _cache(self, room: Room) -> None:
        self.rooms[room.jid] = room
        self.rooms.move_to_end(room.jid)
        while len(self.rooms) > CACHE_SIZE:
            self.rooms.popitem(last=False)

    async def _drop_corrupt(self, jid: str) -> None:
        """XEP-0045 status 333: a room whose state cannot be recovered is set aside (its keys
        renamed, not deleted), and every occupant that can still be named learns that it is
        no longer in the room."""
        try:
            raw = await self.store.redis.hgetall(occupants_key(jid))
        except Exception:
            log.exception("cannot read the occupants of %s", jid)
            raw = {}
        for nick, value in raw.items():
            try:
                occupant = Occupant.from_dict(json.loads(value))
            except (CorruptRoom, ValueError):
                continue
            for full in occupant.sessions:
                p = make(
                    "presence",
                    to=full,
                    frm=f"{jid}/{nick.decode(errors='replace')}",
                    type="unavailable",
                    id=new_id(),
                )
                x = muc_user(p)
                add_item(x, affiliation="none", role="none", reason="The room was lost")
                add_statuses(x, [STATUS_SELF, STATUS_ERROR_REMOVED])
                self.send(p)
        moved = await self.store.quarantine(jid, int(self.env.now()))
        log.error("room %s: unreadable state kept under %s", jid, [k.decode() for k in moved])
        self.rooms.pop(jid, None)

    async def run(self, jid: str, step: Step) -> Out:
        """Run ``step`` on the room's current state, store its changes, return its output.

        The step gets the room (None when it does not exist yet) and returns the stanzas to
        send; it may create the room (``self.rooms``). Raises what the step raises."""
        for _ in range(MAX_ATTEMPTS):
            room = await self.room(jid)
            try:
                out = await step(room)
            except Exception:
                if room is None or room.changes:
                    # Partly changed: reload next time. A room the step created before it
                    # failed (a refused first join) was never stored: it must not stay cached.
                    self.rooms.pop(jid, None)
                raise
            room = self.rooms.get(jid, room)
            if room is None or not room.changes:
                return out
            destroyed = room.changes.destroyed
            epoch = self._epoch
            try:
                await self.store.save(room, self.env.settings.max_history)
            except StaleRoom:
                log.info("room %s was written elsewhere meanwhile; handling again", jid)
                self.rooms.pop(jid, None)
                continue
            except Exception:
                self.rooms.pop(jid, None)
                raise
            if destroyed:
                self.rooms.pop(jid, None)
            else:
                self._confirmed(room, epoch)
            return out
        raise StanzaError("resource-constraint", "the room is busy; try again")

    def emit(self, out: Out) -> None:
        send = self.send
        for item in out:
            if type(item) is Fanout:
                # One element for every recipient: send serialises it before returning.
                stanza = item.stanza
                for to in item.recipients:
                    stanza.set("to", to)
                    send(stanza)
            else:
                send(item)

    # Presence ----------------------------------------------------------------------------

    async def handle_presence(self, stanza: Element) -> None:
        try:
            sender = parse_jid(stanza.get("from") or "")
            to = parse_jid(stanza.get("to") or "")
        except JIDError:
            self._bounce(stanza, StanzaError("jid-malformed"))
            return
        ptype = stanza.get("type")
        if to.local is None or ptype in _SUBSCRIPTION_TYPES:
            return
        room_jid = str(to.bare)
        if ptype == "error":
            await self._error_from(room_jid, sender, stanza)
            return
        if to.resource is None:
            if ptype is None:
                # §7.2.1: a join needs a nick.
                self._bounce(stanza, Refused("bad-nick").to_stanza_error(), presence=True)
            return
        try:
            out = await self.run(room_jid, self._presence_step(stanza, sender, to))
        except Refused as exc:
            self._bounce(stanza, exc.to_stanza_error(), presence=True)
            return
        self.emit(out)

    def _presence_step(self, stanza: Element, sender: JID, to: JID) -> Step:
        full, bare = str(sender), str(sender.bare)
        nick = to.resource or ""
        ptype = stanza.get("type")
        env = self.env

        async def step(room: Room | None) -> Out:
            occupant = room.occupant_of(full) if room is not None else None
            if ptype == "unavailable":
                if room is None or occupant is None:
                    return []
                return occupants.leave(room, occupant, full, stanza)
            if occupant is None:
                if stanza.find(QN_X_MUC) is None:
                    # Not a join (XEP-0045 1.32 dropped groupchat 1.0 joins).
                    return [occupants.not_in_room(str(to.bare), stanza, nick)]
                created = False
                if room is None:
                    room = await self._create(str(to.bare), sender)
                    created = True
                # The nick as sent, before JID normalisation (the core passes 'to' as is).
                asked = (stanza.get("to") or "").partition("/")[2]
                return join.enter(
                    room,
                    stanza,
                    full,
                    bare,
                    nick,
                    env,
                    created=created,
                    nick_modified=asked != nick,
                )
            assert room is not None
            if occupant.nick != nick:
                return occupants.change_nick(room, occupant, full, nick, stanza)
            if stanza.find(QN_X_MUC) is not None:
                return join.rejoin(room, occupant, full, stanza, env)
            return occupants.update_presence(room, occupant, full, stanza)

        return step

    async def _create(self, jid: str, creator: JID) -> Room:
        """§10.1.1: a join to a room that does not exist creates it, if the user may."""
        settings = self.env.settings
        if settings.creators == "nobody" or (
            settings.creators == "local" and creator.domain != settings.server_domain
        ):
            raise Refused("creation-denied")
        bare = str(creator.bare)
        if settings.max_rooms_per_user and (
            await self.store.created_by(bare) >= settings.max_rooms_per_user
        ):
            raise Refused("rooms-limit")
        room = join.new_room(jid, bare, self.env)
        self._cache(room)
        return room

    async def _error_from(self, room_jid: str, sender: JID, stanza: Element) -> None:
        """An error bounced by an occupant's server: that session is gone (§18.1)."""
        if stanza.tag != QN_PRESENCE:
            # A message error removes the occupant only when it says the session is gone.
            err = stanza.find(qn(NS_CLIENT, "error"))
            condition = StanzaError.from_element(err).condition if err is not None else "undefined"
            if condition not in _GONE_CONDITIONS:
                return
        full = str(sender)

        async def step(room: Room | None) -> Out:
            occupant = room.occupant_of(full) if room is not None else None
            if room is None or occupant is None:
                return []
            log.info("removing %s from %s after an error bounce", occupant.nick, room_jid)
            return occupants.remove_session_after_error(room, occupant, full)

        self.emit(await self.run(room_jid, step))

    # Messages ----------------------------------------------------------------------------

    async def handle_message(self, stanza: Element) -> None:
        try:
            sender = parse_jid(stanza.get("from") or "")
            to = parse_jid(stanza.get("to") or "")
        except JIDError:
            self._bounce(stanza, StanzaError("jid-malformed"))
            return
        mtype = stanza.get("type", "normal")
        if to.local is None:
            self._bounce(stanza, StanzaError("service-unavailable"))
            return
        room_jid = str(to.bare)
        if mtype == "error":
            await self._error_from(room_jid, sender, stanza)
            return
        full = str(sender)
        env = self.env

        async def step(room: Room | None) -> Out:
            if room is None or (room.locked and room.occupant_of(full) is None):
                raise Refused("no-such-room")
            if to.resource is not None:
                return messages.private_message(room, stanza, full, to.resource, env)
            if mtype == "groupchat":
                return messages.groupchat(room, stanza, full, env)
            return messages.mediated(room, stanza, full, env)

        try:
            out = await self.run(room_jid, step)
        except Refused as exc:
            self._bounce(stanza, exc.to_stanza_error())
            return
        self.emit(out)

    def _bounce(self, stanza: Element, error: StanzaError, *, presence: bool = False) -> None:
        if presence and stanza.get("type") not in ("error", "unavailable"):
            self.send(join_error(stanza, error))
            return
        reply = error_reply(stanza, error)
        if reply is not None:
            self.send(reply)

    # IQs ---------------------------------------------------------------------------------

    async def room_iq(self, to: JID, action: Callable[[Room], Out | Element | None]) -> Any:
        """Run an IQ action on an existing room; what it sends is sent, what it returns is
        the IQ's result payload."""
        result: list[Any] = []

        async def step(room: Room | None) -> Out:
            if room is None:
                raise Refused("no-such-room")
            value = action(room)
            if isinstance(value, list):
                return value
            result.append(value)
            return []

        try:
            out = await self.run(str(to.bare), step)
        except Refused as exc:
            raise exc.to_stanza_error() from None
        self.emit(out)
        return result[0] if result else None

    async def admin_get(self, sender: JID, to: JID, query: Element) -> Element:
        return await self.room_iq(
            to, lambda room: admin.admin_get(room, str(sender), str(sender.bare), query)
        )

    async def admin_set(self, sender: JID, to: JID, query: Element) -> None:
        await self.room_iq(
            to, lambda room: admin.admin_set(room, str(sender), str(sender.bare), query, self.env)
        )

    async def owner_get(self, sender: JID, to: JID) -> Element:
        return await self.room_iq(to, lambda room: owner.owner_get(room, str(sender.bare)))

    async def owner_set(self, sender: JID, to: JID, query: Element) -> None:
        await self.room_iq(
            to, lambda room: owner.owner_set(room, str(sender.bare), query, self.env)
        )

    async def register_get(self, sender: JID, to: JID) -> Element:
        return await self.room_iq(to, lambda room: register.register_get(room, str(sender.bare)))

    async def register_set(self, sender: JID, to: JID, query: Element) -> None:
        await self.room_iq(to, lambda room: register.register_set(room, str(sender.bare), query))

    async def room_info(self, sender: JID, to: JID, node: str | None) -> Element:
        return await self.room_iq(to, lambda room: disco.room_info(room, str(sender.bare), node))

    async def room_items(self, sender: JID, to: JID, node: str | None) -> Element:
        return await self.room_iq(to, lambda room: disco.room_items(room, str(sender), node))

    async def public_rooms(self) -> list[tuple[str, str]]:
        """§6.3: public, unlocked rooms, at most ``max_listed_rooms`` of them."""
        jids = await self.store.rooms()
        listed = []
        for jid, config, locked in await self.store.summaries(jids):
            if config.public and not locked:
                listed.append((jid, config.name or jid.partition("@")[0]))
            if len(listed) >= self.env.settings.max_listed_rooms:
                break
        return listed

    async def ping_room(self, sender: JID, to: JID) -> None:
        """XEP-0199 to a room: it answers when it exists."""
        await self.room_iq(to, lambda room: None)

    async def occupant_iq(
        self, iq: Element, sender: JID, to: JID
    ) -> Awaitable[Element | None] | None:
        """An IQ to an occupant JID. XEP-0410 §3.2: a self-ping is answered by the room
        (a result while joined as that nick, else not-acceptable): None. Other IQs go to the
        occupant's real JID from the sender's occupant JID (XEP-0045 §7.5 applied to IQs, as
        Prosody and ejabberd do): this returns the relay, an awaitable of the answer's
        payload, which the caller awaits outside the room's turn (the room is not held up
        while the occupant's client takes its time)."""
        full = str(sender)
        nick = to.resource or ""
        payload = payload_of(iq)
        target: list[tuple[str, str]] = []

        def find(room: Room) -> None:
            me = room.occupant_of(full)
            if me is None:
                raise Refused("not-occupant")
            if me.nick == nick and payload is not None and payload.tag == QN_PING:
                return None
            other = room.occupants.get(nick)
            if other is None:
                raise Refused("no-such-occupant")
            target.append((me.nick, other.primary))
            return None

        await self.room_iq(to, find)
        if not target:
            return None  # a self-ping
        if self.iq is None:
            raise StanzaError("service-unavailable")
        my_nick, real = target[0]
        if payload is not None and payload.tag == QN_VCARD:
            # XEP-0054 §3.2: a vCard belongs to the account, and the occupant's server
            # answers for its bare JID whatever client is connected.
            real = str(parse_jid(real).bare)
        forwarded = copy.deepcopy(iq)
        forwarded.set("from", f"{to.bare}/{my_nick}")
        forwarded.set("to", real)
        forwarded.set("id", new_id())
        return self._relay(forwarded)

    async def _relay(self, forwarded: Element) -> Element | None:
        """Send an IQ on an occupant's behalf; the payload of its answer (StanzaError for an
        error answer, as the occupant's side gave it)."""
        assert self.iq is not None
        try:
            reply = await self.iq(forwarded, timeout=FORWARD_TIMEOUT)
        except TimeoutError:
            raise StanzaError("recipient-unavailable") from None
        except ConnectionError:
            raise StanzaError("remote-server-timeout") from None
        if reply.tag != QN_IQ:
            return None
        return payload_of(reply)

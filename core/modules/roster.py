"""Roster management (RFC 6121 §2): get, set, remove, roster pushes and roster versioning.

``Rosters`` is the node's roster service (``server.rosters``): the rosters of accounts with a
session on this node stay in memory, every change is written to Redis (``RosterStore``) before
anyone is told, then pushed to the account's interested resources (§2.1.6). Changes of one
account are serialised by a lock per account, whether they come from a roster set or from a
subscription stanza (core/modules/subscription.py). Each change is announced on a Redis
channel (``keys.roster_changes``); the other nodes reload their copy of that roster and push
what changed to their own sessions of the account.

Roster versioning (§2.6) compares the client's version with the current one: equal means an
empty result; anything else means the whole roster with the current version. Pushes carry the
version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.exceptions
from lxml import etree

from core.modules.subscription import route, state_of
from core.storage import keys
from core.storage.batch import Batch
from core.storage.locks import AccountLocks
from core.storage.roster import Roster, RosterItem, RosterStore, next_version
from core.xmpp.errors import StanzaError
from core.xmpp.jid import JIDError, parse_jid
from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_PREAPPROVAL, NS_ROSTER, NS_ROSTER_VER, QN_ROSTER_QUERY, qn
from core.xmpp.stanza import make, new_id

if TYPE_CHECKING:
    from core.server import CoreServer

log = logging.getLogger(__name__)
PUBSUB_CLOSE_TIMEOUT = 1.0  # seconds
Element = etree._Element

QN_ITEM = qn(NS_ROSTER, "item")
QN_GROUP = qn(NS_ROSTER, "group")

module = Module("roster", spec="RFC 6121 §2")


@dataclass(frozen=True, slots=True)
class RosterLimits:
    """Limits of one roster (§2.3.3 lets the server configure them)."""

    max_items: int = 1000
    max_name_length: int = 1023
    max_group_length: int = 1023
    max_groups: int = 64

    @classmethod
    def from_config(cls, config: Any) -> RosterLimits:
        """The ``[roster]`` section of the configuration when it has one, else the defaults."""
        section = getattr(config, "roster", None)
        if section is None:
            return cls()
        default = cls()
        return cls(
            **{
                name: int(getattr(section, name, getattr(default, name)))
                for name in cls.__dataclass_fields__
            }
        )


def item_element(item: RosterItem) -> Element:
    """The <item/> of a roster result or push (§2.1.2)."""
    el = etree.Element(QN_ITEM, nsmap={None: NS_ROSTER})
    el.set("jid", item.jid)
    if item.name is not None:
        el.set("name", item.name)
    el.set("subscription", item.subscription)
    if item.ask:
        el.set("ask", "subscribe")
    if item.approved:
        el.set("approved", "true")
    for group in item.groups:
        etree.SubElement(el, QN_GROUP).text = group
    return el


def append_item(query: Element, item: RosterItem) -> None:
    """The <item/> of ``item`` (§2.1.2) as a child of a roster ``query``, built in place and
    in one call: a roster result holds every item, and building each apart costs twice."""
    attrib = {"jid": item.jid}
    if item.name is not None:
        attrib["name"] = item.name
    attrib["subscription"] = item.subscription
    if item.ask:
        attrib["ask"] = "subscribe"
    if item.approved:
        attrib["approved"] = "true"
    el = etree.SubElement(query, QN_ITEM, attrib)
    for group in item.groups:
        etree.SubElement(el, QN_GROUP).text = group


def removed_element(jid: str) -> Element:
    """The <item/> of a roster push that removes ``jid`` (§2.5.2)."""
    el = etree.Element(QN_ITEM, nsmap={None: NS_ROSTER})
    el.set("jid", jid)
    el.set("subscription", "remove")
    return el


class Rosters:
    """The node's rosters: in memory for accounts with a session here, written through to
    Redis, pushed to interested resources."""

    def __init__(self, server: CoreServer) -> None:
        self.server = server
        self.store = RosterStore(server.redis)
        self.limits = RosterLimits.from_config(server.config)
        self._cache: dict[str, Roster] = {}
        self._locks = AccountLocks()
        self._listener: asyncio.Future[None] | None = None
        self.subscribed = asyncio.Event()  # set while the change announcements are heard
        # Counts the changes of rosters not in memory (this node's, and other nodes'
        # announcements), so that a load that overlapped one of them is not kept.
        self._epoch = 0

    def lock(self, bare: str) -> AbstractAsyncContextManager[None]:
        """Serialise the changes of one account's roster."""
        return self._locks.hold(bare)

    def cached(self, bare: str) -> Roster | None:
        """The in-memory roster of an account with a session on this node, if loaded."""
        return self._cache.get(bare)

    async def get(self, bare: str) -> Roster:
        """The account's roster: from memory when the account is online here, else Redis."""
        roster = self._cache.get(bare)
        if roster is None:
            roster = await self.store.load(bare)
        return roster

    async def pin(self, bare: str) -> Roster:
        """Keep the account's roster in memory (it has a session on this node)."""
        async with self.lock(bare):
            roster = self._cache.get(bare)
            while roster is None:
                epoch = self._epoch
                fresh = await self.store.load(bare)
                if epoch == self._epoch:
                    roster = self._cache[bare] = fresh
            return roster

    def prefetch(self, bare: str, batch: Batch) -> None:
        """Load the roster of ``bare`` with ``batch`` unless it is in memory; ``pin`` then
        finds it there. A load that overlapped a change is dropped and ``pin`` loads again."""
        if bare in self._cache:
            return
        epoch = self._epoch

        def done(replies: list[Any]) -> None:
            if epoch == self._epoch and bare not in self._cache:
                self._cache[bare] = self.store.loaded(replies)

        batch.add(lambda pipe: self.store.queue_load(pipe, bare), done, key=("roster", bare))

    def unpin(self, bare: str) -> None:
        """Forget the in-memory roster once the account has no session left on this node."""
        if not self.server.router.resources(bare):
            self._cache.pop(bare, None)

    async def save(
        self,
        bare: str,
        roster: Roster,
        *,
        items: dict[str, RosterItem | None] | None = None,
        pending: dict[str, bytes | None] | None = None,
    ) -> None:
        """Write changes (durable first), apply them to ``roster`` (the loaded one, in memory
        when the account is online), then push changed items. Call with the lock held."""
        version = next_version(roster.version) if items else None
        if bare not in self._cache:
            self._epoch += 1
        await self.store.write(bare, version=version, items=items, pending=pending)
        for jid, item in (items or {}).items():
            if item is None:
                roster.items.pop(jid, None)
            else:
                roster.items[jid] = item
        for jid, stanza in (pending or {}).items():
            if stanza is None:
                roster.pending.pop(jid, None)
            else:
                roster.pending[jid] = stanza
        if version is not None:
            roster.version = version
            for jid, item in (items or {}).items():
                self.push(bare, item_element(item) if item else removed_element(jid), version)
        await self._announce(bare)

    def push(self, bare: str, item: Element, version: str) -> None:
        """A roster push of ``item`` to each interested resource of ``bare`` (§2.1.6)."""
        for session in list(self.server.router.resources(bare).values()):
            if not getattr(session, "interested", False):
                continue
            iq = make("iq", type="set", id=new_id(), to=session.full)
            query = etree.SubElement(iq, QN_ROSTER_QUERY, nsmap={None: NS_ROSTER})
            query.set("ver", version)
            query.append(etree.fromstring(etree.tostring(item)))
            session.send(iq)

    # Other nodes' changes ---------------------------------------------------------------

    async def _announce(self, bare: str) -> None:
        message = f"{self.server.node_id} {bare}".encode()
        try:
            await self.server.redis.publish(keys.roster_changes(), message)
        except (redis.exceptions.RedisError, OSError):
            # The change is stored; other nodes only miss the news until their next reload.
            log.warning("could not announce the roster change of %s", bare, exc_info=True)

    async def reload(self, bare: str) -> None:
        """Another node changed the roster of ``bare``: load it again and push each changed
        item to this node's interested resources."""
        async with self.lock(bare):
            roster = self._cache.get(bare)
            if roster is None:
                return
            fresh = await self.store.load(bare)
            changed = [
                jid
                for jid in {*roster.items, *fresh.items}
                if roster.items.get(jid) != fresh.items.get(jid)
            ]
            # In place: whoever holds the cached roster sees the new state.
            roster.items, roster.version, roster.pending = fresh.items, fresh.version, fresh.pending
            for jid in changed:
                item = fresh.items.get(jid)
                self.push(bare, item_element(item) if item else removed_element(jid), fresh.version)

    def start(self) -> None:
        """Listen to other nodes' announcements until ``stop``."""
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen())

    async def stop(self) -> None:
        task, self._listener = self._listener, None
        if task is not None:
            task.cancel()
            # Bounded: redis-py's pub/sub read can absorb a cancellation, and stopping the
            # server must not wait on it.
            await asyncio.wait([task], timeout=PUBSUB_CLOSE_TIMEOUT)

    async def _listen(self) -> None:
        delay = 0.1
        first = True
        while True:
            pubsub = self.server.redis.pubsub()
            try:
                await pubsub.subscribe(keys.roster_changes())
                self.subscribed.set()
                if not first:
                    # Announcements sent while the connection was down are lost: reload all.
                    for bare in list(self._cache):
                        await self.reload(bare)
                first, delay = False, 0.1
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    node, _, bare = message["data"].decode("utf-8", "replace").partition(" ")
                    if node == self.server.node_id:
                        continue
                    if bare in self._cache:
                        await self.reload(bare)
                    else:
                        self._epoch += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                self.subscribed.clear()
                log.warning("roster announcements: listener failed, retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    # Bounded: closing a pub/sub connection cancelled mid-command can wait
                    # forever on the connection, and shutdown must not.
                    await asyncio.wait_for(pubsub.aclose(), PUBSUB_CLOSE_TIMEOUT)


def rosters_of(host: Any) -> Rosters:
    rosters = getattr(host, "rosters", None)
    if rosters is None:
        raise StanzaError("internal-server-error")
    return rosters


@module.on("server-started")
async def started(server: CoreServer) -> None:
    server.rosters = Rosters(server)
    server.rosters.start()


@module.on("server-stopping")
async def stopping(server: CoreServer) -> None:
    if server.rosters is not None:
        await server.rosters.stop()


@module.on("session-loading")
async def session_loading(session: Any, batch: Batch) -> None:
    session.server.rosters.prefetch(session.bare, batch)


@module.on("session-bound")
async def session_bound(session: Any) -> None:
    await session.server.rosters.pin(session.bare)


@module.on("session-closed")
async def session_closed(session: Any) -> None:
    session.server.rosters.unpin(session.bare)


@module.stream_feature
def roster_versioning(session: Any) -> Element:
    """§2.6.1: roster versioning is offered after authentication."""
    return etree.Element(qn(NS_ROSTER_VER, "ver"), nsmap={None: NS_ROSTER_VER})


@module.stream_feature
def pre_approval(session: Any) -> Element:
    """§3.4: subscription pre-approval is offered after authentication."""
    return etree.Element(qn(NS_PREAPPROVAL, "sub"), nsmap={None: NS_PREAPPROVAL})


# Roster get (§2.1.3) and set (§2.1.5) --------------------------------------------------------


@module.iq("get", QN_ROSTER_QUERY, to="self")
async def roster_get(ctx: IqContext) -> Element | None:
    """The whole roster, or an empty result when the client's version is current (§2.6.3)."""
    if any(isinstance(c.tag, str) for c in ctx.payload):
        raise StanzaError("bad-request", "a roster get carries no items")
    rosters = rosters_of(ctx.host)
    bare = str(ctx.sender.bare)
    roster = await rosters.get(bare)
    if ctx.session is not None:
        # §2.1.6: a resource that asked for the roster is an interested resource.
        ctx.session.interested = True
    ver = ctx.payload.get("ver")
    if ver is not None and ver and ver == roster.version:
        return None
    query = etree.Element(QN_ROSTER_QUERY, nsmap={None: NS_ROSTER})
    if ver is not None:
        query.set("ver", roster.version)
    for item in roster.items.values():
        append_item(query, item)
    return query


@module.iq("get", QN_ROSTER_QUERY, to="account", any_account=True)
@module.iq("set", QN_ROSTER_QUERY, to="account", any_account=True)
async def other_roster(ctx: IqContext) -> None:
    """§2.3.3: only the account itself reads or changes its roster; the same ``forbidden``
    whether or not the account exists, so the answer does not reveal accounts."""
    raise StanzaError("forbidden", "a roster belongs to its account")


@dataclass(frozen=True, slots=True)
class ItemRequest:
    """The one <item/> of a roster set, checked (§2.3.3)."""

    jid: str
    name: str | None
    groups: tuple[str, ...]
    remove: bool

    @classmethod
    def from_query(cls, query: Element, limits: RosterLimits) -> ItemRequest:
        children = [c for c in query if isinstance(c.tag, str)]
        if len(children) != 1 or children[0].tag != QN_ITEM:
            raise StanzaError("bad-request", "a roster set carries exactly one item")
        el = children[0]
        raw = el.get("jid")
        if not raw:
            raise StanzaError("bad-request", "the item has no jid")
        try:
            jid = str(parse_jid(raw))
        except JIDError as e:
            raise StanzaError("jid-malformed", str(e)) from None
        # §2.1.2.5: in a roster set the server ignores every subscription value but 'remove';
        # 'ask' and 'approved' are the server's to set (§2.1.2.2, §3.4).
        if el.get("subscription") == "remove":
            return cls(jid, None, (), True)
        name = el.get("name") or None
        if name is not None and len(name) > limits.max_name_length:
            raise StanzaError(
                "not-acceptable", f"names are limited to {limits.max_name_length} characters"
            )
        groups: list[str] = []
        for g in el.iterchildren(QN_GROUP):
            text = g.text or ""
            if not text:
                raise StanzaError("not-acceptable", "a group name cannot be empty")
            if len(text) > limits.max_group_length:
                raise StanzaError(
                    "not-acceptable",
                    f"group names are limited to {limits.max_group_length} characters",
                )
            if text in groups:
                raise StanzaError("bad-request", f"group {text!r} is given twice")
            groups.append(text)
        if len(groups) > limits.max_groups:
            raise StanzaError(
                "policy-violation", f"an item is in at most {limits.max_groups} groups"
            )
        return cls(jid, name, tuple(groups), False)


@module.iq("set", QN_ROSTER_QUERY, to="self")
async def roster_set(ctx: IqContext) -> None:
    """Add, update (§2.3, §2.4) or remove (§2.5) one item; the result follows the write."""
    rosters = rosters_of(ctx.host)
    request = ItemRequest.from_query(ctx.payload, rosters.limits)
    user = ctx.sender.bare
    if parse_jid(request.jid).bare == user:
        raise StanzaError("not-allowed", "your own address is not a contact")
    bare = str(user)
    if request.remove:
        await remove_item(ctx.host, bare, request.jid)
        return None
    async with rosters.lock(bare):
        roster = await rosters.get(bare)
        old = roster.items.get(request.jid)
        if old is None and len(roster.items) >= rosters.limits.max_items:
            raise StanzaError(
                "resource-constraint", f"a roster holds at most {rosters.limits.max_items} items"
            )
        new = (old or RosterItem(request.jid)).evolve(name=request.name, groups=request.groups)
        # Saved (and pushed, §2.3.2, §2.4.2) even when unchanged, so every interested
        # resource hears of the set.
        await rosters.save(bare, roster, items={request.jid: new})
    return None


async def remove_item(server: CoreServer, bare: str, contact: str) -> None:
    """§2.5.2: remove the item, cancel both directions of the subscription, push 'remove'."""
    rosters = server.rosters
    async with rosters.lock(bare):
        roster = await rosters.get(bare)
        item = roster.items.get(contact)
        if item is None:
            raise StanzaError("item-not-found", "no such item in the roster")
        state = state_of(item, contact in roster.pending)
        pending = {contact: None} if contact in roster.pending else None
        await rosters.save(bare, roster, items={contact: None}, pending=pending)
    user, cjid = parse_jid(bare), parse_jid(contact)
    if state.pending_out or state.subscribed_to_contact:
        await route(server, make("presence", type="unsubscribe", frm=bare, to=contact), user, cjid)
    if state.pending_in or state.contact_subscribed:
        await route(server, make("presence", type="unsubscribed", frm=bare, to=contact), user, cjid)
    if state.contact_subscribed and server.presence is not None:
        await server.presence.send_unavailable(bare, cjid)

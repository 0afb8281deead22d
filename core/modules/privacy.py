"""XEP-0016: Privacy Lists, and the enforcement that XEP-0191 blocking shares with them.

``PrivacyService`` (``server.privacy``) is installed by this module and by the blocking module
at 'server-started'. It owns the node's copy of the lists (``PrivacyCache``), applies every
change (store first, then the copy, then pushes and presence), and is the router's one filter
hook, ``server.privacy_check``: the router calls it before any other rule for each stanza out
of or into a local account (§2.2 rule 4). An account with no lists costs one dict lookup.

Rules kept here, with their sources:

* the active list of a session, else the account's default list, else nothing (§2.2 rules 1-3);
  a stanza to a bare JID uses the active list its sessions share, else the default list;
* a user's own resources are never blocked (§2.1 note), nor is the server itself;
* inbound refusals (§2.14): presence dropped, message and IQ get/set ``service-unavailable``,
  IQ result/error dropped; outbound refusals: ``not-acceptable`` (type cancel, as in §2.14 and
  XEP-0191 §5.3), with ``<blocked xmlns='urn:xmpp:blocking:errors'/>`` when a blocklist entry
  matched, for presence too when the client addressed it (directed presence, subscriptions);
  presence the server sends on the user's behalf (broadcasts, probes) is dropped, as are
  errors (a refusal is never answered with an error);
* errors this server generates (bounces, origin None) always pass, or no refusal could be
  reported;
* when presence-out becomes blocked for a contact allowed to see the user's presence, the
  contact receives unavailable presence from each available resource; when it becomes allowed
  again, their current presence (§2.11 note, XEP-0191 §5.3, §5.4);
* when presence-in becomes blocked for a contact whose available presence the user's
  resources were given, they receive unavailable presence from it (§2.10 note); when it
  becomes allowed again, a probe to the contacts the user is subscribed to brings their
  current presence back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from lxml import etree

from core.modules.privacy_presence import ACTIVE, PresenceEffects, _data
from core.storage.batch import Batch
from core.storage.locks import AccountLocks
from core.storage.privacy import (
    EMPTY,
    AccountLists,
    CompiledList,
    Contact,
    InvalidItem,
    PrivacyCache,
    PrivacyItem,
    PrivacyLists,
    PrivacyStore,
    Refusal,
    check_orders,
    verdict,
)
from core.storage.roster import RosterStore
from core.xmpp.errors import StanzaError
from core.xmpp.jid import JID
from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_BLOCKING, NS_BLOCKING_ERRORS, NS_PRIVACY, QN_IQ, QN_PRESENCE, qn
from core.xmpp.stanza import make, new_id

if TYPE_CHECKING:
    from core.server import CoreServer

log = logging.getLogger(__name__)
Element = etree._Element

QN_QUERY = qn(NS_PRIVACY, "query")
QN_LIST = qn(NS_PRIVACY, "list")
QN_ACTIVE = qn(NS_PRIVACY, "active")
QN_DEFAULT = qn(NS_PRIVACY, "default")
QN_BLOCKED = qn(NS_BLOCKING_ERRORS, "blocked")

# Per-session state in ``session.data`` (the active list's name is ``ACTIVE``).
BLOCKLIST_REQUESTED = "blocklist-requested"  # XEP-0191 §5.2: pushes go to these sessions

module = Module("privacy", spec="XEP-0016", features=[NS_PRIVACY])


def _from_client(sender: JID, origin: Any) -> bool:
    """Whether the stanza comes straight from the client of session ``origin``."""
    return origin is not None and getattr(origin, "jid", None) == sender


class PrivacyService(PresenceEffects):
    """Privacy lists of one node's accounts: changes, pushes, presence and the router hook."""

    def __init__(self, server: CoreServer) -> None:
        self.server = server
        self.domain = server.domain
        self.store = PrivacyStore(server.redis)
        self.cache = PrivacyCache(
            self.store,
            server.redis,
            server.config.node_id,
            is_online=lambda bare: bool(server.router.resources(bare)),
        )
        self._locks = AccountLocks()

    def start(self) -> None:
        self.cache.start(reload=self._reload)

    def _reload(self, bare: str) -> None:
        # An online account's lists changed on another node: load them again now, so its
        # stanzas keep being decided without waiting for Redis.
        self.server.spawn(self.cache.get(bare))

    def lock(self, bare: str) -> AbstractAsyncContextManager[None]:
        """Serialise the changes of one account's lists on this node."""
        return self._locks.hold(bare)

    # The router hook -------------------------------------------------------------------

    def check(
        self, stanza: Element, sender: JID, to: JID | None, origin: Any
    ) -> bool | Awaitable[None]:
        """True: route on. False: refused (dropped or bounced here). An awaitable: the
        decision needs Redis; it routes the stanza itself when allowed."""
        if to is None:
            return True
        domain = self.domain
        out_bare = in_bare = None
        if sender.local is not None and sender.domain == domain:
            if not (to.local is None and to.domain == domain):  # the server is no contact
                out_bare = f"{sender.local}@{domain}"
        if to.local is not None and to.domain == domain:
            if not (sender.local is None and sender.domain == domain):
                in_bare = f"{to.local}@{domain}"
        if out_bare is None and in_bare is None:
            return True
        if out_bare == in_bare:
            return True  # §2.1: never between one's own resources
        cache = self.cache
        out_lists = cache.peek(out_bare) if out_bare is not None else EMPTY
        in_lists = cache.peek(in_bare) if in_bare is not None else EMPTY
        if out_lists is EMPTY and in_lists is EMPTY:
            return True
        if stanza.get("type") == "error" and origin is None:
            return True
        if out_lists is None or in_lists is None:
            return self._check_later(stanza, sender, to, origin, out_bare, in_bare)
        out_list = self._outbound_list(out_lists, sender, origin) if out_bare else None
        in_list = self._inbound_list(in_lists, to) if in_bare else None
        if out_list is None and in_list is None:
            return True
        out_contact = in_contact = None
        if out_list is not None and out_list.needs_roster:
            known, out_contact = self._cached_contact(out_bare, to)
            if not known:
                return self._check_later(stanza, sender, to, origin, out_bare, in_bare)
        if in_list is not None and in_list.needs_roster:
            known, in_contact = self._cached_contact(in_bare, sender)
            if not known:
                return self._check_later(stanza, sender, to, origin, out_bare, in_bare)
        refusal = verdict(stanza, sender, to, out_list, out_contact, in_list, in_contact)
        if refusal is None:
            return True
        self._refuse(stanza, refusal, _from_client(sender, origin))
        return False

    async def _check_later(
        self,
        stanza: Element,
        sender: JID,
        to: JID,
        origin: Any,
        out_bare: str | None,
        in_bare: str | None,
    ) -> None:
        out_list = in_list = None
        out_contact = in_contact = None
        try:
            if out_bare is not None:
                out_list = self._outbound_list(await self.cache.get(out_bare), sender, origin)
                if out_list is not None and out_list.needs_roster:
                    out_contact = await self.contact(out_bare, to)
            if in_bare is not None:
                in_list = self._inbound_list(await self.cache.get(in_bare), to)
                if in_list is not None and in_list.needs_roster:
                    in_contact = await self.contact(in_bare, sender)
        except Exception:
            # Without the lists nothing may pass (a block must hold): refuse, and say why.
            log.exception("privacy: lists of %s / %s could not be loaded", out_bare, in_bare)
            self.server.router.deliver_error(stanza, StanzaError("internal-server-error"))
            return
        refusal = verdict(stanza, sender, to, out_list, out_contact, in_list, in_contact)
        if refusal is not None:
            self._refuse(stanza, refusal, _from_client(sender, origin))
            return
        pending = self.server.router.route(stanza, sender, to, origin, filtered=True)
        if pending is not None:
            await pending

    def _outbound_list(self, lists: AccountLists, sender: JID, origin: Any) -> CompiledList | None:
        if lists.empty:
            return None
        session = origin if getattr(origin, "jid", None) == sender else None
        if session is None and sender.resource is not None:
            session = self.server.router.session(sender)
        return lists.effective(_data(session).get(ACTIVE))

    def _inbound_list(self, lists: AccountLists, to: JID) -> CompiledList | None:
        if lists.empty:
            return None
        router = self.server.router
        if to.resource is not None:
            return lists.effective(_data(router.session(to)).get(ACTIVE))
        # A bare JID: the active list its sessions share, else the default list.
        names = {_data(s).get(ACTIVE) for s in router.resources(str(to.bare)).values()}
        return lists.effective(names.pop() if len(names) == 1 else None)

    def _cached_contact(self, owner: str | None, peer: JID) -> tuple[bool, Contact | None]:
        """(True, what ``owner``'s in-memory roster says of ``peer``), or (False, None) when
        the roster is not in memory (the account is not online here)."""
        rosters = self.server.rosters
        roster = rosters.cached(owner) if rosters is not None and owner else None
        if roster is None:
            return False, None
        item = roster.items.get(str(peer.bare))
        return True, (item.subscription, frozenset(item.groups)) if item is not None else None

    async def contact(self, owner: str, peer: JID) -> Contact | None:
        """What ``owner``'s roster says of ``peer`` (None: not in it)."""
        item = (await self.roster(owner)).get(str(peer.bare))
        return (item.subscription, frozenset(item.groups)) if item is not None else None

    async def roster(self, owner: str) -> dict[str, Any]:
        """``owner``'s roster items by contact: from memory when online, else Redis."""
        rosters = self.server.rosters
        if rosters is not None:
            return (await rosters.get(owner)).items
        return (await RosterStore(self.server.redis).load(owner)).items

    def _refuse(self, stanza: Element, refusal: Refusal, from_client: bool = False) -> None:
        stype = stanza.get("type")
        tag = stanza.tag
        log.debug(
            "privacy: %s %s %s -> %s refused",
            "outbound" if refusal.outbound else "inbound",
            etree.QName(tag).localname,
            stanza.get("from"),
            stanza.get("to"),
        )
        if stype == "error" or (tag == QN_IQ and stype == "result"):
            return  # an error is never answered with one; a result needs no answer
        if tag == QN_PRESENCE and not (refusal.outbound and from_client):
            # §2.14, XEP-0191 §5.3: inbound presence is dropped without a word; so is the
            # presence the server sends for the user (a broadcast gets no error per contact).
            return
        if refusal.outbound:
            app = None
            if refusal.blocked:
                app = etree.Element(QN_BLOCKED, nsmap={None: NS_BLOCKING_ERRORS})
            error = StanzaError("not-acceptable", type="cancel", app_condition=app)
        else:
            error = StanzaError("service-unavailable")
        self.server.router.deliver_error(stanza, error)

    # Changes ---------------------------------------------------------------------------

    async def change(
        self,
        bare: str,
        edit: Any,
        *,
        blocking: tuple[str, list[str] | None] | None = None,
        active_before: dict[int, str | None] | None = None,
    ) -> tuple[AccountLists, AccountLists]:
        """Apply ``edit`` (PrivacyLists -> PrivacyLists, may raise StanzaError) durably, then
        update this node's copy; pushes and presence follow in the background, after the
        reply. ``blocking`` is the XEP-0191 push to send instead of the computed one."""
        async with self.lock(bare):
            cached = await self.cache.get(bare)
            old, data = await self.store.update(bare, edit)
            # What Redis held is the truth; the copy may predate another node's change.
            before = cached if cached.data == old else AccountLists.of(old)
            after = before if data == old else await self.cache.changed(bare, data)
        self.server.spawn(self._after_change(bare, before, after, blocking, active_before))
        return before, after

    async def _after_change(
        self,
        bare: str,
        before: AccountLists,
        after: AccountLists,
        blocking: tuple[str, list[str] | None] | None,
        active_before: dict[int, str | None] | None,
    ) -> None:
        old, new = before.data, after.data
        for name in sorted(set(old.lists) | set(new.lists)):
            if old.lists.get(name) != new.lists.get(name):
                self.push_list(bare, name)  # §2.2 rule 10
        if blocking is not None:
            self.push_blocking(bare, *blocking)
        else:
            was, now = old.blocklist(), new.blocklist()
            gone = [j for j in was if j not in now]
            added = [j for j in now if j not in was]
            if gone:
                self.push_blocking(bare, "unblock", gone)
            if added:
                self.push_blocking(bare, "block", added)
        await self.presence_effects(bare, before, after, active_before or {})

    def push_list(self, bare: str, name: str) -> None:
        """§2.2 rule 10: the name of a changed list, to every connected resource."""
        for s in list(self.server.router.resources(bare).values()):
            iq = make("iq", type="set", id=new_id(), to=s.full)
            query = etree.SubElement(iq, QN_QUERY, nsmap={None: NS_PRIVACY})
            etree.SubElement(query, QN_LIST).set("name", name)
            s.send(iq)

    def push_blocking(self, bare: str, verb: str, jids: list[str] | None) -> None:
        """XEP-0191 §5.3-5.5: block/unblock pushes to the resources that asked for the
        blocklist; ``jids`` None is the unblock-all push."""
        for s in list(self.server.router.resources(bare).values()):
            if not _data(s).get(BLOCKLIST_REQUESTED):
                continue
            iq = make("iq", type="set", id=new_id(), to=s.full)
            el = etree.SubElement(iq, qn(NS_BLOCKING, verb), nsmap={None: NS_BLOCKING})
            for jid in jids or ():
                etree.SubElement(el, qn(NS_BLOCKING, "item")).set("jid", jid)
            s.send(iq)

    # Sessions --------------------------------------------------------------------------

    async def session_bound(self, session: Any) -> None:
        await self.cache.get(session.bare)

    def session_closed(self, session: Any) -> None:
        if not self.server.router.resources(session.bare):
            self.cache.went_offline(session.bare)

    def applies_elsewhere(self, bare: str, session: Any, name: str, default: str | None) -> bool:
        """§2.2 rule 11: whether list ``name`` applies to a connected resource other than
        ``session`` (its active list, or ``default`` for one without active list)."""
        for s in self.server.router.resources(bare).values():
            if s is session:
                continue
            active = _data(s).get(ACTIVE)
            if active == name or (active is None and default == name):
                return True
        return False


def service_of(host: Any) -> PrivacyService:
    """The node's privacy service, installed on first use."""
    service = getattr(host, "privacy", None)
    if service is None:
        service = host.privacy = PrivacyService(host)
        host.privacy_check = service.check
    return service


# -- The jabber:iq:privacy protocol ------------------------------------------------------

# Limits of one account, refused with policy-violation: enough for any real use, small enough
# that one account cannot slow every stanza it sends or receives.
MAX_LISTS = 64
MAX_ITEMS = 1024


def _children(el: Element) -> list[Element]:
    return [c for c in el if isinstance(c.tag, str)]


# The service's life. The blocking module registers these hooks too, so that blocking is
# enforced when this module is not loaded; each hook does nothing the second time.


async def started(server: CoreServer) -> None:
    service_of(server).start()


async def stopping(server: CoreServer) -> None:
    await service_of(server).cache.stop()


async def session_bound(session: Any) -> None:
    await service_of(session.server).session_bound(session)


async def session_loading(session: Any, batch: Batch) -> None:
    service_of(session.server).cache.prefetch(session.bare, batch)


async def session_closed(session: Any) -> None:
    service_of(session.server).session_closed(session)


def add_service_hooks(target: Module) -> None:
    """Register the privacy service's lifecycle hooks on ``target``."""
    target.on("server-started")(started)
    target.on("server-stopping")(stopping)
    target.on("session-loading")(session_loading)
    target.on("session-bound")(session_bound)
    target.on("session-closed")(session_closed)


add_service_hooks(module)


@module.iq("get", QN_QUERY, to="self")
async def get_lists(ctx: IqContext) -> Element:
    """§2.3: the names of the lists with the active and default ones, or one list."""
    service = service_of(ctx.host)
    lists = (await service.cache.get(str(ctx.sender.bare))).data
    query = etree.Element(QN_QUERY, nsmap={None: NS_PRIVACY})
    children = _children(ctx.payload)
    if not children:
        active = _data(ctx.session).get(ACTIVE)
        if active is not None and active in lists.lists:
            etree.SubElement(query, QN_ACTIVE).set("name", active)
        if lists.default is not None:
            etree.SubElement(query, QN_DEFAULT).set("name", lists.default)
        for name in sorted(lists.lists):
            etree.SubElement(query, QN_LIST).set("name", name)
        return query
    if len(children) > 1 or children[0].tag != QN_LIST:
        raise StanzaError("bad-request", "retrieve one list at a time")
    name = children[0].get("name")
    if not name or name not in lists.lists:
        raise StanzaError("item-not-found", "no privacy list by that name")
    found = etree.SubElement(query, QN_LIST)
    found.set("name", name)
    for item in lists.lists[name]:
        found.append(item.to_element())
    return query


@module.iq("set", QN_QUERY, to="self")
async def set_lists(ctx: IqContext) -> None:
    """§2.2: exactly one of <active/>, <default/> or <list/>."""
    children = _children(ctx.payload)
    if len(children) != 1:
        raise StanzaError("bad-request", "send one <active/>, <default/> or <list/> at a time")
    el = children[0]
    service = service_of(ctx.host)
    bare = str(ctx.sender.bare)
    name = el.get("name")
    if name is not None and not name:
        raise StanzaError("bad-request", "a list name is not empty")
    if el.tag == QN_ACTIVE:
        await _set_active(service, bare, ctx.session, name)
    elif el.tag == QN_DEFAULT:
        await _set_default(service, bare, ctx.session, name)
    elif el.tag == QN_LIST and name is not None:
        items = _children(el)
        if items:
            await _store_list(service, bare, ctx.session, name, items)
        else:
            await _remove_list(service, bare, ctx.session, name)
    else:
        raise StanzaError("bad-request", "send one <active/>, <default/> or <list name=''/>")
    return None


async def _set_active(service: PrivacyService, bare: str, session: Any, name: str | None) -> None:
    """§2.4: the session's active list; no name declines any."""
    data = getattr(session, "data", None)
    if not isinstance(data, dict):
        raise StanzaError("not-allowed", "active lists belong to client sessions")
    lists = await service.cache.get(bare)
    if name is not None and name not in lists.data.lists:
        raise StanzaError("item-not-found", "no privacy list by that name")
    old = data.get(ACTIVE)
    if name is None:
        data.pop(ACTIVE, None)
    else:
        data[ACTIVE] = name
    log.info("privacy: %s active list %s", getattr(session, "full", bare), name)
    service.server.spawn(service.presence_effects(bare, lists, lists, {id(session): old}))


async def _set_default(service: PrivacyService, bare: str, session: Any, name: str | None) -> None:
    """§2.5: the account's default list; no name declines any. While the current default
    applies to another connected resource, it may not be replaced (conflict)."""

    def edit(lists: PrivacyLists) -> PrivacyLists:
        if name is not None and name not in lists.lists:
            raise StanzaError("item-not-found", "no privacy list by that name")
        if lists.default == name:
            return lists
        if lists.default is not None and service.applies_elsewhere(
            bare, session, lists.default, lists.default
        ):
            raise StanzaError("conflict", "the default list is in use by another resource")
        return lists.with_default(name)

    await service.change(bare, edit)


async def _store_list(
    service: PrivacyService, bare: str, session: Any, name: str, children: list[Element]
) -> None:
    """§2.6, §2.7: create or replace a list with all of its items."""
    if len(children) > MAX_ITEMS:
        raise StanzaError("policy-violation", f"a list holds at most {MAX_ITEMS} items")
    items = []
    for c in children:
        if c.tag != qn(NS_PRIVACY, "item"):
            raise StanzaError("bad-request", "a list holds <item/> elements only")
        try:
            items.append(PrivacyItem.from_element(c))
        except InvalidItem as e:
            raise StanzaError("bad-request", str(e)) from None
    try:
        check_orders(items)
    except InvalidItem as e:
        raise StanzaError("bad-request", str(e)) from None
    wanted = {i.value for i in items if i.type == "group"}
    if wanted:
        # §2.1: a group that is not in the user's roster is item-not-found.
        roster = await service.roster(bare)
        known = {g for item in roster.values() for g in item.groups}
        missing = sorted(g for g in wanted if g not in known)
        if missing:
            raise StanzaError("item-not-found", f"no roster group {missing[0]!r}")

    def edit(lists: PrivacyLists) -> PrivacyLists:
        if name not in lists.lists and len(lists.lists) >= MAX_LISTS:
            raise StanzaError("policy-violation", f"an account holds at most {MAX_LISTS} lists")
        return lists.with_list(name, items)

    await service.change(bare, edit)


async def _remove_list(service: PrivacyService, bare: str, session: Any, name: str) -> None:
    """§2.8: remove a list, unless it applies to another connected resource (conflict)."""

    def edit(lists: PrivacyLists) -> PrivacyLists:
        if name not in lists.lists:
            raise StanzaError("item-not-found", "no privacy list by that name")
        if service.applies_elsewhere(bare, session, name, lists.default):
            raise StanzaError("conflict", "the list is in use by another resource")
        return lists.without_list(name)

    data = _data(session)
    old = data.get(ACTIVE)
    await service.change(bare, edit, active_before={id(session): old})
    # The session's own active list may go (§2.8 refuses only other resources'); the
    # presence that follows the change runs after this, and sees the list gone.
    if old == name:
        data.pop(ACTIVE, None)

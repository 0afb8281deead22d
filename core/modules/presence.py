"""Presence (RFC 6121 §4): broadcast, probes, directed presence and unavailable on logout.

``PresenceService`` is ``server.presence``; the router hands it presence a client sends
(``outbound``) and presence addressed to a local account (``inbound``). Subscription stanzas go
to core/modules/subscription.py. A contact on another domain is reached through
``router.route``, like a local one; the remote-domain route delivers it.

What a session announced is kept on the session (``available``, ``priority``, ``presence``);
directed presence recipients (§4.6) are in ``session.data["directed"]``; the last unavailable
presence of an account and its time are in Redis (storage/last.py) for probes and XEP-0012.
Which contacts' resources an online account currently sees available is kept in ``heard``, for
the privacy lists (XEP-0016 §2.10). Available presence a client sends gets the XEP-0153 avatar
hash from ``server.vcards`` (core/modules/vcard.py).

Contacts that come online together: the presence of each reaches the other either through its
initial broadcast (§4.2.2) or as the answer to the other's probe (§4.3.2), never both and never
neither. Each session that sends initial presence gets a sequence number (``SINCE``, taken before
any await), and both paths decide by it, not by what is available when a stanza happens to be
delivered (see ``_wants_initial`` and ``_probe``). What answering the probes reads from Redis
is read ahead, or once per contact (core/modules/presence_ahead.py).
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lxml import etree

from core.modules import subscription
from core.modules.presence_ahead import (
    BoundLast,
    Offline,
    has_available,
    is_local_account,
    read_ahead,
    roster_item,
)
from core.modules.subscription import SUBSCRIPTION_TYPES, route
from core.storage.last import LastActivityStore
from core.xmpp.errors import StanzaError
from core.xmpp.jid import JID, parse_jid
from core.xmpp.module import Module
from core.xmpp.ns import NS_CLIENT, NS_DELAY, QN_DELAY, qn
from core.xmpp.stanza import PRESENCE_TYPES, error_reply, make

if TYPE_CHECKING:
    from core.server import CoreServer

log = logging.getLogger(__name__)
Element = etree._Element

QN_PRIORITY = qn(NS_CLIENT, "priority")
QN_SHOW = qn(NS_CLIENT, "show")
SHOW_VALUES = frozenset({"away", "chat", "dnd", "xa"})  # §4.7.2.1
SUBSCRIBED_FROM = ("from", "both")  # the contact receives the account's presence
SUBSCRIBED_TO = ("to", "both")  # the account receives the contact's presence
# session.data: the sequence number of the session's current presence session, taken when its
# initial presence was accepted (before any await), so that every two sessions are ordered.
SINCE = "presence-since"

module = Module("presence", spec="RFC 6121 §4")


def delay_element(when: float, domain: str, text: str | None = None) -> Element:
    """A XEP-0203 delay stamp for ``when`` (seconds since the epoch), by ``domain``."""
    el = etree.Element(QN_DELAY, nsmap={None: NS_DELAY})
    el.set("from", domain)
    stamp = datetime.fromtimestamp(when, UTC)
    el.set("stamp", stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z")
    if text:
        el.text = text
    return el


def parse_priority(stanza: Element) -> int:
    """The priority of an available presence: an integer from -128 to 127 (§4.7.2.3),
    0 when absent; anything else is a bad request."""
    el = stanza.find(QN_PRIORITY)
    if el is None:
        return 0
    text = (el.text or "").strip()
    try:
        value = int(text)
    except ValueError:
        raise StanzaError("bad-request", "the priority must be an integer") from None
    if not -128 <= value <= 127:
        raise StanzaError("bad-request", "the priority must be between -128 and 127")
    return value


@dataclass(frozen=True, slots=True)
class Sent:
    """What the presence service knows of a stanza it generated while the router handles it:
    ``kind`` is "initial" (the initial presence broadcast of ``session``), "probe" (a probe
    for the initial presence of ``session``), "answer" (the presence of ``session`` answering
    a probe) or "last" (the last unavailable presence of the account ``bare``, answering a
    probe); ``since`` is the presence session number of ``session`` when it was sent, and
    ``presence`` what ``session.presence`` was then."""

    kind: str
    session: Any = None
    since: int | None = None
    presence: Element | None = None
    bare: str = ""
    offline: dict[str, Offline] | None = None  # for "probe": read ahead, by contact


def _since(session: Any) -> int | None:
    data = getattr(session, "data", None)
    return data.get(SINCE) if isinstance(data, dict) else None


def _after(session: Any, since: int | None) -> bool:
    """Whether ``session`` began its current presence session after number ``since``."""
    mine = _since(session)
    return mine is not None and since is not None and mine > since


# A presence without attributes, copied for each probe: cheaper than building the element.
_BLANK = make("presence")


def _addressed(stanza: Element, to: str, frm: str | None = None) -> Element:
    # lxml's __copy__ copies the whole subtree, as deepcopy does, without its memo.
    out = stanza.__copy__()
    out.set("to", to)
    if frm is not None:
        out.set("from", frm)
    return out


class PresenceService:
    """Presence processing for one node's accounts."""

    def __init__(self, server: CoreServer) -> None:
        self.server = server
        self.last = LastActivityStore(server.redis)
        self.bound_last = BoundLast(server)
        # Per account online here: the full JIDs whose available presence its resources
        # were last given (broadcasts and probe answers to the bare JID), so that a privacy
        # list that starts blocking one of them can make it go offline (XEP-0016 §2.10).
        self.heard: dict[str, dict[str, JID]] = {}
        self._sequence = itertools.count(1)
        # Stanzas of initial presence and probe answers being routed, by id() of the element
        # (alive, and kept here only while routed): the router hands it as it is to
        # ``inbound``, which can tell them from other presence (``Sent``).
        self._sent: dict[int, Sent] = {}

    # From the account's own sessions (§4.2, §4.4, §4.5, §4.6) -------------------------

    def outbound(self, stanza: Element, session: Any, to: JID | None) -> Awaitable[None] | None:
        """Presence a client session sends, with or without 'to'."""
        ptype = stanza.get("type")
        try:
            if ptype is not None and ptype not in PRESENCE_TYPES:
                raise StanzaError("bad-request", f"unknown presence type {ptype!r}")
            photos = self.server.vcards
            if ptype is None and photos is not None:
                # XEP-0153 avatar hash, broadcast and directed presence alike (XEP-0398 §4).
                photos.stamp(stanza, session.bare)
            if to is None:
                if ptype is None:
                    # §4.7.2: checked before anything of it is used.
                    prio = parse_priority(stanza)
                    show = stanza.findtext(QN_SHOW)
                    if show is not None and show not in SHOW_VALUES:
                        raise StanzaError("bad-request", f"unknown show value {show!r}")
                    return self._guarded(self._available(stanza, session, prio), stanza, session)
                if ptype == "unavailable":
                    return self._guarded(self._unavailable(stanza, session), stanza, session)
                if ptype == "error":
                    return None
                raise StanzaError("bad-request", f"a presence of type {ptype} needs a 'to'")
            own = to.local == session.jid.local and to.domain == session.jid.domain
            if ptype in SUBSCRIPTION_TYPES:
                if own:
                    raise StanzaError("bad-request", "an account is not its own contact")
                return self._guarded(
                    subscription.outbound(self.server, stanza, session.jid, to), stanza, session
                )
            if ptype == "probe":
                if own:
                    self._own_resources_to(session)
                    return None
                # Answered to the bare JID, as a server-generated probe would be (§4.3.1).
                probe = make("presence", type="probe", frm=session.bare, to=str(to.bare))
                return self._guarded(
                    route(self.server, probe, session.jid.bare, to.bare), stanza, session
                )
        except StanzaError as e:
            self._refuse(stanza, session, e)
            return None
        # Directed presence (§4.6): routed as it is, its recipient remembered.
        if ptype in (None, "unavailable") and not own:
            self._track_directed(session, to, ptype is None)
        return self.server.router.route(stanza, session.jid, to)

    async def rebroadcast(self, session: Any) -> None:
        """Broadcast the current presence of ``session`` again, as an update (§4.4), after the
        server changed what it adds to it (a new XEP-0153 avatar hash)."""
        if not session.available or session.presence is None:
            return
        if self.server.router.session(session.jid) is not session:
            return
        stanza = copy.deepcopy(session.presence)
        photos = self.server.vcards
        if photos is not None:
            photos.stamp(stanza, session.bare)
        await self._guarded(self._available(stanza, session, session.priority), stanza, session)

    def _refuse(self, stanza: Element, session: Any, error: StanzaError) -> None:
        reply = error_reply(stanza, error)
        if reply is not None:
            reply.set("to", session.full)
            session.send(reply)

    async def _guarded(self, work: Awaitable[None], stanza: Element, session: Any) -> None:
        """Run the processing of a client's presence; what goes wrong is answered to it."""
        try:
            await work
        except StanzaError as e:
            self._refuse(stanza, session, e)
        except Exception:
            log.exception("presence from %s failed", session.full)
            self._refuse(stanza, session, StanzaError("internal-server-error"))

    async def _available(self, stanza: Element, session: Any, priority: int) -> None:
        initial = not session.available
        session.available = True
        session.priority = priority
        kept = copy.deepcopy(stanza)
        kept.attrib.pop("to", None)
        session.presence = kept
        since: int | None = None
        if initial:
            # Taken with the availability, before any await: the order of the two between
            # sessions decides which path carries presence between them (``_wants_initial``).
            since = session.data[SINCE] = next(self._sequence)
            self.bound_last.forget(session.bare)
        bare = session.bare
        roster = await self.server.rosters.get(bare)
        # §4.2.2, §4.4.2: to every contact with a subscription to the account, and to every
        # available resource of the account, the sending one included.
        mark = Sent("initial", session, since, kept) if since is not None else None
        for item in list(roster.items.values()):
            if item.subscription in SUBSCRIBED_FROM and not self._ignored(item.jid):
                await self._route_to(kept, session.jid, item.jid, mark)
        for other in self.server.router.available_sessions(bare):
            # A resource that became available after this one gets its presence from its own
            # initial presence (the loop below, run for it), so not here as well.
            if since is None or other is session or not _after(other, since):
                other.send(_addressed(kept, other.full))
        if not initial:
            await self.server.dispatcher.emit("presence-updated", session)
            return
        # §4.2.2: the account learns its other resources' presence (those that became
        # available after it send theirs above, in their own initial presence)...
        for other in self.server.router.available_sessions(bare):
            if other is not session and other.presence is not None and not _after(other, since):
                session.send(_addressed(other.presence, session.full, other.full))
        # ...and its contacts' presence, through a probe from the bare JID (§4.3.1).
        probed = [item.jid for item in roster.items.values() if item.subscription in SUBSCRIBED_TO]
        mark = Sent("probe", session, since, offline=await read_ahead(self.server, bare, probed))
        prober = session.jid.bare
        for jid in probed:
            try:
                target = parse_jid(jid)
            except ValueError:
                continue
            probe = _BLANK.__copy__()
            probe.set("to", jid)
            probe.set("from", bare)
            probe.set("type", "probe")
            await self._route_marked(probe, prober, target, mark)
        # §3.1.3: subscription requests not yet answered are delivered at each login.
        for raw in list(roster.pending.values()):
            try:
                request = etree.fromstring(raw)
            except etree.XMLSyntaxError:
                log.warning("unreadable pending subscription request for %s", bare)
                continue
            session.send(request)
        await self.server.dispatcher.emit("initial-presence", session)

    async def _unavailable(self, stanza: Element, session: Any) -> None:
        kept = copy.deepcopy(stanza)
        kept.attrib.pop("to", None)
        was_available = session.available
        session.available = False
        session.presence = None
        session.data.pop(SINCE, None)
        await self._gone(session, kept, was_available)
        await self.record_last(session.bare, kept)

    async def _gone(self, session: Any, stanza: Element, was_available: bool) -> None:
        """§4.5.2: unavailable presence to the contacts, the account's resources and the
        directed presence recipients (§4.6.3) of a session that is no longer available."""
        bare = session.bare
        directed: dict[str, JID] = session.data.pop("directed", {})
        sent: set[str] = set()
        if was_available:
            roster = await self.server.rosters.get(bare)
            for item in list(roster.items.values()):
                if item.subscription in SUBSCRIBED_FROM:
                    sent.add(item.jid)
                    if not self._ignored(item.jid):
                        await self._route_to(stanza, session.jid, item.jid)
            for other in self.server.router.available_sessions(bare):
                other.send(_addressed(stanza, other.full))
            if self.server.router.session(session.jid) is session:
                session.send(_addressed(stanza, session.full))
        for full, jid in directed.items():
            if full not in sent:
                await route(self.server, _addressed(stanza, full), session.jid, jid)

    def _track_directed(self, session: Any, to: JID, available: bool) -> None:
        """§4.6.2: remember who got directed available presence without a subscription, so
        that they hear when the session goes away."""
        directed: dict[str, JID] = session.data.setdefault("directed", {})
        key = str(to)
        if not available:
            directed.pop(key, None)
            return
        roster = self.server.rosters.cached(session.bare)
        item = roster.items.get(str(to.bare)) if roster is not None else None
        if item is None or item.subscription not in SUBSCRIBED_FROM:
            directed[key] = to

    def _own_resources_to(self, session: Any) -> None:
        for other in self.server.router.available_sessions(session.bare):
            if other.presence is not None:
                session.send(_addressed(other.presence, session.full, other.full))

    def _ignored(self, contact: str) -> bool:
        """Whether presence broadcast to the bare JID ``contact`` would reach nobody: a local
        account with no available resource here ignores it (§8.5.2.2.2). Not routed then: no
        copy, no privacy check (which may read an offline account's lists from Redis). A
        contact that becomes available later gets the presence from its own probe (§4.3.2),
        as it would have had the broadcast been routed (``_wants_initial``)."""
        return is_local_account(self.server, contact) and not has_available(self.server, contact)

    async def _route_to(
        self, stanza: Element, sender: JID, to: str, mark: Sent | None = None
    ) -> None:
        try:
            target = parse_jid(to)
        except ValueError:
            return
        await self._route_marked(_addressed(stanza, to), sender, target, mark)

    async def _route_marked(self, stanza: Element, sender: JID, to: JID, mark: Sent | None) -> None:
        """Route ``stanza`` (one of its own copies) with what ``inbound`` is to know of it."""
        if mark is None:
            await route(self.server, stanza, sender, to)
            return
        key = id(stanza)
        self._sent[key] = mark
        try:
            await route(self.server, stanza, sender, to)
        finally:
            del self._sent[key]

    async def session_closed(self, session: Any) -> None:
        """§4.6.3, RFC 6120 §4.4: a session that ends without saying so goes unavailable."""
        if not self.server.router.available_sessions(session.bare):
            self.heard.pop(session.bare, None)
        if not self.server.router.resources(session.bare):
            self.bound_last.forget(session.bare)
        replacement = self.server.router.session(session.jid)
        if replacement is not None and replacement.available:
            # The full JID lives on in a new session that announced itself; an unavailable
            # from the old one would contradict it.
            session.data.pop("directed", None)
            return
        if not session.available and not session.data.get("directed"):
            return
        was_available = session.available
        session.available = False
        session.data.pop(SINCE, None)
        gone = make("presence", type="unavailable", frm=session.full)
        session.presence = None
        await self._gone(session, gone, was_available)
        if was_available:
            await self.record_last(session.bare, gone)

    async def record_last(self, bare: str, stanza: Element) -> None:
        """XEP-0012, §4.3.2: when the account went unavailable, and how."""
        await self.last.record(bare, time.time(), etree.tostring(stanza))
        self.bound_last.forget(bare)

    # Addressed to a local account (§4.3, §8.5.2.1.2, §8.5.3) ---------------------------

    def inbound(self, stanza: Element, sender: JID, to: JID) -> Awaitable[None] | None:
        """Presence from anyone to a local account's bare JID, or a subscription stanza or
        probe to one of its full JIDs (those concern the account, §3.1.3, §4.3.2)."""
        ptype = stanza.get("type")
        if ptype in (None, "unavailable", "error"):
            if to.resource is None:
                # §8.5.2.1.2: to every available resource; nobody available: ignored.
                bare = f"{to.local}@{to.domain}"
                mark = self._sent.get(id(stanza))
                if mark is not None and self._stale(mark):
                    return None
                initial = mark if mark is not None and mark.kind == "initial" else None
                if self.deliver_to_available(bare, stanza, sender, initial) and ptype != "error":
                    self._heard(bare, sender, ptype is None)
            return None
        if ptype in SUBSCRIPTION_TYPES:
            return self._inbound_guarded(
                self._inbound_subscription(stanza, sender, to.bare), stanza
            )
        if ptype == "probe":
            mark = self._sent.get(id(stanza))
            if mark is not None and mark.kind != "probe":
                mark = None
            return self._inbound_guarded(self._probe(sender, to.bare, mark), stanza)
        return None

    async def _inbound_guarded(self, work: Awaitable[None], stanza: Element) -> None:
        try:
            await work
        except Exception:
            log.exception("presence to %s failed", stanza.get("to"))
            self.server.router.deliver_error(stanza, StanzaError("internal-server-error"))

    def deliver_to_available(
        self,
        bare: str,
        stanza: Element,
        sender: JID | None = None,
        initial: Sent | None = None,
    ) -> int:
        """Send ``stanza`` to every available resource of ``bare`` (but those whose active
        privacy list refuses it from ``sender``, XEP-0016 §2.2 rule 1); how many got it.
        ``initial``: the stanza is that session's initial presence broadcast, which only the
        resources that get it from no probe of their own receive (``_wants_initial``)."""
        privacy = self.server.privacy if sender is not None else None
        sent = 0
        for s in self.server.router.available_sessions(bare):
            if privacy is not None and privacy.refuses_for(s, stanza, sender):
                continue
            if initial is not None and not self._wants_initial(s, initial):
                continue
            s.send(stanza)
            sent += 1
        return sent

    def _stale(self, mark: Sent) -> bool:
        """Whether presence the service generated no longer holds when it is delivered (the
        router may have awaited in between), so that it must not overwrite what came since:
        the available presence of a session that has since gone unavailable or sent another
        (its unavailable presence, §4.5.2, or its update, §4.4.2, goes to the same resources
        and may have arrived first), or the last unavailable presence of an account that has
        since come online (its initial presence reaches the prober, §4.2.2)."""
        if mark.kind == "last":
            return bool(self.server.router.available_sessions(mark.bare))
        if mark.kind in ("initial", "answer"):
            return mark.session.presence is not mark.presence
        return False

    def _wants_initial(self, session: Any, initial: Sent) -> bool:
        """Whether ``session`` gets the initial presence broadcast ``initial`` (§4.2.2).

        A session that became available after the sender did (a later sequence number) sent
        its probes after that too, so its probe to the sender's account finds the sender
        available and is answered with this presence (§4.3.2, ``_probe``): the broadcast would
        repeat it. So it goes only to sessions that were available first, and to those whose
        account does not probe the sender (no 'to' or 'both' subscription in its roster). Both
        decisions depend on the two numbers alone, taken before any await, so whatever the
        interleaving of the two sessions' processing, exactly one of the paths delivers."""
        if not _after(session, initial.since):
            return True
        rosters = self.server.rosters
        roster = rosters.cached(session.bare) if rosters is not None else None
        if roster is None:
            return True
        item = roster.items.get(initial.session.bare)
        return item is None or item.subscription not in SUBSCRIBED_TO

    def _heard(self, bare: str, sender: JID, available: bool) -> None:
        if sender.local == bare.partition("@")[0] and sender.domain == self.server.domain:
            return  # one's own resources are not contacts
        heard = self.heard.setdefault(bare, {})
        if available:
            heard[str(sender)] = sender
        elif sender.resource is None:
            # Unavailable from a bare JID: every resource of that contact is gone.
            for full, jid in list(heard.items()):
                if jid.bare == sender:
                    del heard[full]
        else:
            heard.pop(str(sender), None)

    def heard_from(self, bare: str) -> list[JID]:
        """The contacts' full JIDs that the account's resources currently see available."""
        return list(self.heard.get(bare, {}).values())

    async def may_see(self, owner: str, peer: JID) -> bool:
        """Whether ``peer`` may learn the presence of the account ``owner``: the account
        itself, or a contact with a 'from' or 'both' subscription (RFC 6121 §4.3.2) whose
        presence-out the privacy lists do not block (XEP-0012 §8, XEP-0030 §8)."""
        if peer.local == owner.partition("@")[0] and peer.domain == self.server.domain:
            return True
        roster = await self.server.rosters.get(owner)
        item = roster.items.get(str(peer.bare))
        if item is None or item.subscription not in SUBSCRIBED_FROM:
            return False
        privacy = self.server.privacy
        return privacy is None or not await privacy.hides_presence(owner, peer)

    async def _inbound_subscription(self, stanza: Element, sender: JID, to: JID) -> None:
        if sender.local == to.local and sender.domain == to.domain:
            return
        # §8.5.1: presence to an account that does not exist is ignored.
        if not await self.server.account_exists(to):
            return
        await subscription.inbound(self.server, stanza, sender.bare, to)

    async def _probe(self, sender: JID, to: JID, initial: Sent | None = None) -> None:
        """§4.3.2: answer a probe with the presence of each available resource, or with the
        last unavailable presence, but only to those allowed to see it. ``initial``: the
        probe of a local session's initial presence, perhaps with what to answer read ahead
        (used while the account still has no available resource here)."""
        bare = str(to)
        ahead = initial.offline.get(bare) if initial is not None and initial.offline else None
        if sender.bare != to:
            item = await roster_item(self.server, to, str(sender.bare), ahead)
            if item is None or item.subscription not in SUBSCRIBED_FROM:
                # Not authorised, or no such account (§8.5.1 allows either answer): the same
                # 'unsubscribed', so the answer reveals neither presence nor the account;
                # it lets the prober's server correct a subscription it wrongly believes in.
                await route(
                    self.server,
                    make("presence", type="unsubscribed", frm=bare, to=str(sender.bare)),
                    to,
                    sender.bare,
                )
                return
        available = self.server.router.available_sessions(bare)
        for s in available:
            if s.presence is None:
                continue
            if initial is not None and _after(s, initial.since):
                # This resource became available after the prober: its initial broadcast
                # reaches the prober (``_wants_initial``), so the answer would repeat it.
                continue
            answer = _addressed(s.presence, str(sender), s.full)
            mark = Sent("answer", s, _since(s), s.presence)
            await self._route_marked(answer, s.jid, sender, mark)
        if available:
            return
        if ahead is not None:
            last = ahead.last
        elif self.server.router.resources(bare):
            last = await self.bound_last.get(bare)
        else:
            last = await self.last.get(bare)
        if last is None or not last.presence:
            return
        try:
            gone = etree.fromstring(last.presence)
        except etree.XMLSyntaxError:
            return
        gone.set("to", str(sender))
        gone.append(delay_element(last.time, self.server.domain))
        frm = gone.get("from") or bare
        await self._route_marked(gone, parse_jid(frm), sender, Sent("last", bare=bare))

    # For subscriptions (§3.1.5, §3.2.2, §3.3.3) ---------------------------------------

    async def send_current(self, bare: str, contact: JID) -> None:
        """The current presence of each available resource of ``bare``, to ``contact``."""
        for s in self.server.router.available_sessions(bare):
            if s.presence is not None:
                await route(self.server, _addressed(s.presence, str(contact)), s.jid, contact)

    async def send_unavailable(self, bare: str, contact: JID) -> None:
        """Unavailable presence from each available resource of ``bare``, to ``contact``."""
        for s in self.server.router.available_sessions(bare):
            gone = make("presence", type="unavailable", frm=s.full, to=str(contact))
            await route(self.server, gone, s.jid, contact)


@module.on("server-started")
async def started(server: CoreServer) -> None:
    server.presence = PresenceService(server)


@module.on("session-closed")
async def session_closed(session: Any) -> None:
    presence = session.server.presence
    if presence is not None:
        await presence.session_closed(session)

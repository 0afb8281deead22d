"""The core router: decides where a stanza goes (RFC 6120 §10, RFC 6121 §8).

By target: the server's own domain → a module; a local bare or full JID → the delivery rules of
RFC 6121 §8.5; a component's domain → its link; any other domain → the remote-domain route.
A message between two sessions on this node is routed entirely in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

from lxml import etree

from core.xmpp.errors import StanzaError, StreamError
from core.xmpp.jid import JID
from core.xmpp.module import run_iq
from core.xmpp.ns import QN_IQ, QN_MESSAGE, QN_PRESENCE
from core.xmpp.stanza import MESSAGE_TYPES, error_reply, payload_of

if TYPE_CHECKING:
    from core.server import CoreServer

log = logging.getLogger(__name__)
Element = etree._Element
# Presence types that concern an account as a whole, whatever resource they name.
_ACCOUNT_PRESENCE = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe"})


def _message_type(stanza: Element) -> str:
    """The type a message is delivered as: RFC 6121 §5.2.2 treats a missing or unknown type
    as 'normal'."""
    mtype = stanza.get("type")
    return mtype if mtype in MESSAGE_TYPES else "normal"


async def _finish(pending: Awaitable[None]) -> None:
    await pending


class Session(Protocol):
    """What the router needs of a bound client session, whatever its transport."""

    jid: JID
    full: str
    bare: str
    priority: int
    available: bool

    def send(self, stanza: Element) -> None: ...

    def close_with(self, error: StreamError) -> None: ...


class Route(Protocol):
    """A link that carries stanzas for a whole domain (a component, a remote server)."""

    def send(self, stanza: Element) -> None: ...


class Router:
    """Local sessions by bare JID and resource, and the routes to other domains."""

    def __init__(self, server: CoreServer) -> None:
        self.server = server
        self.domain = server.domain
        self.local: dict[str, dict[str, Session]] = {}
        # Domain routes added by the component listener and the s2s layer. A callable that
        # returns a Route (or None) for a domain not served here.
        self.domain_routes: dict[str, Route] = {}
        self.remote_route: Any = None

    # Sessions -------------------------------------------------------------------------

    def bind(self, session: Session) -> Session | None:
        """Register ``session``; returns the session it replaced (same full JID), if any."""
        resources = self.local.setdefault(session.bare, {})
        old = resources.get(session.jid.resource or "")
        resources[session.jid.resource or ""] = session
        return old if old is not session else None

    def unbind(self, session: Session) -> None:
        resources = self.local.get(session.bare)
        if not resources:
            return
        res = session.jid.resource or ""
        if resources.get(res) is session:
            del resources[res]
            if not resources:
                del self.local[session.bare]

    def resources(self, bare: str) -> dict[str, Session]:
        return self.local.get(bare, {})

    def session(self, full: JID) -> Session | None:
        return self.local.get(str(full.bare), {}).get(full.resource or "")

    def available_sessions(self, bare: str) -> list[Session]:
        return [s for s in self.local.get(bare, {}).values() if s.available]

    # Routing ---------------------------------------------------------------------------

    def route(
        self,
        stanza: Element,
        sender: JID,
        to: JID | None,
        origin: Any = None,
        *,
        filtered: bool = False,
    ) -> Awaitable[None] | None:
        """Route a stanza whose 'from' is ``sender`` and whose normalised 'to' is ``to``.

        Returns an awaitable when the decision needs I/O (a module, the account store);
        the caller awaits it before the next stanza of the same stream (RFC 6120 §10.1).

        Presence that a client session sends (``origin`` is that session) first goes through
        the presence module's outbound processing (RFC 6121 §3, §4), which routes what it
        decides to route through here again without an origin.

        Privacy lists and blocking (XEP-0016 §2.2 rule 4, XEP-0191) come before every other
        rule, for stanzas out of and into local accounts; ``filtered`` means they were applied.
        The check answers True (go on), False (refused, already handled) or an awaitable
        that finishes the decision and the routing."""
        check = self.server.privacy_check
        if check is not None and not filtered:
            verdict = check(stanza, sender, to, origin)
            if verdict is not True:
                return verdict or None
        if stanza.tag == QN_PRESENCE and origin is not None:
            presence = self.server.presence
            if presence is not None and getattr(origin, "jid", None) == sender:
                return presence.outbound(stanza, origin, to)
        if to is None:
            # RFC 6120 §10.3: no 'to' means the sender's own account (or the server).
            return self._to_own_account(stanza, sender, origin)
        if to.domain == self.domain:
            if to.local is None:
                if to.resource is None:
                    return self._to_server(stanza, sender, to, origin)
                return self._reply_error(stanza, StanzaError("service-unavailable"))
            if to.resource is not None:
                target = self.local.get(f"{to.local}@{to.domain}", {}).get(to.resource)
                if target is not None:
                    if stanza.tag == QN_PRESENCE and stanza.get("type") in _ACCOUNT_PRESENCE:
                        # RFC 6121 §3.1.3, §4.3.2: these concern the account, not a resource.
                        return self._presence_to_bare(stanza, sender, to, target.bare)
                    target.send(stanza)
                    return None
                return self._to_full_without_session(stanza, sender, to, origin)
            return self._to_bare(stanza, sender, to, origin)
        route = self.domain_routes.get(to.domain)
        if route is None and self.remote_route is not None:
            route = self.remote_route(to.domain)
        if route is not None:
            route.send(stanza)
            return None
        return self._reply_error(stanza, StanzaError("remote-server-not-found"))

    def deliver_error(self, stanza: Element, error: StanzaError) -> None:
        """Bounce ``stanza`` back to its sender with ``error`` (never an error to an error)."""
        reply = error_reply(stanza, error)
        if reply is None:
            return
        to = reply.get("to")
        if to is None:
            return
        from core.xmpp.jid import parse_jid

        try:
            target = parse_jid(to)
        except ValueError:
            return
        frm = reply.get("from")
        try:
            sender = parse_jid(frm) if frm else JID(None, self.domain, None)
        except ValueError:
            sender = JID(None, self.domain, None)
        self._forward(reply, sender, target)

    def _forward(self, stanza: Element, sender: JID, to: JID) -> None:
        """Route a stanza the server generated (a reply, a bounce) from synchronous code: a
        decision that needs I/O (privacy lists, presence, the account store) runs as a task
        instead of being dropped."""
        pending = self.route(stanza, sender, to)
        if pending is not None:
            self.server.spawn(_finish(pending))

    def _reply_error(self, stanza: Element, error: StanzaError) -> None:
        self.deliver_error(stanza, error)
        return None

    # RFC 6121 §8.5.2: to a local bare JID -----------------------------------------------

    def _to_bare(
        self, stanza: Element, sender: JID, to: JID, origin: Any
    ) -> Awaitable[None] | None:
        bare = f"{to.local}@{to.domain}"
        tag = stanza.tag
        if tag == QN_MESSAGE:
            stype = _message_type(stanza)
            sessions = [
                s for s in self.local.get(bare, {}).values() if s.available and s.priority >= 0
            ]
            if sessions:
                if stype == "error":
                    return None
                if stype == "groupchat":
                    return self._reply_error(stanza, StanzaError("service-unavailable"))
                if stype == "headline":
                    targets = sessions
                else:
                    # §8.5.2.1.1: chat and normal go to the resource(s) of highest priority.
                    top = max(s.priority for s in sessions)
                    targets = [s for s in sessions if s.priority == top]
                for s in targets:
                    s.send(stanza)
                return None
            return self._message_no_resource(stanza, sender, to, bare)
        if tag == QN_IQ:
            return self._iq_to_account(stanza, sender, to, origin)
        if tag == QN_PRESENCE:
            return self._presence_to_bare(stanza, sender, to, bare)
        return None

    def _to_full_without_session(
        self, stanza: Element, sender: JID, to: JID, origin: Any
    ) -> Awaitable[None] | None:
        tag = stanza.tag
        bare = f"{to.local}@{to.domain}"
        if tag == QN_MESSAGE:
            stype = _message_type(stanza)
            # §8.5.3.2.1: normal and chat are handled as if sent to the bare JID.
            if stype in ("normal", "chat"):
                return self._to_bare(stanza, sender, to.bare, origin)
            if stype == "groupchat":
                return self._reply_error(stanza, StanzaError("service-unavailable"))
            return None
        if tag == QN_IQ:
            return self._reply_error(stanza, StanzaError("service-unavailable"))
        if tag == QN_PRESENCE:
            # §8.5.3.2.2: subscription stanzas and probes concern the account (§3, §4.3);
            # other presence to a resource that is not there is ignored.
            if stanza.get("type") in _ACCOUNT_PRESENCE:
                return self._presence_to_bare(stanza, sender, to, bare)
        return None

    def _message_no_resource(
        self, stanza: Element, sender: JID, to: JID, bare: str
    ) -> Awaitable[None] | None:
        stype = _message_type(stanza)
        if stype in ("error", "headline"):
            return None  # §8.5.2.2.1: silently ignored

        async def decide() -> None:
            exists = await self.server.account_exists(to)
            if not exists or stype == "groupchat":
                self.deliver_error(stanza, StanzaError("service-unavailable"))
                return
            try:
                kept = await self.server.store_offline(stanza, to)
            except Exception:
                log.exception("offline storage for %s failed", bare)
                self.deliver_error(stanza, StanzaError("internal-server-error"))
                return
            if not kept:
                # XEP-0160 §2: storage refused (full, or none): the sender is told.
                self.deliver_error(stanza, StanzaError("service-unavailable"))

        return decide()

    def _presence_to_bare(
        self, stanza: Element, sender: JID, to: JID, bare: str
    ) -> Awaitable[None] | None:
        presence = self.server.presence
        if presence is not None:
            return presence.inbound(stanza, sender, to)
        # Without a presence module: directed presence reaches every available resource.
        for s in self.local.get(bare, {}).values():
            if s.available:
                s.send(stanza)
        return None

    def _iq_to_account(
        self, stanza: Element, sender: JID, to: JID, origin: Any
    ) -> Awaitable[None] | None:
        if stanza.get("type") not in ("get", "set"):
            return None  # §8.5.2.1.3: results and errors to a bare JID are ignored

        target = "self" if sender.local == to.local and sender.domain == to.domain else "account"

        async def serve() -> None:
            if target == "account" and not await self.server.account_exists(to):
                # §8.5.1: no such account. A handler that answers strangers the same whether
                # the account exists or not (XEP-0030 §8) is asked anyway.
                payload = payload_of(stanza)
                dispatcher = self.server.dispatcher
                if payload is None or not dispatcher.serves_any_account(
                    stanza.get("type", ""), payload.tag
                ):
                    self.deliver_error(stanza, StanzaError("service-unavailable"))
                    return
            reply = await run_iq(
                self.server.dispatcher,
                stanza,
                sender=sender,
                to=to,
                target=target,
                host=self.server,
                session=origin,
            )
            if reply is not None:
                reply.set("from", str(to))
                pending = self.route(reply, to, sender)
                if pending is not None:
                    await pending

        return serve()

    # The server itself ----------------------------------------------------------------

    def _to_own_account(self, stanza: Element, sender: JID, origin: Any) -> Awaitable[None] | None:
        if stanza.tag == QN_IQ:
            return self._iq_to_account(stanza, sender, sender.bare, origin)
        if stanza.tag == QN_PRESENCE:
            # Broadcast presence of a client session went to the presence module in route();
            # any other presence without 'to' has nowhere to go.
            return None
        # RFC 6120 §10.3.1: a message without 'to' is treated as addressed to the bare JID.
        return self._to_bare(stanza, sender, sender.bare, origin)

    def _to_server(
        self, stanza: Element, sender: JID, to: JID, origin: Any
    ) -> Awaitable[None] | None:
        if stanza.tag == QN_IQ:
            if stanza.get("type") not in ("get", "set"):
                self.server.iq_response(stanza)
                return None

            async def serve() -> None:
                reply = await run_iq(
                    self.server.dispatcher,
                    stanza,
                    sender=sender,
                    to=to,
                    target="server",
                    host=self.server,
                    session=origin,
                )
                if reply is not None:
                    pending = self.route(reply, to, sender)
                    if pending is not None:
                        await pending

            return serve()
        if stanza.tag == QN_MESSAGE:
            return self._reply_error(stanza, StanzaError("service-unavailable"))
        return None

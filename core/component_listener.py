"""The server side of the Jabber Component Protocol (XEP-0114, ``jabber:component:accept``).

One ``ComponentStream`` per connection on the component port (5347 by default):

1. The component opens ``<stream:stream xmlns='jabber:component:accept' to='<domain>'>``.
   The server answers with its own header (``from`` = the domain, a fresh ``id``), then:
   no ``to`` → ``<improper-addressing/>``; a domain that is not configured →
   ``<host-unknown/>``; a wrong content namespace → ``<invalid-namespace/>``.
2. The component sends ``<handshake>`` = hex SHA-1(id + secret); a wrong value is
   ``<not-authorized/>``, as is anything else sent before the handshake. On success the
   server sends an empty ``<handshake/>`` and the link goes live (core.component_routes).
3. Stanzas from the component must have a ``from`` whose domain is exactly the component's
   domain (XEP-0114 §3; subdomains are other components) — ``<invalid-from/>`` otherwise — and
   a ``to`` — ``<improper-addressing/>`` otherwise. COMPAT: a stanza without ``from`` is taken
   as from the domain, as Prosody does, for components written against it.

Instance id: the resource of the header's ``from`` when it is ``<domain>/<instance>`` (the
component client of core.xmpp.component sends it); otherwise a generated one.

Content namespace: the stream is parsed with jabber:component:accept read as jabber:client
(core.xmpp.parser), so that what the component sends is routed as parsed, with no per-stanza
copy; elements the component qualifies with jabber:component:accept itself are moved by
``to_client_ns``. The ``<handshake/>`` is then read as jabber:client too, unless the component
declared jabber:component:accept on it. Only stanzas from reads whose bytes may declare that
namespace (its name, or a character reference) are walked for such elements, and every stanza
once the header binds a prefix to it or the handshake comes in it.

Writes: the stanzas of one read (a groupchat message fans out to every occupant, XEP-0045 §7.4)
reach each client in one write, through ``core.xmpp.xmlstream.HELD``.

Limits are those of client streams: restricted XML and the parser limits of core.xmpp.parser,
with ``component_listener.max_stanza_size``. Writes to a component that does not read are
bounded too: past a backlog of ``overflow_limit`` bytes stanzas bounce with
``resource-constraint`` instead of queueing.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

from lxml import etree
from twisted.internet import protocol
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from core.component_routes import DomainRoute
from core.xmpp.component_link import QN_HANDSHAKE, handshake_valid
from core.xmpp.errors import StanzaError, StreamError
from core.xmpp.jid import JID, JIDError, parse_jid, prep_domain, prep_resource
from core.xmpp.ns import NS_CLIENT, NS_COMPONENT, QN_IQ, QN_MESSAGE, QN_PRESENCE, qn
from core.xmpp.parser import StreamClose, StreamOpen, StreamParser
from core.xmpp.stanza import error_reply, new_id, serialize, to_client_ns
from core.xmpp.stream_header import STREAM_CLOSE, check_header, header_bytes
from core.xmpp.xmlstream import HELD, OrderedXmlStream, peer_address

if TYPE_CHECKING:
    from core.server import CoreServer

log = logging.getLogger(__name__)
Element = etree._Element

# XEP-0114 §3: <handshake/> is in the stream's content namespace, which the parser reads as
# jabber:client; a component may still name jabber:component:accept on it.
_HANDSHAKE = frozenset({QN_HANDSHAKE, qn(NS_CLIENT, "handshake")})
# jabber:component:accept as the content namespace (XEP-0114 §3), read as jabber:client.
CONTENT_NS_MAP = {NS_COMPONENT: NS_CLIENT}
HEADER, HANDSHAKE, LINKED, CLOSED = range(4)
# Stanzas parsed but waiting for an earlier one of the same link; past this, stop reading.
BACKLOG_PAUSE = 256
_STANZA_TAGS = frozenset({QN_MESSAGE, QN_PRESENCE, QN_IQ})
# Normalised senders kept per link: a MUC service sends from the same occupant JIDs over and
# over. Past this many the cache starts afresh (parse_jid has its own cache behind it).
SENDER_CACHE = 4096
# An element can be in jabber:component:accept (other than through the header's declaration,
# which the parser rewrites) only where the bytes name that namespace in a declaration,
# literally or through character references (RFC 6120 §11.1 allows no other entities).
_COMPONENT_NS_BYTES = NS_COMPONENT.encode()
_CHAR_REF = b"&#"
_PROBE = len(_COMPONENT_NS_BYTES) - 1


@implementer(IPushProducer)
class ComponentStream(OrderedXmlStream):
    """One component connection: header, handshake, then the link (core.component_routes.Link).

    Registered as the transport's producer so that Twisted says when the component stops
    reading; what is written while it does not read is counted and bounded."""

    logger = log

    def __init__(self, server: CoreServer) -> None:
        self.server = server
        self.routes = server.components
        cfg = server.config
        self.parser = StreamParser(
            max_stanza_bytes=cfg.component_listener.max_stanza_size, content_ns_map=CONTENT_NS_MAP
        )
        self.overflow_limit = max(4 * 1024 * 1024, 4 * cfg.component_listener.max_stanza_size)
        self.stage = HEADER
        self.stream_id = ""
        self.domain = ""
        self.instance = ""
        self.route: DomainRoute | None = None
        self.peer = "?"
        self.close_reason = "connection lost"
        self._header_sent = False
        self._closing = False
        self._timer: Any = None
        self._backlog: deque[Any] = deque()
        self._busy = False
        self._congested = False
        self._unread = 0  # bytes written since the component stopped reading
        # 'from' as sent -> the sender it names (checked to be within the domain), and as
        # it is written on the stanza.
        self._senders: dict[str | None, tuple[JID, str]] = {}
        # Whether stanzas may hold elements the component qualified with
        # jabber:component:accept (see dataReceived): until a read without such a
        # declaration completes a stanza; for good when the header or handshake uses it.
        self._ns_watch = True
        self._ns_always = False
        self._ns_now = False  # the stanzas being handled come from such a read
        self._tail = b""  # the end of the previous read, for a declaration cut in two

    # Connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = peer_address(self.transport)
        log.debug("component connection from %s", self.peer)
        try:
            self.transport.setTcpKeepAlive(1)
        except Exception:  # not every transport is TCP (tests, in-memory)
            pass
        self.transport.registerProducer(self, True)
        timeout = self.server.config.c2s.negotiation_timeout
        self._timer = self.server.reactor.callLater(timeout, self._negotiation_expired)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        was_linked = self.stage == LINKED
        self.stage = CLOSED
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._backlog.clear()
        if was_linked:
            self.routes.link_down(self, self.close_reason)
        else:
            log.info("component connection from %s closed: %s", self.peer, self.close_reason)

    @property
    def closed(self) -> bool:
        """Whether the connection is gone."""
        return self.stage == CLOSED

    def _negotiation_expired(self) -> None:
        if self.stage in (HEADER, HANDSHAKE):
            self.close_with(StreamError("connection-timeout", "no handshake in time"))

    # IPushProducer: the transport tells us when the component stops reading.

    def pauseProducing(self) -> None:
        self._congested = True
        self._unread = 0

    def resumeProducing(self) -> None:
        if self._unread > self.overflow_limit:
            log.info("component %s instance %s reads again", self.domain, self.instance)
        self._congested = False
        self._unread = 0

    def stopProducing(self) -> None:
        self._congested = True

    # Input -----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        marked = self._names_component_ns(data)
        events = self._events(data)
        if not events:
            return
        watch = self._ns_watch or self._ns_always
        self._ns_now = watch
        # The stanzas of one read go out to their clients with one write each (WriteHold).
        HELD.hold()
        try:
            for ev in events:
                if self._busy:
                    if watch and isinstance(ev, etree._Element):
                        ev = _client(ev)
                    self._backlog.append(ev)
                    if len(self._backlog) > BACKLOG_PAUSE:
                        self.transport.pauseProducing()
                    continue
                self._handle_event(ev)
                if self._closing or self.stage == CLOSED:
                    return
        finally:
            self._ns_now = False
            HELD.release()
        if watch and not marked and self.stage == LINKED:
            # A stanza ended in a read that declares no jabber:component:accept: those that
            # follow it are parsed from later reads only.
            if any(isinstance(ev, etree._Element) for ev in events):
                self._ns_watch = False

    def _names_component_ns(self, data: bytes) -> bool:
        """Whether ``data`` (with the end of the previous read) may declare
        jabber:component:accept on an element; marks the stream to be watched if so."""
        tail = self._tail
        self._tail = data[-_PROBE:] if len(data) >= _PROBE else (tail + data)[-_PROBE:]
        joint = tail + data[:_PROBE]
        if _COMPONENT_NS_BYTES in data or _COMPONENT_NS_BYTES in joint or _CHAR_REF in joint:
            self._ns_watch = True
            return True
        # bytes.find of one byte is a memchr; of two bytes it is many times slower.
        amp = data.find(b"&")
        while amp >= 0:
            if data[amp + 1 : amp + 2] == b"#":
                self._ns_watch = True
                return True
            amp = data.find(b"&", amp + 1)
        return False

    def _drain(self) -> None:
        # Stanzas that waited for an earlier one: their writes are held the same way.
        HELD.hold()
        try:
            super()._drain()
        finally:
            HELD.release()

    def _handle_event(self, ev: Any) -> None:
        try:
            if self.stage == LINKED and isinstance(ev, etree._Element):
                pending = self._stanza(ev)
                if pending is not None:
                    self._run_async(pending, ev)
            elif isinstance(ev, StreamOpen):
                self._stream_open(ev)
            elif isinstance(ev, StreamClose):
                self.close_reason = "closed by the component"
                self.close()
            elif self.stage == HANDSHAKE:
                self._handshake(ev)
            else:
                raise StreamError("not-well-formed", "element before the stream header")
        except StreamError as e:
            self.close_with(e)
        except Exception:
            self._unexpected(ev)

    def _unexpected(self, ev: Any) -> None:
        log.exception("component %s: unexpected failure", self.domain or self.peer)
        if isinstance(ev, etree._Element) and self.stage == LINKED:
            reply = error_reply(_client(ev), StanzaError("internal-server-error"))
            if reply is not None:
                reply.attrib.pop("from", None)
                self.deliver(reply)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.server.spawn(coro)

    # Stream header and handshake (XEP-0114 §3) -----------------------------------------

    def _stream_open(self, ev: StreamOpen) -> None:
        if self.stage != HEADER:
            raise StreamError("not-well-formed", "a second stream header")
        to = ev.attrs.get("to")
        domain = None
        if to:
            try:
                domain = prep_domain(to)
            except JIDError:
                domain = None
        route = self.routes.route(domain) if domain else None
        # RFC 6120 §4.9.1.2: a header is sent even when the error is in the peer's header.
        self._send_header(route.domain if route is not None else None)
        # XEP-0114 §3: a component's header carries no version; only namespaces are checked.
        check_header(ev, NS_COMPONENT, prefix_required=False, version_required=False)
        if not to:
            raise StreamError("improper-addressing", "name the component domain in 'to'")
        if route is None:
            raise StreamError("host-unknown", "no component is configured for this domain")
        self.route = route
        self.domain = route.domain
        self.instance = self._instance_of(ev.attrs.get("from"))
        self.stage = HANDSHAKE
        if any(p is not None and ns == NS_COMPONENT for p, ns in ev.nsmap.items()):
            # A prefix bound to jabber:component:accept in the header reaches every stanza.
            self._ns_always = True

    def _instance_of(self, frm: str | None) -> str:
        if frm:
            try:
                jid = parse_jid(frm)
            except JIDError:
                jid = None
            if jid is not None and jid.domain == self.domain and jid.local is None and jid.resource:
                return jid.resource
        return prep_resource(new_id())

    def _send_header(self, domain: str | None) -> None:
        self._header_sent = True
        self.stream_id = new_id()
        self.transport.write(
            header_bytes(
                NS_COMPONENT, frm=domain, stream_id=self.stream_id, version=None, lang=None
            )
        )

    def _handshake(self, el: Element) -> None:
        if el.tag not in _HANDSHAKE:
            raise StreamError("not-authorized", "send the handshake first")
        if el.tag == QN_HANDSHAKE:
            # The component names jabber:component:accept itself, or the header's declaration
            # was not rewritten (core.xmpp.parser): its stanzas may come that way too.
            self._ns_always = True
        route = self.route
        assert route is not None
        if not handshake_valid(self.stream_id, route.secret, el.text or ""):
            # Never log the secret or the digest.
            log.warning("component %s: wrong handshake from %s", self.domain, self.peer)
            raise StreamError("not-authorized", "wrong handshake")
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.stage = LINKED
        self.transport.write(b"<handshake/>")
        self.routes.link_up(self)

    # Stanzas from the component --------------------------------------------------------

    def _stanza(self, el: Element) -> Awaitable[Any] | None:
        if self._ns_now:
            el = _client(el)
        tag = el.tag
        if tag not in _STANZA_TAGS:
            raise StreamError("unsupported-stanza-type", "only message, presence and iq")
        frm = el.get("from")
        known = self._senders.get(frm)
        if known is None:
            known = self._sender(frm)
        sender, norm = known
        if frm != norm:
            el.set("from", norm)
        to_attr = el.get("to")
        if to_attr is None:
            raise StreamError("improper-addressing", "stanzas from a component need a 'to'")
        try:
            to = parse_jid(to_attr)
        except JIDError:
            self._refuse(el, StanzaError("jid-malformed"))
            return None
        if tag == QN_IQ:
            itype = el.get("type")
            if itype not in ("get", "set", "result", "error") or el.get("id") is None:
                self._refuse(el, StanzaError("bad-request", "an IQ needs an id and a valid type"))
                return None
            if itype in ("get", "set") and self.route is not None:
                self.route.remember_iq(el, self.instance)
        return self.server.router.route(el, sender, to, self)

    def _sender(self, frm: str | None) -> tuple[JID, str]:
        """The sender a 'from' of the component names (XEP-0114 §3), remembered."""
        if frm is None:
            # COMPAT: no 'from' is the component's domain, as Prosody takes it.
            sender = JID(None, self.domain, None)
        else:
            try:
                sender = parse_jid(frm)
            except JIDError:
                raise StreamError("invalid-from", "the 'from' address is malformed") from None
            if sender.domain != self.domain:
                raise StreamError("invalid-from", f"'from' must be at {self.domain}")
        if len(self._senders) >= SENDER_CACHE:
            self._senders.clear()
        known = self._senders[frm] = (sender, str(sender))
        return known

    def _refuse(self, el: Element, error: StanzaError) -> None:
        reply = error_reply(el, error)
        if reply is not None:
            reply.attrib.pop("from", None)  # from the server itself
            self.deliver(reply)

    # Output (core.component_routes.Link) -----------------------------------------------

    def deliver(self, stanza: Element) -> None:
        """Send a stanza to the component, or bounce it when the component stopped reading
        for longer than the overflow limit allows."""
        if self.stage != LINKED or self._closing:
            self.routes.bounce(stanza, StanzaError("remote-server-timeout"))
            return
        data = serialize(stanza, NS_COMPONENT)
        if self._congested:
            if self._unread + len(data) > self.overflow_limit:
                if self._unread <= self.overflow_limit:
                    log.warning(
                        "component %s instance %s does not read: refusing stanzas",
                        self.domain,
                        self.instance,
                    )
                    self._unread = self.overflow_limit + 1
                self.routes.bounce(stanza, StanzaError("resource-constraint"))
                return
            self._unread += len(data)
        self.transport.write(data)

    def log_label(self) -> str:
        return f"component {self.domain or '?'} from {self.peer}:"

    def _send_error_header(self) -> None:
        self._send_header(None)

    def close(self) -> None:
        """Close the stream and the connection, and take the link off the routes."""
        if self._closing:
            return
        self._closing = True
        was_linked = self.stage == LINKED
        self.transport.write(STREAM_CLOSE)
        # A registered producer keeps a paused transport from ever closing (Twisted's
        # FileDescriptor.loseConnection waits for it), so let go of it first.
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        self.transport.loseConnection()
        if was_linked:
            # Off the routes at once: stanzas from now on get the down answer, not a
            # closing transport.
            self.routes.link_down(self, self.close_reason)


def _client(el: Element) -> Element:
    """The stanza in the client namespace used inside the core: as parsed, unless the component
    named jabber:component:accept on some element itself. COMPAT: stanzas the component
    qualified with jabber:client (slixmpp's ``use_jc_ns``) pass as they are."""
    return to_client_ns(el, NS_COMPONENT)


class ComponentFactory(protocol.Factory):
    """Builds a ComponentStream per connection on the component port."""

    noisy = False

    def __init__(self, server: CoreServer) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> ComponentStream:
        return ComponentStream(self.server)

"""Client-to-server streams (RFC 6120 §4-§7; XEP-0368 direct TLS).

One ``C2SStream`` per TCP connection: stream header checks, STARTTLS, SASL, stream restart,
resource binding, then stanzas handed to the router. The negotiation path is the same for
port 5222 (STARTTLS) and port 5223 (TLS from the first byte). The SASL exchange itself is
core.c2s_sasl.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

from lxml import etree
from twisted.internet import protocol, tcp
from twisted.python.failure import Failure

from core.c2s_sasl import SaslNegotiation
from core.xmpp.errors import StanzaError, StreamError
from core.xmpp.jid import JID, JIDError, parse_jid, prep_resource
from core.xmpp.ns import (
    NS_BIND,
    NS_CLIENT,
    NS_SESSION,
    NS_STREAMS,
    NS_TLS,
    QN_BIND,
    QN_BIND_RESOURCE,
    QN_IQ,
    QN_MESSAGE,
    QN_PRESENCE,
    QN_SASL_ABORT,
    QN_SASL_AUTH,
    QN_SASL_RESPONSE,
    QN_SESSION,
    QN_STARTTLS,
    QN_XML_LANG,
    default_ns,
    qn,
)
from core.xmpp.parser import StreamClose, StreamOpen, StreamParser
from core.xmpp.sasl_xml import failure as sasl_failure
from core.xmpp.stanza import (
    PRESENCE_TYPES,
    error_reply,
    iq_result,
    new_id,
    payload_of,
    serialize,
)
from core.xmpp.stream_header import STREAM_CLOSE, check_header, header_bytes
from core.xmpp.xmlstream import HELD, OrderedXmlStream, peer_address

if TYPE_CHECKING:
    from core.server import CoreServer

log = logging.getLogger(__name__)
Element = etree._Element

# RFC 6121 §4.7.1: no 'type' (available) or one of these.
_PRESENCE_TYPES = frozenset({None, *PRESENCE_TYPES})
# Seconds a lost connection's pending stanzas may take before its session is ended anyway.
LOST_GRACE = 10.0
# Longest wait for the client to close its side after we closed the stream (RFC 6120 §4.4).
CLOSE_TIMEOUT = 5.0

# Negotiation stages of a client stream.
HEADER, TLS_NEEDED, AUTH, AUTHED_HEADER, BIND, BOUND, CLOSED = range(7)


class C2SStream(OrderedXmlStream):
    """One client connection and, once bound, the session it carries."""

    logger = log

    def __init__(self, server: CoreServer, *, direct_tls: bool) -> None:
        self.server = server
        cfg = server.config
        self.direct_tls = direct_tls
        self.tls_active = direct_tls
        self.parser = StreamParser(max_stanza_bytes=cfg.c2s.max_stanza_size)
        self.stage = HEADER
        self.stream_id = ""
        self._header_sent = False
        self.peer = "?"
        self.lang = "en"
        self.sasl = SaslNegotiation(self)
        self.username: str | None = None  # the account, once authenticated
        # The session, once bound (router.Session protocol).
        self.jid: JID | None = None
        self.full = ""
        self.bare = ""
        self.priority = 0
        self.available = False
        self.presence: Element | None = None
        self.interested = False  # requested the roster (RFC 6121 §2.1.6)
        self.data: dict[str, Any] = {}  # per-session state kept by modules
        # Stanzas wait here while an earlier one of this stream is still being processed, so
        # that the stream's stanzas take effect in order (RFC 6120 §10.1).
        self._backlog: deque[Any] = deque()
        self._busy = False
        self._active = True
        self._timers: list[Any] = []
        self._closing = False
        self._lost = False  # the transport is gone; the backlog may still be processed
        self._restarts = 0  # parser restarts, so a read's leftovers from before one are dropped
        self.close_reason = "connection lost"

    # Connection ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = peer_address(self.transport)
        log.info("c2s %s opened%s", self.peer, " (direct TLS)" if self.direct_tls else "")
        self.server.c2s_streams.add(self)
        # Stanzas are written as they are ready (write_now): Nagle's algorithm would hold a
        # second small write until the first is acknowledged, which a client's delayed ACK
        # can stretch to 40 ms (seen as login stalls in bench/). Latency wins over packets.
        set_no_delay(self.transport)
        cfg = self.server.config.c2s
        clock = self.server.reactor
        self._timers.append(clock.callLater(cfg.negotiation_timeout, self._negotiation_expired))
        self._schedule_idle_check()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = True
        self._cancel_timers()
        if self._busy:
            # Stanzas that arrived before the connection went away still take effect, in
            # order (RFC 6120 §10.1): a client may send a message and </stream:stream> and
            # hang up at once. _drain finishes the clean-up once they are processed, or the
            # timer does if that processing hangs.
            self._timers.append(self.server.reactor.callLater(LOST_GRACE, self._finish))
            return
        self._finish()

    def _cancel_timers(self) -> None:
        for t in self._timers:
            if t.active():
                t.cancel()
        self._timers.clear()

    def _finish(self) -> None:
        """Forget the connection and end its session, once and after the last stanza."""
        if self.stage == CLOSED:
            return
        self.stage = CLOSED
        self._cancel_timers()
        self.server.c2s_streams.discard(self)
        log.info(
            "c2s %s closed%s: %s",
            self.peer,
            f" ({self.full})" if self.full else "",
            self.close_reason,
        )
        if self.jid is not None:
            self.server.spawn(self.server.session_ended(self))

    def dataReceived(self, data: bytes) -> None:
        if self.stage == CLOSED or self._closing:
            return
        self._active = True
        try:
            events = self.parser.feed(data)
        except StreamError as e:
            self.close_with(e)
            return
        restarts = self._restarts
        for ev in events:
            if self._busy:
                self._backlog.append(ev)
                if len(self._backlog) > 64:
                    self.transport.pauseProducing()
                continue
            self._handle_event(ev)
            if self._closing:
                return
            if self._restarts != restarts:
                # RFC 6120 §5.4.3.3: what followed <starttls/> in the same read was sent in
                # the clear before TLS; it must not be taken as part of the protected stream.
                return

    def _handle_event(self, ev: Any) -> None:
        try:
            if isinstance(ev, StreamOpen):
                self._stream_open(ev)
            elif isinstance(ev, StreamClose):
                self.close_reason = "closed by client"
                self.close()
            else:
                pending = self._element(ev)
                if pending is not None:
                    self._run_async(pending, ev)
        except StreamError as e:
            self.close_with(e)
        except Exception:
            self._unexpected(ev)

    def _unexpected(self, ev: Any) -> None:
        """Log a failure of our own and answer what met it: a stanza gets an error and the
        stream stays; a negotiation step that cannot go on ends the stream."""
        log.exception("c2s %s: unexpected failure", self.peer)
        if self._closing or self.stage == CLOSED:
            return
        is_element = isinstance(ev, etree._Element)
        if is_element and self.stage == AUTH and ev.tag in (QN_SASL_AUTH, QN_SASL_RESPONSE):
            # RFC 6120 §6.5.11: authentication failed through a problem on our side.
            self.sasl.internal_failure()
        elif is_element and self.jid is not None:
            self._refuse(ev, StanzaError("internal-server-error"))
        else:
            # A header or negotiation element left half-answered: §4.9.3.8.
            self.close_with(StreamError("internal-server-error"))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.server.spawn(coro)

    def _drained(self) -> None:
        if self._lost:
            # The connection went first: the session ends after its last stanza.
            if not self._busy:
                self._finish()
            return
        super()._drained()

    # Output ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the connection is gone and the stream forgotten."""
        return self.stage == CLOSED

    @property
    def peer_host(self) -> str:
        """The client's address without the port: the unit of the per-address auth limit."""
        return self.peer.rsplit(":", 1)[0]

    def write(self, data: bytes) -> None:
        if self.stage != CLOSED:
            HELD.flush(self.transport)  # stanzas held for this client go first
            write_now(self.transport, data)

    def send(self, stanza: Element) -> None:
        """Send a stanza to the client (router.Session). While a component's read is being
        processed the bytes are held, so that all it carries for this client leave in one
        write (``core.xmpp.xmlstream.WriteHold``)."""
        if self.stage == BOUND and not self._closing:
            HELD.write(self.transport, serialize(stanza), write_now)

    def close_with(self, error: StreamError) -> None:
        HELD.flush(self.transport)  # what was sent before the error goes before it
        super().close_with(error)

    def _refuse(self, stanza: Element, error: StanzaError, *, from_server: bool = False) -> None:
        """Answer a stanza of the client with ``error``, unless it is an error or a result
        itself (RFC 6120 §8.3.1). ``from_server``: the answer comes from the server, not from
        the stanza's 'to' (which may be the malformed address that is refused)."""
        reply = error_reply(stanza, error)
        if reply is not None:
            if from_server:
                reply.attrib.pop("from", None)
            self.send(reply)

    def log_label(self) -> str:
        return f"c2s {self.peer}"

    def _send_error_header(self) -> None:
        self._send_header(None)
        HELD.flush(self.transport)  # the error that follows is written directly

    def close(self) -> None:
        """Close the stream (RFC 6120 §4.4); the client gets a while to close its side."""
        if self._closing:
            return
        self._closing = True
        if self._lost:
            return  # the connection is already gone: nothing to send, nothing to close
        HELD.flush(self.transport)
        self.transport.write(STREAM_CLOSE)
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if self.tls_active or half_close is None:
            # TLS sends close_notify and keeps reading until the client answers it.
            self.transport.loseConnection()
        else:
            # Closing a TCP socket with unread input resets the connection, and the reset
            # may destroy the stream error before the client reads it (a client in the
            # middle of a large stanza). Finish our direction only; what still arrives is
            # read and dropped until the client closes its side (RFC 6120 §4.4).
            half_close()
        # §4.4: wait a while for the client to close its side, then drop the connection. The
        # client gets as long for this as it had to open the stream.
        grace = min(CLOSE_TIMEOUT, self.server.config.c2s.negotiation_timeout)
        self._timers.append(self.server.reactor.callLater(grace, self._abort))

    def _abort(self) -> None:
        if self.stage != CLOSED and not self._lost:
            log.info("c2s %s did not close its side of the stream in time", self.peer)
            self.transport.abortConnection()

    # Timers --------------------------------------------------------------------------

    def _negotiation_expired(self) -> None:
        if self.stage != BOUND and self.stage != CLOSED:
            self.close_with(StreamError("connection-timeout", "stream negotiation took too long"))

    def _schedule_idle_check(self) -> None:
        interval = self.server.config.c2s.idle_timeout
        if interval <= 0:
            return
        self._timers = [t for t in self._timers if t.active()]
        self._timers.append(self.server.reactor.callLater(interval, self._idle_check))

    def _idle_check(self) -> None:
        # Whitespace keepalives count as activity (RFC 6120 §4.6.1).
        if self._active:
            self._active = False
            self._schedule_idle_check()
        else:
            self.close_with(StreamError("connection-timeout", "no traffic"))

    # Stream header -------------------------------------------------------------------

    def _send_header(self, to: str | None) -> None:
        self._header_sent = True
        self.stream_id = new_id()
        HELD.write(
            self.transport,
            header_bytes(NS_CLIENT, frm=self.server.domain, to=to, stream_id=self.stream_id),
            write_now,
        )

    def _stream_open(self, ev: StreamOpen) -> None:
        if self.stage not in (HEADER, TLS_NEEDED, AUTH, AUTHED_HEADER):
            raise StreamError("not-well-formed", "unexpected stream header")
        # Our header and the features leave in one write (one send() instead of two); a
        # stream error raised in between still follows the header.
        HELD.hold()
        try:
            self._answer_header(ev)
        finally:
            HELD.release()

    def _answer_header(self, ev: StreamOpen) -> None:
        frm = ev.attrs.get("from")
        self._send_header(frm if frm and "'" not in frm else None)
        # RFC 6120 §4.8: the stream namespace, its prefix and the content namespace; §4.7.5:
        # version 1.x (a missing version means 0.9, which we do not speak).
        check_header(ev, NS_CLIENT)
        to = ev.attrs.get("to")
        try:
            host = parse_jid(to).domain if to else None
        except JIDError:
            host = None
        if host != self.server.domain:
            raise StreamError("host-unknown", f"this server serves {self.server.domain}")
        self.lang = ev.attrs.get(QN_XML_LANG, "en")
        HELD.write(self.transport, self._features(), write_now)

    def _features(self) -> bytes:
        cfg = self.server.config.c2s
        feats = etree.Element(qn(NS_STREAMS, "features"), nsmap={"stream": NS_STREAMS})
        if self.stage in (HEADER, TLS_NEEDED) and not self.tls_active:
            st = etree.SubElement(feats, QN_STARTTLS, nsmap=default_ns(NS_TLS))
            if cfg.require_encryption:
                etree.SubElement(st, qn(NS_TLS, "required"))
                self.stage = TLS_NEEDED
                return etree.tostring(feats)
            self.stage = AUTH
        if self.stage in (HEADER, AUTH, TLS_NEEDED):
            self.stage = AUTH
            self.sasl.offer(feats)
        elif self.stage == AUTHED_HEADER:
            self.stage = BIND
            etree.SubElement(feats, QN_BIND, nsmap=default_ns(NS_BIND))
            sess = etree.SubElement(feats, QN_SESSION, nsmap=default_ns(NS_SESSION))
            # RFC 6121 errata / draft-cridland-xmpp-session: session establishment is a no-op.
            etree.SubElement(sess, qn(NS_SESSION, "optional"))
            for el in self.server.dispatcher.stream_features(self):
                feats.append(el)
        return etree.tostring(feats)

    # Elements by stage ---------------------------------------------------------------

    def _element(self, el: Element) -> Awaitable[Any] | None:
        stage = self.stage
        if stage == BOUND:
            return self._stanza(el)
        if stage == TLS_NEEDED:
            if el.tag == QN_STARTTLS:
                return self._starttls()
            if el.tag == QN_SASL_AUTH:
                self.transport.write(sasl_failure("encryption-required", "use STARTTLS first"))
                return None
            raise StreamError("not-authorized", "negotiate TLS first")
        if stage == AUTH:
            if el.tag == QN_STARTTLS and not self.tls_active:
                return self._starttls()
            if el.tag == QN_SASL_AUTH:
                return self.sasl.auth(el)
            if el.tag == QN_SASL_RESPONSE:
                return self.sasl.response(el)
            if el.tag == QN_SASL_ABORT:
                self.sasl.abort()
                return None
            raise StreamError("not-authorized", "authenticate first")
        if stage == BIND:
            if el.tag == QN_IQ and el.get("type") == "set":
                payload = payload_of(el)
                if payload is not None and payload.tag == QN_BIND:
                    return self._bind(el, payload)
            raise StreamError("not-authorized", "bind a resource first")
        raise StreamError("not-well-formed", "element before the stream header")

    # STARTTLS (RFC 6120 §5) and stream restarts ----------------------------------------

    def _starttls(self) -> None:
        self.transport.write(
            etree.tostring(etree.Element(qn(NS_TLS, "proceed"), nsmap=default_ns(NS_TLS)))
        )
        self.transport.startTLS(self.server.tls.options())
        self.tls_active = True
        self._restart()
        self.stage = HEADER
        log.info("c2s %s TLS started", self.peer)
        return None

    def _restart(self) -> None:
        """Expect a new stream header from the client (RFC 6120 §5.4.3.3, §6.4.6)."""
        self.parser.reset()
        self._restarts += 1
        self._header_sent = False

    def authenticated(self, username: str, success: bytes, mechanism: str) -> None:
        """SASL succeeded (core.c2s_sasl): send ``success`` (the <success/> element) and wait
        for the restarted stream (RFC 6120 §6.4.6)."""
        self.username = username
        self.write(success)
        self._restart()
        # §6.4.6: the client waits for <success/> before it restarts; anything it sent after
        # its last SASL element belongs to the stream that has just been replaced.
        self._backlog.clear()
        self.stage = AUTHED_HEADER
        log.info(
            "c2s %s authenticated as %s@%s (%s)",
            self.peer,
            username,
            self.server.domain,
            mechanism,
        )

    # Resource binding (RFC 6120 §7) ----------------------------------------------------

    async def _bind(self, iq: Element, payload: Element) -> None:
        res_el = payload.find(QN_BIND_RESOURCE)
        requested = (res_el.text or "") if res_el is not None else ""
        try:
            resource = prep_resource(requested) if requested else ""
        except JIDError:
            self.transport.write(
                serialize(error_reply(iq, StanzaError("bad-request", "invalid resource")))
            )
            return
        assert self.username is not None
        bare = JID(self.username, self.server.domain, None)
        existing = self.server.router.resources(str(bare))
        if not resource:
            resource = new_id()
        # §7.6.2.1: the limit holds for generated resources too; rebinding one in use
        # replaces its session (§7.7.2.2) and adds none.
        if resource not in existing and len(existing) >= self.server.config.c2s.max_resources:
            self.transport.write(
                serialize(error_reply(iq, StanzaError("resource-constraint", "too many resources")))
            )
            return
        self.jid = JID(bare.local, bare.domain, resource)
        self.full = str(self.jid)
        self.bare = str(bare)
        self.stage = BOUND
        for t in self._timers:
            if t.active() and t.func == self._negotiation_expired:
                t.cancel()
        old = self.server.router.bind(self)
        if old is not None:
            # RFC 6120 §7.7.2.2: the new session overrides the old one.
            old.close_with(StreamError("conflict", "replaced by a new connection"))
        result = etree.Element(QN_BIND, nsmap=default_ns(NS_BIND))
        etree.SubElement(result, qn(NS_BIND, "jid")).text = self.full
        reply = iq_result(iq, result)
        reply.attrib.pop("from", None)
        reply.attrib.pop("to", None)
        write_now(self.transport, serialize(reply))
        log.info("c2s %s bound %s", self.peer, self.full)
        await self.server.session_started(self)

    # Stanzas of a bound session --------------------------------------------------------

    def _stanza(self, el: Element) -> Awaitable[Any] | None:
        tag = el.tag
        if tag not in (QN_MESSAGE, QN_PRESENCE, QN_IQ):
            raise StreamError(
                "unsupported-stanza-type", "only message, presence and iq are stanzas"
            )
        jid = self.jid
        assert jid is not None
        frm = el.get("from")
        if frm is not None and frm != self.full:
            # RFC 6120 §8.1.2.1: a 'from' must be the session's full or bare JID.
            try:
                given = parse_jid(frm)
            except JIDError:
                given = None
            if given != jid and given != jid.bare:
                raise StreamError("invalid-from", "the 'from' address is not yours")
        el.set("from", self.full)
        to_attr = el.get("to")
        to: JID | None = None
        if to_attr is not None:
            try:
                to = parse_jid(to_attr)
            except JIDError:
                self._refuse(el, StanzaError("jid-malformed"), from_server=True)
                return None
        if tag == QN_IQ:
            itype = el.get("type")
            if itype not in ("get", "set", "result", "error") or el.get("id") is None:
                self._refuse(el, StanzaError("bad-request", "an IQ needs an id and a valid type"))
                return None
            if itype in ("get", "set"):
                payload = payload_of(el)
                if payload is not None and payload.tag == QN_SESSION:
                    # RFC 6121 (3921 §3) session establishment: accepted as a no-op.
                    self.send(iq_result(el))
                    return None
        elif tag == QN_PRESENCE and el.get("type") not in _PRESENCE_TYPES:
            # RFC 6121 §4.7.1 defines the presence types; another is not understood.
            self._refuse(el, StanzaError("bad-request", "unknown presence type"), from_server=True)
            return None
        if tag == QN_PRESENCE and to is None and self.server.presence is None:
            self._own_presence(el)
        return self.server.router.route(el, jid, to, self)

    def _own_presence(self, el: Element) -> None:
        """Track availability and priority from broadcast presence (RFC 6121 §4.7.2.3) when
        no presence module does (modules/presence.py tracks them, and checks them, itself)."""
        ptype = el.get("type")
        if ptype is None:
            prio = el.find(qn(NS_CLIENT, "priority"))
            try:
                value = int(prio.text) if prio is not None and prio.text else 0
            except ValueError:
                value = 0
            self.priority = max(-128, min(127, value))
            self.available = True
            self.presence = el
        elif ptype == "unavailable":
            self.available = False
            self.presence = None


def set_no_delay(transport: Any) -> None:
    """TCP_NODELAY on a TCP connection (through a TLS wrapper too); others are left alone."""
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        try:
            setter(True)
        except OSError:
            pass  # not a TCP socket after all (a UNIX socket), or already closed


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data``, straight to the socket when nothing is queued before it.

    Twisted queues each write until the reactor reports the socket writable: two epoll_ctl
    calls and a reactor round per stanza, a quarter of the CPU a delivered message costs
    (bench/README.md). With an empty queue the bytes can go out at once without reordering
    anything (Prosody calls these opportunistic writes). TLS streams, and whatever the socket
    does not take now, go through ``transport.write`` as before.

    Only a plain TCP connection qualifies, checked by its class: a TLS wrapper (direct TLS)
    forwards attribute reads to the TCP transport beneath it, so duck typing would send
    cleartext past the TLS layer.
    """
    if (
        isinstance(transport, tcp.Connection)
        and transport.TLS is False
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and len(transport.dataBuffer) == transport.offset
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # Full socket buffer, or a broken connection that the reactor will report.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class C2SFactory(protocol.Factory):
    """Builds a C2SStream per connection on port 5222 (STARTTLS) or 5223 (direct TLS)."""

    noisy = False

    def __init__(self, server: CoreServer, *, direct_tls: bool = False) -> None:
        self.server = server
        self.direct_tls = direct_tls

    def buildProtocol(self, addr: Any) -> C2SStream:
        return C2SStream(self.server, direct_tls=self.direct_tls)

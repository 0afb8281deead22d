"""Client-to-server streams (RFC 6120 §4-§7; XEP-0368 direct TLS).

One ``C2SStream`` per TCP connection: stream header checks, STARTTLS, SASL, stream restart,
resource binding, then stanzas handed to the router. The negotiation path is the same for
port 5222 (STARTTLS) and port 5223 (TLS from the first byte).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from lxml import etree
from twisted.internet import protocol
from twisted.python.failure import Failure

from core.xmpp import sasl
from core.xmpp.errors import StanzaError, StreamError
from core.xmpp.jid import JID, JIDError, parse_jid, prep_local, prep_resource
from core.xmpp.ns import (
    NS_BIND,
    NS_CLIENT,
    NS_SASL,
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
    QN_STREAM,
    QN_XML_LANG,
    qn,
)
from core.xmpp.parser import StreamClose, StreamOpen, StreamParser
from core.xmpp.stanza import (
    PRESENCE_TYPES,
    error_reply,
    iq_result,
    new_id,
    payload_of,
    serialize,
)
from core.xmpp.tls import channel_bindings

if TYPE_CHECKING:
    from core.server import CoreServer

log = logging.getLogger(__name__)
Element = etree._Element

NS_SASL_CB = "urn:xmpp:sasl-cb:0"
STREAM_CLOSE = b"</stream:stream>"
# RFC 6121 §4.7.1: no 'type' (available) or one of these.
_PRESENCE_TYPES = frozenset({None, *PRESENCE_TYPES})
# Seconds a lost connection's pending stanzas may take before its session is ended anyway.
LOST_GRACE = 10.0
# Longest wait for the client to close its side after we closed the stream (RFC 6120 §4.4).
CLOSE_TIMEOUT = 5.0

# Negotiation stages of a client stream.
HEADER, TLS_NEEDED, AUTH, AUTHED_HEADER, BIND, BOUND, CLOSED = range(7)


def _sasl_element(
    local: str, data: bytes | None = None, *, empty_as_equals: bool = True
) -> Element:
    el = etree.Element(qn(NS_SASL, local), nsmap={None: NS_SASL})
    if data is not None:
        # RFC 6120 §6.4.2: zero-length data is sent as a single '='.
        el.text = base64.b64encode(data).decode() if data else ("=" if empty_as_equals else None)
    return el


def _sasl_failure(condition: str, text: str | None = None) -> bytes:
    el = etree.Element(qn(NS_SASL, "failure"), nsmap={None: NS_SASL})
    etree.SubElement(el, qn(NS_SASL, condition))
    if text:
        t = etree.SubElement(el, qn(NS_SASL, "text"))
        t.text = text
    return etree.tostring(el)


class C2SStream(protocol.Protocol):
    """One client connection and, once bound, the session it carries."""

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
        self.mechanism: sasl.ServerMechanism | None = None
        self.username: str | None = None
        self.failures = 0
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
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        log.info("c2s %s opened%s", self.peer, " (direct TLS)" if self.direct_tls else "")
        self.server.c2s_streams.add(self)
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
                self._close()
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
            # RFC 6120 §6.5.10: authentication failed through a problem on our side.
            self.mechanism = None
            self.write(_sasl_failure("temporary-auth-failure"))
        elif is_element and self.jid is not None:
            reply = error_reply(ev, StanzaError("internal-server-error"))
            if reply is not None:
                self.send(reply)
        else:
            # A header or negotiation element left half-answered: §4.9.3.8.
            self.close_with(StreamError("internal-server-error"))

    def _run_async(self, awaitable: Awaitable[Any], ev: Any = None) -> None:
        self._busy = True

        async def run() -> None:
            try:
                await awaitable
            except StreamError as e:
                self.close_with(e)
            except Exception:
                self._unexpected(ev)
            finally:
                self._busy = False
                self._drain()

        self.server.spawn(run())

    def _drain(self) -> None:
        while self._backlog and not self._busy and not self._closing and self.stage != CLOSED:
            self._handle_event(self._backlog.popleft())
        if self._lost:
            if not self._busy:
                self._finish()
            return
        if not self._backlog and self.stage != CLOSED:
            try:
                self.transport.resumeProducing()
            except Exception:
                pass

    # Output ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.stage != CLOSED:
            self.transport.write(data)

    def send(self, stanza: Element) -> None:
        """Send a stanza to the client (router.Session)."""
        if self.stage == BOUND and not self._closing:
            self.transport.write(serialize(stanza))

    def close_with(self, error: StreamError) -> None:
        """Send a stream error and close the stream (RFC 6120 §4.9.1.1)."""
        if self._closing or self.stage == CLOSED:
            return
        if not self._header_sent:
            # §4.9.1.2: the stream header is sent even when the error is in the client's header.
            self._send_header(None)
        log.info(
            "c2s %s stream error %s%s",
            self.peer,
            error.condition,
            f" ({error.text})" if error.text else "",
        )
        self.close_reason = f"stream error {error.condition}"
        self.transport.write(error.to_bytes())
        self._close()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._lost:
            return  # the connection is already gone: nothing to send, nothing to close
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
        attrs = f" from='{self.server.domain}' id='{self.stream_id}' version='1.0' xml:lang='en'"
        if to:
            attrs += f" to='{_xml_attr(to)}'"
        self.transport.write(
            f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' "
            f"xmlns:stream='{NS_STREAMS}'{attrs}>".encode()
        )

    def _stream_open(self, ev: StreamOpen) -> None:
        if self.stage not in (HEADER, TLS_NEEDED, AUTH, AUTHED_HEADER):
            raise StreamError("not-well-formed", "unexpected stream header")
        frm = ev.attrs.get("from")
        self._send_header(frm if frm and "'" not in frm else None)
        # RFC 6120 §4.8: the stream namespace, its prefix and the content namespace.
        if ev.tag != QN_STREAM:
            if ev.tag.endswith("}stream") or ev.tag == "stream":
                raise StreamError(
                    "invalid-namespace", "the stream element must be in " + NS_STREAMS
                )
            raise StreamError("invalid-xml", "the root element must be <stream:stream/>")
        if ev.prefix is None:
            raise StreamError("bad-namespace-prefix", "the stream element needs a namespace prefix")
        if ev.nsmap.get(None) != NS_CLIENT:
            raise StreamError("invalid-namespace", "the content namespace must be jabber:client")
        # §4.7.5: a missing version means 0.9, which we do not speak.
        version = ev.attrs.get("version", "0.9")
        major = version.split(".", 1)[0]
        if not major.isdigit() or int(major) != 1:
            raise StreamError("unsupported-version", "this server speaks XMPP 1.0")
        to = ev.attrs.get("to")
        try:
            host = parse_jid(to).domain if to else None
        except JIDError:
            host = None
        if host != self.server.domain:
            raise StreamError("host-unknown", f"this server serves {self.server.domain}")
        self.lang = ev.attrs.get(QN_XML_LANG, "en")
        self.transport.write(self._features())

    def _features(self) -> bytes:
        cfg = self.server.config.c2s
        feats = etree.Element(qn(NS_STREAMS, "features"), nsmap={"stream": NS_STREAMS})
        if self.stage in (HEADER, TLS_NEEDED) and not self.tls_active:
            st = etree.SubElement(feats, QN_STARTTLS, nsmap={None: NS_TLS})
            if cfg.require_encryption:
                etree.SubElement(st, qn(NS_TLS, "required"))
                self.stage = TLS_NEEDED
                return etree.tostring(feats)
            self.stage = AUTH
        if self.stage in (HEADER, AUTH, TLS_NEEDED):
            self.stage = AUTH
            self._cb = (
                channel_bindings(self.transport, self.server.tls.end_point)
                if self.tls_active
                else {}
            )
            names = sasl.server_mechanism_names(
                tls=self.tls_active,
                channel_bindings=self._cb,
                allow_plain_without_tls=cfg.allow_plain_without_tls,
            )
            mechs = etree.SubElement(feats, qn(NS_SASL, "mechanisms"), nsmap={None: NS_SASL})
            for name in names:
                etree.SubElement(mechs, qn(NS_SASL, "mechanism")).text = name
            if self._cb:
                # XEP-0440: which channel-binding types this stream supports.
                cbs = etree.SubElement(
                    feats, qn(NS_SASL_CB, "sasl-channel-binding"), nsmap={None: NS_SASL_CB}
                )
                for cb_type in self._cb:
                    etree.SubElement(cbs, qn(NS_SASL_CB, "channel-binding")).set("type", cb_type)
        elif self.stage == AUTHED_HEADER:
            self.stage = BIND
            etree.SubElement(feats, QN_BIND, nsmap={None: NS_BIND})
            sess = etree.SubElement(feats, QN_SESSION, nsmap={None: NS_SESSION})
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
                self.transport.write(_sasl_failure("encryption-required", "use STARTTLS first"))
                return None
            raise StreamError("not-authorized", "negotiate TLS first")
        if stage == AUTH:
            if el.tag == QN_STARTTLS and not self.tls_active:
                return self._starttls()
            if el.tag == QN_SASL_AUTH:
                return self._sasl_auth(el)
            if el.tag == QN_SASL_RESPONSE:
                return self._sasl_response(el)
            if el.tag == QN_SASL_ABORT:
                self._sasl_abort()
                return None
            raise StreamError("not-authorized", "authenticate first")
        if stage == BIND:
            if el.tag == QN_IQ and el.get("type") == "set":
                payload = payload_of(el)
                if payload is not None and payload.tag == QN_BIND:
                    return self._bind(el, payload)
            raise StreamError("not-authorized", "bind a resource first")
        raise StreamError("not-well-formed", "element before the stream header")

    # STARTTLS (RFC 6120 §5) --------------------------------------------------------------

    def _starttls(self) -> None:
        self.transport.write(
            etree.tostring(etree.Element(qn(NS_TLS, "proceed"), nsmap={None: NS_TLS}))
        )
        self.transport.startTLS(self.server.tls.options())
        self.tls_active = True
        self.parser.reset()
        self._restarts += 1
        self._header_sent = False
        self.stage = HEADER
        log.info("c2s %s TLS started", self.peer)
        return None

    # SASL (RFC 6120 §6) ----------------------------------------------------------------

    def _decode(self, el: Element) -> bytes | None:
        text = (el.text or "").strip()
        if not text:
            return None
        if text == "=":
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise sasl.SaslFailure("incorrect-encoding", "the data is not base64") from None

    async def _sasl_auth(self, el: Element) -> None:
        if self.mechanism is not None:
            # A second <auth/> during an exchange aborts the first one.
            self.mechanism = None
        name = el.get("mechanism", "")
        try:
            limited = await self.server.auth_limited(self.peer_host, None)
            if limited:
                raise sasl.SaslFailure(
                    "temporary-auth-failure", "too many failed attempts, try later"
                )
            data = self._decode(el)
            self.mechanism = sasl.create_server_mechanism(
                name,
                lookup=self._lookup,
                check=self._check,
                channel_bindings=self._cb,
                tls=self.tls_active,
                allow_plain_without_tls=self.server.config.c2s.allow_plain_without_tls,
            )
            self._mechanism_name = name
            await self._sasl_step(data)
        except sasl.SaslFailure as f:
            await self._sasl_failed(f)

    async def _sasl_response(self, el: Element) -> None:
        if self.mechanism is None:
            await self._sasl_failed(
                sasl.SaslFailure("malformed-request", "no authentication in progress")
            )
            return
        try:
            await self._sasl_step(self._decode(el) or b"")
        except sasl.SaslFailure as f:
            await self._sasl_failed(f)

    def _sasl_abort(self) -> None:
        self.mechanism = None
        self.transport.write(_sasl_failure("aborted"))

    async def _sasl_step(self, data: bytes | None) -> None:
        assert self.mechanism is not None
        result = await self.mechanism.step(data)
        if isinstance(result, sasl.Challenge):
            self.write(etree.tostring(_sasl_element("challenge", result.data)))
            return
        username = prep_local(result.username)
        if result.authzid and not self._is_own_authzid(result.authzid, username):
            raise sasl.SaslFailure("invalid-authzid", "you may only act as yourself")
        self.mechanism = None
        if self.stage == CLOSED:
            return  # the connection went away while the credentials were checked
        self.username = username
        self.write(etree.tostring(_sasl_element("success", result.data, empty_as_equals=False)))
        self.parser.reset()
        self._restarts += 1
        # §6.4.6: the client waits for <success/> before it restarts; anything it sent after
        # its last SASL element belongs to the stream that has just been replaced.
        self._backlog.clear()
        self._header_sent = False
        self.stage = AUTHED_HEADER
        log.info(
            "c2s %s authenticated as %s@%s (%s)",
            self.peer,
            username,
            self.server.domain,
            self._mechanism_name,
        )

    async def _sasl_failed(self, f: sasl.SaslFailure) -> None:
        self.mechanism = None
        if f.condition in ("not-authorized", "invalid-authzid"):
            self.failures += 1
            await self.server.auth_failed(self.peer_host, self._attempted_user)
            # A delay after each failure slows password guessing (RFC 6120 §6.4.5).
            delay = self.server.config.auth.failure_delay
            if delay > 0:
                await self._pause(delay)
        if self.stage == CLOSED:
            return
        log.info("c2s %s SASL failure %s", self.peer, f.condition)
        self.write(_sasl_failure(f.condition, f.text))
        if self.failures >= self.server.config.auth.max_failures:
            self.close_with(
                StreamError("policy-violation", "too many failed authentication attempts")
            )

    _attempted_user: str | None = None

    def _is_own_authzid(self, authzid: str, username: str) -> bool:
        """RFC 6120 §6.3.8: the authorization identity may only be the user's own bare JID,
        compared once prepared (COMPAT: or the bare username, as some clients send it)."""
        if authzid == username:
            return True
        try:
            return parse_jid(authzid) == JID(username, self.server.domain, None)
        except JIDError:
            return False

    async def _pause(self, seconds: float) -> None:
        """Wait on the server's reactor clock (a task.Clock in tests)."""
        waiter = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self.server.reactor.callLater(seconds, wake)
        await waiter

    _mechanism_name = ""

    @property
    def peer_host(self) -> str:
        return self.peer.rsplit(":", 1)[0]

    async def _lookup(self, username: str, hash_name: str) -> sasl.ScramCredentials | None:
        try:
            user = prep_local(username)
        except JIDError:
            return None
        self._attempted_user = user
        if await self.server.auth_limited(None, user):
            raise sasl.SaslFailure("temporary-auth-failure", "too many failed attempts, try later")
        return await self.server.accounts.scram_credentials(user, self.server.domain, hash_name)

    async def _check(self, username: str, password: str) -> bool:
        creds = await self._lookup(username, "sha256")
        if creds is None:
            return False
        return await asyncio.to_thread(sasl.verify_password, password, "sha256", creds)

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
        result = etree.Element(QN_BIND, nsmap={None: NS_BIND})
        etree.SubElement(result, qn(NS_BIND, "jid")).text = self.full
        reply = iq_result(iq, result)
        reply.attrib.pop("from", None)
        reply.attrib.pop("to", None)
        self.transport.write(serialize(reply))
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
                reply = error_reply(el, StanzaError("jid-malformed"))
                if reply is not None:
                    reply.attrib.pop("from", None)
                    self.send(reply)
                return None
        if tag == QN_IQ:
            itype = el.get("type")
            if itype not in ("get", "set", "result", "error") or el.get("id") is None:
                reply = error_reply(
                    el, StanzaError("bad-request", "an IQ needs an id and a valid type")
                )
                if reply is not None:
                    self.send(reply)
                return None
            if itype in ("get", "set"):
                payload = payload_of(el)
                if payload is not None and payload.tag == QN_SESSION:
                    # RFC 6121 (3921 §3) session establishment: accepted as a no-op.
                    self.send(iq_result(el))
                    return None
        elif tag == QN_PRESENCE and el.get("type") not in _PRESENCE_TYPES:
            # RFC 6121 §4.7.1 defines the presence types; another is not understood.
            reply = error_reply(el, StanzaError("bad-request", "unknown presence type"))
            if reply is not None:
                reply.attrib.pop("from", None)
                self.send(reply)
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


def _xml_attr(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")


class C2SFactory(protocol.Factory):
    """Builds a C2SStream per connection on port 5222 (STARTTLS) or 5223 (direct TLS)."""

    noisy = False

    def __init__(self, server: CoreServer, *, direct_tls: bool = False) -> None:
        self.server = server
        self.direct_tls = direct_tls

    def buildProtocol(self, addr: Any) -> C2SStream:
        return C2SStream(self.server, direct_tls=self.direct_tls)

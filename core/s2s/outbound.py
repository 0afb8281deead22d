"""Outgoing server-to-server links (RFC 6120 §3.2, §5, §6; XEP-0178; XEP-0220; XEP-0368).

One :class:`OutgoingLink` per domain pair (our domain → remote domain), reused by all traffic
for that pair. It resolves the remote domain, connects, and carries an :class:`S2SOutbound`
stream through STARTTLS and authentication: SASL EXTERNAL when the peer offers it and our
certificate names our domain (XEP-0178), else dialback (XEP-0220). Stanzas queue (bounded)
while the link comes up; when it cannot come up within ``s2s.connect_timeout`` they bounce, once
each, with ``remote-server-not-found`` or ``remote-server-timeout``. The link also carries our
``<db:verify/>`` requests to the remote domain's authoritative server (§2.1.2), which need a
stream but no authentication. An authenticated link with no traffic for ``s2s.idle_timeout``
is closed.
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lxml import etree
from twisted.internet import defer, protocol

from core.s2s.resolve import Target, resolve
from core.s2s.stream import S2SStream, check_header, stream_error_text
from core.xmpp import dialback
from core.xmpp.certs import peer_chain
from core.xmpp.dialback import QN_DB_RESULT, QN_DB_VERIFY, QN_DIALBACK_FEATURE, Dialback
from core.xmpp.errors import StanzaError, StreamError
from core.xmpp.ns import (
    NS_DIALBACK,
    NS_SASL,
    NS_STREAMS,
    NS_TLS,
    QN_SASL_FAILURE,
    QN_SASL_MECHANISM,
    QN_SASL_MECHANISMS,
    QN_SASL_SUCCESS,
    QN_STARTTLS,
    QN_TLS_FAILURE,
    QN_TLS_PROCEED,
    qn,
)
from core.xmpp.parser import StreamOpen

if TYPE_CHECKING:
    from core.s2s.service import S2SService

log = logging.getLogger(__name__)
Element = etree._Element

QN_FEATURES = qn(NS_STREAMS, "features")
# Stages of an outgoing stream.
HEADER, FEATURES, TLS_WAIT, SASL_WAIT, DIALBACK_WAIT, SASL_RESTART, READY = range(7)

VerifyCallback = Callable[[str, "str | None"], None]

# XEP-0220 §2.4: what a failed link means for a verification request riding on it.
_VERIFY_CONDITIONS = {
    "remote-server-not-found": "remote-server-not-found",
    "remote-server-timeout": "remote-server-timeout",
}


@dataclass
class VerifyRequest:
    stream_id: str
    key: str
    callback: VerifyCallback
    timer: Any = None
    sent: bool = False


class OutgoingLink:
    """The outgoing side of one domain pair: queue, connection attempts, stream."""

    def __init__(self, service: S2SService, local: str, remote: str) -> None:
        self.service = service
        self.local = local
        self.remote = remote
        self.queue: deque[Element] = deque()
        self.verifies: dict[str, list[VerifyRequest]] = {}
        self.stream: S2SOutbound | None = None
        self.ready = False
        self.closed = False
        self.how = ""
        reactor = service.reactor
        self.last_used = reactor.seconds()
        self._setup_timer = reactor.callLater(service.config.connect_timeout, self._setup_expired)
        self._idle_timer: Any = None

    def __repr__(self) -> str:
        return f"<OutgoingLink {self.local} -> {self.remote}>"

    # Establishing ----------------------------------------------------------------------

    def start(self) -> None:
        d = defer.ensureDeferred(self._connect())
        d.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Any) -> None:
        log.error(
            "s2s out %s -> %s: connecting failed",
            self.local,
            self.remote,
            exc_info=(failure.type, failure.value, failure.getTracebackObject()),
        )
        self.fail("remote-server-not-found", "internal error while connecting")

    async def _connect(self) -> None:
        cfg = self.service.config
        targets = await resolve(self.remote, hosts=cfg.hosts, lookup=self.service.lookup)
        if self.closed:
            return
        if not targets:
            self.fail("remote-server-not-found", f"{self.remote} offers no XMPP service")
            return
        problems = []
        for target in targets:
            log.debug("s2s out %s -> %s: trying %s", self.local, self.remote, target)
            try:
                stream = await self.service.connect(target, _OutboundFactory(self, target))
            except Exception as e:
                problems.append(f"{target}: {e.__class__.__name__}: {e}")
                continue
            if self.closed:
                stream.transport.abortConnection()
            return
        self.fail(
            "remote-server-not-found",
            f"cannot connect to {self.remote}: {'; '.join(problems) or 'no address'}",
        )

    def _setup_expired(self) -> None:
        if not self.ready and not self.closed:
            self.fail(
                "remote-server-timeout",
                f"no authenticated link to {self.remote} within "
                f"{self.service.config.connect_timeout:g}s",
            )

    # Traffic ---------------------------------------------------------------------------

    def send(self, stanza: Element) -> None:
        """Send a stanza (jabber:client inside the server) to the remote domain."""
        self.last_used = self.service.reactor.seconds()
        if self.closed:
            self.service.bounce(stanza, StanzaError("remote-server-not-found", "link closed"))
            return
        if self.ready and self.stream is not None:
            self.stream.send_stanza(stanza)
            return
        if len(self.queue) >= self.service.config.queue_limit:
            self.service.bounce(
                stanza, StanzaError("resource-constraint", "too many stanzas waiting")
            )
            return
        self.queue.append(stanza)

    def verify(self, stream_id: str, key: str, callback: VerifyCallback) -> None:
        """Ask the remote domain whether ``key`` is its key for our incoming stream
        ``stream_id`` (XEP-0220 §2.1.2); ``callback(type, condition)`` is called once."""
        if self.closed:
            callback("error", "remote-connection-failed")
            return
        req = VerifyRequest(stream_id, key, callback)
        req.timer = self.service.reactor.callLater(
            self.service.config.connect_timeout, self._verify_expired, req
        )
        self.verifies.setdefault(stream_id, []).append(req)
        if self.stream is not None and self.stream.usable:
            self.stream.send_verify(req)

    def _verify_expired(self, req: VerifyRequest) -> None:
        self._answer(req, "error", "remote-server-timeout")

    def _answer(self, req: VerifyRequest, dtype: str, condition: str | None) -> None:
        waiting = self.verifies.get(req.stream_id, [])
        if req not in waiting:
            return
        waiting.remove(req)
        if not waiting:
            self.verifies.pop(req.stream_id, None)
        if req.timer is not None and req.timer.active():
            req.timer.cancel()
        try:
            req.callback(dtype, condition)
        except Exception:
            log.exception("s2s out %s -> %s: dialback callback failed", self.local, self.remote)

    # Called by the stream --------------------------------------------------------------

    def stream_usable(self, stream: S2SOutbound) -> None:
        """TLS is done (or not required): verification requests can go out now."""
        for reqs in list(self.verifies.values()):
            for req in reqs:
                if not req.sent:
                    stream.send_verify(req)

    def verify_answered(self, db: Dialback) -> None:
        """§2.1.2: match the answer to a request sent on this stream, else drop it."""
        if db.frm != self.remote or db.to != self.local or db.id is None:
            log.warning("s2s out %s -> %s: unsolicited db:verify", self.local, self.remote)
            return
        for req in list(self.verifies.get(db.id, [])):
            if req.sent:
                dtype = db.type or "error"
                self._answer(req, dtype, db.condition if dtype == "error" else None)
                return
        log.warning("s2s out %s -> %s: unsolicited db:verify id %s", self.local, self.remote, db.id)

    def authenticated(self, stream: S2SOutbound, how: str) -> None:
        if self.closed:
            return
        self.ready = True
        self.how = how
        if self._setup_timer.active():
            self._setup_timer.cancel()
        log.info(
            "s2s out %s -> %s authenticated (%s) via %s, %d queued",
            self.local,
            self.remote,
            how,
            stream.target,
            len(self.queue),
        )
        while self.queue:
            stream.send_stanza(self.queue.popleft())
        self._schedule_idle_check()

    def stream_closed(self, stream: S2SOutbound, reason: str) -> None:
        if stream is not self.stream or self.closed:
            return
        if self.ready:
            self.closed = True
            self.service.link_closed(self)
            self._fail_verifies("remote-server-timeout")
            self._cancel_timers()
            log.info("s2s out %s -> %s closed: %s", self.local, self.remote, reason)
        else:
            self.fail("remote-server-not-found", reason)

    def fail(self, condition: str, reason: str, *, bounce: str | None = None) -> None:
        """Give up: bounce what is queued with ``bounce`` (default ``condition``), answer
        pending verifications with an error and close the stream."""
        if self.closed:
            return
        self.closed = True
        self.service.link_closed(self)
        self._cancel_timers()
        log.warning("s2s out %s -> %s failed: %s", self.local, self.remote, reason)
        error = StanzaError(bounce or condition, reason)
        queued, self.queue = list(self.queue), deque()
        for stanza in queued:
            self.service.bounce(stanza, error)
        self._fail_verifies(_VERIFY_CONDITIONS.get(condition, "remote-connection-failed"))
        if self.stream is not None:
            self.stream.close()

    def _fail_verifies(self, condition: str) -> None:
        for reqs in list(self.verifies.values()):
            for req in list(reqs):
                self._answer(req, "error", condition)

    def _cancel_timers(self) -> None:
        for t in (self._setup_timer, self._idle_timer):
            if t is not None and t.active():
                t.cancel()

    def close(self, error: StreamError | None = None) -> None:
        """Close the link (shutdown, idle): nothing is queued on a ready link."""
        if self.closed:
            return
        if not self.ready:
            self.fail("remote-server-timeout", "the server is shutting down")
            return
        self.closed = True
        self.service.link_closed(self)
        self._cancel_timers()
        self._fail_verifies("remote-server-timeout")
        if self.stream is not None:
            if error is not None:
                self.stream.close_with(error)
            else:
                self.stream.close()

    def _schedule_idle_check(self) -> None:
        idle = self.service.config.idle_timeout
        if idle > 0:
            self._idle_timer = self.service.reactor.callLater(idle, self._idle_check)

    def _idle_check(self) -> None:
        if self.closed:
            return
        idle = self.service.config.idle_timeout
        quiet = self.service.reactor.seconds() - self.last_used
        if quiet >= idle and not self.verifies:
            log.info("s2s out %s -> %s closing: idle for %gs", self.local, self.remote, quiet)
            self.close()
            return
        self._idle_timer = self.service.reactor.callLater(max(idle - quiet, 1.0), self._idle_check)


class S2SOutbound(S2SStream):
    """The stream of an outgoing link, from connection to authenticated."""

    direction = "out"

    def __init__(self, link: OutgoingLink, target: Target) -> None:
        super().__init__(link.service)
        self.link = link
        self.target = target
        self.stage = HEADER
        self.stream_id = ""
        self.peer_dialback = False  # the peer declared the dialback namespace
        self.features: Element | None = None
        self.usable = False  # TLS done: verification requests may be sent

    def connectionMade(self) -> None:
        super().connectionMade()
        link = self.link
        if link.closed:
            self.closed = True
            self.transport.abortConnection()
            return
        link.stream = self
        log.info("s2s out %s -> %s connected to %s", link.local, link.remote, self.target)
        if self.target.direct_tls:
            # XEP-0368: TLS from the first byte, ALPN xmpp-server.
            self.transport.startTLS(self.service.tls.client_for(link.remote, direct=True))
            self.tls_active = True
        self.send_header(link.local, link.remote, None)

    def stream_lost(self) -> None:
        self.link.stream_closed(self, self.close_reason)

    def peer_stream_error(self, el: Element) -> None:
        text = stream_error_text(el)
        log.warning(
            "s2s out %s -> %s: stream error from the peer: %s",
            self.link.local,
            self.link.remote,
            text,
        )
        self.link.stream_closed(self, f"stream error from {self.link.remote}: {text}")

    def _fail(self, condition: str, reason: str, *, bounce: str | None = None) -> None:
        self.close_reason = reason
        self.link.fail(condition, reason, bounce=bounce)
        self.close()

    # Header and features ---------------------------------------------------------------

    def stream_opened(self, ev: StreamOpen) -> None:
        if self.stage not in (HEADER, SASL_RESTART):
            raise StreamError("not-well-formed", "unexpected stream header")
        check_header(ev)
        self.stream_id = ev.attrs.get("id", "")
        self.peer_dialback = ev.nsmap.get("db") == NS_DIALBACK
        if self.stage == HEADER:
            self.stage = FEATURES

    def element(self, el: Element) -> None:
        tag = el.tag
        if tag == QN_FEATURES:
            self._features(el)
        elif tag == QN_TLS_PROCEED and self.stage == TLS_WAIT:
            self._tls_proceed()
        elif tag == QN_TLS_FAILURE and self.stage == TLS_WAIT:
            self._fail("remote-server-not-found", f"{self.link.remote} refused STARTTLS")
        elif tag == QN_SASL_SUCCESS and self.stage == SASL_WAIT:
            self.parser.reset()
            self.stage = SASL_RESTART
            self.send_header(self.link.local, self.link.remote, None)
        elif tag == QN_SASL_FAILURE and self.stage == SASL_WAIT:
            log.info(
                "s2s out %s -> %s: SASL EXTERNAL refused, trying dialback",
                self.link.local,
                self.link.remote,
            )
            self._dialback()
        elif tag == QN_DB_RESULT:
            self._result(el)
        elif tag == QN_DB_VERIFY:
            self._verify_answer(el)
        elif self.stage == READY:
            # Without XEP-0288 the peer sends no stanzas on our stream; ignore them.
            log.debug("s2s out %s: ignored %s", self.peer, tag)
        else:
            raise StreamError("unsupported-stanza-type", f"unexpected {tag} during negotiation")

    def _features(self, el: Element) -> None:
        link = self.link
        cfg = self.service.config
        if self.stage == SASL_RESTART:
            # RFC 6120 §6.4.6: the restarted stream's features; the link is authenticated.
            self.stage = READY
            link.authenticated(self, "SASL EXTERNAL")
            return
        if self.stage != FEATURES:
            raise StreamError("not-well-formed", "unexpected stream features")
        self.features = el
        if not self.tls_active:
            if el.find(QN_STARTTLS) is not None:
                self.stage = TLS_WAIT
                self.write(etree.tostring(etree.Element(QN_STARTTLS, nsmap={None: NS_TLS})))
                return
            if cfg.require_encryption:
                self._fail(
                    "remote-server-not-found",
                    f"{link.remote} does not offer TLS and s2s.require_encryption is set",
                )
                return
        else:
            check = self.service.check_certificate(peer_chain(self.transport), link.remote)
            if not check.valid:
                if cfg.require_valid_certificates:
                    self._fail(
                        "remote-server-not-found",
                        f"the certificate of {link.remote} is not accepted: {check.reason} "
                        "(s2s.require_valid_certificates is set)",
                    )
                    return
                log.info(
                    "s2s out %s -> %s: %s; authenticating with dialback",
                    link.local,
                    link.remote,
                    check.reason,
                )
        self.usable = True
        link.stream_usable(self)
        mechs = el.find(QN_SASL_MECHANISMS)
        offered = (
            [] if mechs is None else [(m.text or "").strip() for m in mechs.iter(QN_SASL_MECHANISM)]
        )
        if self.tls_active and "EXTERNAL" in offered and self.service.own_cert_fits(link.local):
            # XEP-0178 §4 step 7: EXTERNAL with our domain as the authorization identity.
            auth = etree.Element(qn(NS_SASL, "auth"), nsmap={None: NS_SASL})
            auth.set("mechanism", "EXTERNAL")
            auth.text = base64.b64encode(link.local.encode()).decode()
            self.send_element(auth)
            self.stage = SASL_WAIT
            return
        self._dialback()

    def _tls_proceed(self) -> None:
        self.transport.startTLS(self.service.tls.client_for(self.link.remote))
        self.tls_active = True
        self.parser.reset()
        self.stage = HEADER
        self.send_header(self.link.local, self.link.remote, None)

    # Dialback as the Initiating Server (XEP-0220 §2.1.1) -------------------------------

    def _dialback(self) -> None:
        link = self.link
        feats = self.features
        offered = feats is not None and feats.find(QN_DIALBACK_FEATURE) is not None
        if not (self.peer_dialback or offered):
            self._fail(
                "remote-server-not-found",
                f"no common way to authenticate with {link.remote}",
            )
            return
        key = self.service.dialback_key(
            receiving=link.remote, originating=link.local, stream_id=self.stream_id
        )
        self.send_element(dialback.result(link.local, link.remote, key=key))
        self.stage = DIALBACK_WAIT

    def _result(self, el: Element) -> None:
        db = Dialback.from_element(el)
        link = self.link
        if self.stage != DIALBACK_WAIT or db.frm != link.remote or db.to != link.local:
            log.warning("s2s out %s: ignored unsolicited db:result", self.peer)
            return
        if db.type == "valid":
            self.stage = READY
            link.authenticated(self, "dialback")
        elif db.type == "invalid":
            # §2.1.1: queued stanzas go back with internal-server-error.
            self._fail(
                "remote-server-not-found",
                f"{link.remote} found our dialback key invalid",
                bounce="internal-server-error",
            )
        else:
            # §2.1.1, §2.4: a dialback error; queued stanzas go back with a timeout.
            self._fail(
                "remote-server-timeout",
                f"{link.remote} answered dialback with {db.condition}",
            )

    def send_verify(self, req: VerifyRequest) -> None:
        req.sent = True
        link = self.link
        self.send_element(dialback.verify(link.local, link.remote, req.stream_id, key=req.key))

    def _verify_answer(self, el: Element) -> None:
        try:
            db = Dialback.from_element(el)
        except ValueError as e:
            raise StreamError("bad-format", str(e)) from None
        if db.type is None:
            log.warning("s2s out %s: ignored db:verify request on an outgoing stream", self.peer)
            return
        self.link.verify_answered(db)


class _OutboundFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, link: OutgoingLink, target: Target) -> None:
        self.link = link
        self.target = target

    def buildProtocol(self, addr: Any) -> S2SOutbound:
        return S2SOutbound(self.link, self.target)

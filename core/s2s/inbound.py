"""Incoming server-to-server streams (RFC 6120 §4-§6, XEP-0178, XEP-0220).

A remote server connects to port 5269. We answer its header, offer STARTTLS (required by
default), then SASL EXTERNAL when the certificate it presented verifies for the domain in its
'from' (XEP-0178 §4), and dialback with error handling (XEP-0220 §2.4.2). A domain is
authenticated for this stream by SASL EXTERNAL or by a ``<db:result/>`` that the domain's
authoritative server confirms; ``<db:verify/>`` requests are answered for our own keys at any
time after the header. Stanzas are accepted only from authenticated domains, only for domains we
serve, and are handed to the router in the order they arrived (RFC 6120 §10.1).

The stream is parsed with jabber:server read as jabber:client (core.xmpp.parser), so stanzas
are routed as parsed, with no per-stanza copy; elements the peer qualifies with jabber:server
itself are moved by ``to_client_ns``. A stanza the peer qualifies with jabber:client itself can
then no longer be told apart from one in the stream's namespace, and is taken as one: the same
stanza in the other content namespace (RFC 6120 §4.8.3). Stream-level elements (dialback,
SASL, TLS) are in namespaces of their own and read as sent.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from lxml import etree
from twisted.internet import protocol

from core.s2s.stream import S2SStream, check_header
from core.xmpp import dialback
from core.xmpp.certs import CertCheck, peer_chain
from core.xmpp.dialback import QN_DB_RESULT, QN_DB_VERIFY, Dialback
from core.xmpp.errors import StanzaError, StreamError
from core.xmpp.jid import JIDError, parse_jid, prep_domain
from core.xmpp.ns import (
    NS_CLIENT,
    NS_SASL,
    NS_SERVER,
    NS_STREAMS,
    NS_TLS,
    QN_SASL_AUTH,
    QN_STARTTLS,
    qn,
)
from core.xmpp.parser import StreamOpen, StreamParser
from core.xmpp.stanza import error_reply, new_id, to_client_ns

if TYPE_CHECKING:
    from core.s2s.service import S2SService

log = logging.getLogger(__name__)
Element = etree._Element

# As the peer names them, and as the parser reads the stream's default namespace.
STANZAS = frozenset(
    qn(ns, k) for ns in (NS_SERVER, NS_CLIENT) for k in ("message", "presence", "iq")
)
# Stages of an incoming stream.
HEADER, TLS_NEEDED, OPEN, SASL_RESTART = range(4)
MAX_BACKLOG = 64


class S2SInbound(S2SStream):
    """One incoming s2s connection and the domains authenticated on it."""

    direction = "in"

    def __init__(self, service: S2SService) -> None:
        super().__init__(service)
        self.parser = StreamParser(
            max_stanza_bytes=service.config.max_stanza_size,
            content_ns_map={NS_SERVER: NS_CLIENT},
        )
        self.stage = HEADER
        self.stream_id = ""
        self.local = service.server.domain  # the 'to' of the peer's header
        self.remote: str | None = None  # the 'from' of the peer's header
        # Remote domain -> our domains it was authenticated for (XEP-0220 domain pairs).
        self.authenticated: dict[str, set[str]] = {}
        self.pending: set[tuple[str, str]] = set()  # dialback requests being verified
        self._chain: list[Any] | None = None
        self._checks: dict[str, CertCheck] = {}
        self._backlog: deque[Element] = deque()
        self._busy = False

    # Connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        log.info("s2s in %s opened", self.peer)
        self.service.inbound.add(self)
        # The header and TLS must come soon; a verify-only stream may then stay unauthenticated
        # until it goes idle.
        self.call_later(self.service.config.connect_timeout, self._negotiation_expired)
        self.start_idle_check(self.service.config.idle_timeout)

    def stream_lost(self) -> None:
        self.service.inbound.discard(self)
        log.info(
            "s2s in %s closed%s: %s",
            self.peer,
            f" ({', '.join(sorted(self.authenticated))})" if self.authenticated else "",
            self.close_reason,
        )

    def _negotiation_expired(self) -> None:
        if self.stage in (HEADER, TLS_NEEDED, SASL_RESTART):
            self.close_with(StreamError("connection-timeout", "stream negotiation took too long"))

    # Stream header and features (RFC 6120 §4.7, §4.3.2) ---------------------------------

    def stream_opened(self, ev: StreamOpen) -> None:
        if self.stage not in (HEADER, SASL_RESTART):
            raise StreamError("not-well-formed", "unexpected stream header")
        to = ev.attrs.get("to")
        try:
            local = prep_domain(to) if to else self.service.server.domain
        except JIDError:
            local = None
        frm = ev.attrs.get("from")
        self.stream_id = new_id()
        self.send_header(
            local if local and self.service.hosted(local) else self.service.server.domain,
            frm if frm and self.remote is None else self.remote,
            self.stream_id,
        )
        check_header(ev)
        if local is None or not self.service.hosted(local):
            raise StreamError("host-unknown", f"{to} is not served here")
        self.local = local
        if frm:
            try:
                remote = prep_domain(frm)
            except JIDError:
                raise StreamError("invalid-from", "the 'from' is not a domain") from None
            if self.remote is not None and remote != self.remote:
                raise StreamError("invalid-from", "the 'from' changed on a stream restart")
            self.remote = remote
        self.send_element(self._features())

    def _features(self) -> Element:
        feats = etree.Element(qn(NS_STREAMS, "features"), nsmap={"stream": NS_STREAMS})
        cfg = self.service.config
        if self.stage == SASL_RESTART:
            # RFC 6120 §6.4.6: after SASL, the features of the restarted stream (none here).
            self.stage = OPEN
            return feats
        if not self.tls_active:
            st = etree.SubElement(feats, QN_STARTTLS, nsmap={None: NS_TLS})
            if cfg.require_encryption:
                # RFC 6120 §5.3.1: TLS is mandatory-to-negotiate; nothing else is offered.
                etree.SubElement(st, qn(NS_TLS, "required"))
                self.stage = TLS_NEEDED
                return feats
        self.stage = OPEN
        if self.tls_active and self.remote is not None and self.cert_check(self.remote).valid:
            # XEP-0178 §4 step 6: EXTERNAL only when the certificate will do for 'from'.
            mechs = etree.SubElement(feats, qn(NS_SASL, "mechanisms"), nsmap={None: NS_SASL})
            etree.SubElement(mechs, qn(NS_SASL, "mechanism")).text = "EXTERNAL"
        feats.append(dialback.feature())
        return feats

    def cert_check(self, domain: str) -> CertCheck:
        """Whether the certificate the peer presented is trusted for ``domain`` (cached)."""
        if domain not in self._checks:
            if self._chain is None:
                self._chain = peer_chain(self.transport)
            self._checks[domain] = self.service.check_certificate(self._chain, domain)
        return self._checks[domain]

    # Elements --------------------------------------------------------------------------

    def element(self, el: Element) -> None:
        tag = el.tag
        if tag == QN_DB_VERIFY or tag == QN_DB_RESULT:
            self._dialback(el)
            return
        if self.stage == TLS_NEEDED:
            if tag == QN_STARTTLS:
                self._starttls()
                return
            raise StreamError("not-authorized", "negotiate TLS first")
        if self.stage != OPEN:
            raise StreamError("not-well-formed", "element before the stream header")
        if tag == QN_STARTTLS:
            if self.tls_active:
                # RFC 6120 §5.4.2.2: failure, then the stream closes.
                self.write(
                    etree.tostring(etree.Element(qn(NS_TLS, "failure"), nsmap={None: NS_TLS}))
                )
                self.close_reason = "STARTTLS twice"
                self.close()
                return
            self._starttls()
            return
        if tag == QN_SASL_AUTH:
            self._sasl_external(el)
            return
        if tag in STANZAS:
            if self._busy:
                self._backlog.append(el)
                if len(self._backlog) > MAX_BACKLOG:
                    self.transport.pauseProducing()
                return
            self._stanza(el)
            return
        if not self.authenticated:
            raise StreamError("not-authorized", "authenticate first")
        raise StreamError("unsupported-stanza-type", "only message, presence and iq are stanzas")

    # STARTTLS (RFC 6120 §5) --------------------------------------------------------------

    def _starttls(self) -> None:
        self.write(etree.tostring(etree.Element(qn(NS_TLS, "proceed"), nsmap={None: NS_TLS})))
        self.transport.startTLS(self.service.tls)
        self.tls_active = True
        self.parser.reset()
        self._header_sent = False
        self.stage = HEADER
        log.info("s2s in %s TLS started", self.peer)

    # SASL EXTERNAL (RFC 6120 §6, XEP-0178) ----------------------------------------------

    def _sasl_external(self, el: Element) -> None:
        if not self.tls_active:
            self._sasl_failure("encryption-required")
            return
        if el.get("mechanism") != "EXTERNAL":
            self._sasl_failure("invalid-mechanism")
            return
        text = (el.text or "").strip()
        try:
            authzid = (
                base64.b64decode(text, validate=True).decode() if text not in ("", "=") else ""
            )
        except (binascii.Error, ValueError):
            self._sasl_failure("incorrect-encoding")
            return
        try:
            domain = prep_domain(authzid) if authzid else self.remote
        except JIDError:
            domain = None
        if domain is None or (self.remote is not None and domain != self.remote):
            self._sasl_failure("invalid-authzid")
            return
        check = self.cert_check(domain)
        if not check.valid:
            log.warning(
                "s2s in %s: SASL EXTERNAL refused for %s: %s", self.peer, domain, check.reason
            )
            self._sasl_failure("not-authorized")
            self.close_reason = f"SASL EXTERNAL refused: {check.reason}"
            self.close()  # XEP-0178 §4 step 7.2
            return
        self.write(etree.tostring(etree.Element(qn(NS_SASL, "success"), nsmap={None: NS_SASL})))
        self.remote = domain
        self._authenticated(domain, self.local, "SASL EXTERNAL")
        self.parser.reset()
        self._header_sent = False
        self.stage = SASL_RESTART

    def _sasl_failure(self, condition: str) -> None:
        el = etree.Element(qn(NS_SASL, "failure"), nsmap={None: NS_SASL})
        etree.SubElement(el, qn(NS_SASL, condition))
        self.write(etree.tostring(el))

    def _authenticated(self, remote: str, local: str, how: str) -> None:
        self.authenticated.setdefault(remote, set()).add(local)
        log.info("s2s in %s authenticated %s -> %s (%s)", self.peer, remote, local, how)

    # Dialback (XEP-0220 §2.2) -----------------------------------------------------------

    def _dialback(self, el: Element) -> None:
        try:
            db = Dialback.from_element(el)
        except ValueError as e:
            raise StreamError("bad-format", str(e)) from None
        if db.type is not None:
            # §2.2, §3.1: answers never arrive on an incoming stream (no XEP-0288 here); an
            # unsolicited answer is ignored, never trusted.
            log.warning("s2s in %s: ignored unsolicited db:%s type=%s", self.peer, db.kind, db.type)
            return
        if self.stage == TLS_NEEDED:
            self._dialback_error(db, "policy-violation")
            return
        if self.stage != OPEN:
            raise StreamError("not-well-formed", "element before the stream header")
        try:
            local, remote = prep_domain(db.to), prep_domain(db.frm)
        except JIDError:
            self._dialback_error(db, "item-not-found")
            return
        if not self.service.hosted(local):
            self._dialback_error(db, "item-not-found")
            return
        if db.kind == "verify":
            self._answer_verify(db, local, remote)
        else:
            self._request_result(db, local, remote)

    def _answer_verify(self, db: Dialback, local: str, remote: str) -> None:
        """§2.2.2: we are the Authoritative Server for ``local``: is this our key?"""
        assert db.id is not None
        valid = self.service.check_dialback_key(
            receiving=remote, originating=local, stream_id=db.id, key=db.key
        )
        log.info(
            "s2s in %s: db:verify %s -> %s id %s: %s",
            self.peer,
            local,
            remote,
            db.id,
            "valid" if valid else "invalid",
        )
        self.send_element(
            dialback.verify(local, remote, db.id, type="valid" if valid else "invalid")
        )

    def _request_result(self, db: Dialback, local: str, remote: str) -> None:
        """§2.2.1: ``remote`` asks to send stanzas to ``local``; ask its authoritative server."""
        if self.service.hosted(remote):
            self._dialback_error(db, "not-acceptable")
            return
        if local in self.authenticated.get(remote, ()):
            self.send_element(dialback.result(local, remote, type="valid"))
            return
        if self.service.config.require_valid_certificates:
            check = self.cert_check(remote)
            if not check.valid:
                log.warning(
                    "s2s in %s: refused dialback for %s: %s "
                    "(s2s.require_valid_certificates is set)",
                    self.peer,
                    remote,
                    check.reason,
                )
                self._dialback_error(db, "not-authorized")
                return
        if (remote, local) in self.pending:
            return
        self.pending.add((remote, local))
        self.service.verify_dialback(
            local=local,
            remote=remote,
            stream_id=self.stream_id,
            key=db.key,
            callback=lambda dtype, condition: self._verified(local, remote, dtype, condition),
        )

    def _verified(self, local: str, remote: str, dtype: str, condition: str | None) -> None:
        self.pending.discard((remote, local))
        if self.closed or self._closing:
            return  # §2.1.2: no inbound stream any more; the result is dropped
        if dtype == "valid":
            self._authenticated(remote, local, "dialback")
            self.send_element(dialback.result(local, remote, type="valid"))
        elif dtype == "invalid":
            log.warning("s2s in %s: dialback key for %s is invalid", self.peer, remote)
            self.send_element(dialback.result(local, remote, type="invalid"))
            # §2.2.1: the Initiating Server is spoofing; the stream must be closed.
            self.close_with(StreamError("not-authorized", f"not authorized for {remote}"))
        else:
            self.send_element(dialback.result(local, remote, type="error", condition=condition))

    def _dialback_error(self, db: Dialback, condition: str) -> None:
        """§2.4: a dialback error answers the request without closing the stream."""
        if db.kind == "verify":
            el = dialback.verify(db.to, db.frm, db.id or "", type="error", condition=condition)
        else:
            el = dialback.result(db.to, db.frm, type="error", condition=condition)
        self.send_element(el)

    # Stanzas (RFC 6120 §8, §10) ---------------------------------------------------------

    def _stanza(self, el: Element) -> None:
        if not self.authenticated:
            raise StreamError("not-authorized", "no domain is authenticated on this stream")
        frm, to_attr = el.get("from"), el.get("to")
        if not frm or not to_attr:
            # RFC 6120 §8.1.1.1, §8.1.2.1: both are required between servers.
            raise StreamError("improper-addressing", "stanzas need 'from' and 'to'")
        try:
            sender = parse_jid(frm)
        except JIDError:
            raise StreamError("invalid-from", "the 'from' is not a JID") from None
        if sender.domain not in self.authenticated:
            # §4.9.3.9: not a domain negotiated on this stream.
            raise StreamError("invalid-from", f"{sender.domain} is not authenticated here")
        stanza = to_client_ns(el, NS_SERVER)
        try:
            to = parse_jid(to_attr)
        except JIDError:
            self._refuse(stanza, StanzaError("jid-malformed"), frm=self.local)
            return
        if not self.service.hosted(to.domain):
            raise StreamError("host-unknown", f"{to.domain} is not served here")
        stanza.set("from", str(sender))
        stanza.set("to", str(to))
        try:
            pending = self.service.server.router.route(stanza, sender, to, self)
        except Exception:
            log.exception("s2s in %s: routing failed", self.peer)
            self._refuse(stanza, StanzaError("internal-server-error"))
            return
        if pending is not None:
            self._run_in_order(pending, stanza)

    def _refuse(self, stanza: Element, error: StanzaError, *, frm: str | None = None) -> None:
        reply = error_reply(stanza, error, frm=frm)
        if reply is not None:
            self.service.send_reply(reply)

    def _run_in_order(self, awaitable: Awaitable[Any], stanza: Element) -> None:
        """Let ``awaitable`` finish before the next stanza of this stream is routed."""
        self._busy = True

        async def run() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("s2s in %s: routing failed", self.peer)
                self._refuse(stanza, StanzaError("internal-server-error"))
            finally:
                self._busy = False
                self._drain()

        self.service.server.spawn(run())

    def _drain(self) -> None:
        while self._backlog and not self._busy and not self.closed and not self._closing:
            el = self._backlog.popleft()
            try:
                self._stanza(el)
            except StreamError as e:
                self.close_with(e)
                return
            except Exception:
                log.exception("s2s in %s: unexpected failure", self.peer)
                self.close_with(StreamError("internal-server-error"))
                return
        if not self._backlog and not self.closed:
            try:
                self.transport.resumeProducing()
            except Exception:
                log.debug("s2s in %s: resumeProducing failed", self.peer, exc_info=True)


class S2SInboundFactory(protocol.Factory):
    """Builds an S2SInbound per connection on the s2s port."""

    noisy = False

    def __init__(self, service: S2SService) -> None:
        self.service = service

    def buildProtocol(self, addr: Any) -> S2SInbound:
        return S2SInbound(self.service)

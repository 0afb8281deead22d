"""Federation: the s2s service of one core node (RFC 6120 §3.2, §13.7; XEP-0220; XEP-0178).

Holds the outgoing links by domain pair and the incoming streams, the dialback secret (XEP-0185,
shared by all nodes through Redis unless configured), the trust store and our certificate. The
router reaches other domains through :meth:`S2SService.route_for`, which it calls for every
domain that is neither ours nor a component's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from lxml import etree
from twisted.internet import defer

from core.runtime.config import tls_files
from core.s2s.outbound import OutgoingLink, VerifyCallback
from core.s2s.resolve import Lookup, Target, dns_lookup
from core.s2s.tls import S2STLS
from core.storage import keys
from core.xmpp import dialback
from core.xmpp.certs import (
    CertCheck,
    TrustStoreError,
    check_certificate,
    identity_matches,
    load_trust_store,
)
from core.xmpp.errors import StanzaError, StreamError
from core.xmpp.jid import JID, JIDError, parse_jid

if TYPE_CHECKING:
    from core.s2s.inbound import S2SInbound
    from core.server import CoreServer

log = logging.getLogger(__name__)
Element = etree._Element

Connect = Callable[[Target, Any], "defer.Deferred[Any]"]


class RemoteRoute:
    """What the router is given for a remote domain: ``send(stanza)`` picks the link by the
    stanza's sending domain, so each domain pair has its own authenticated link."""

    def __init__(self, service: S2SService, domain: str) -> None:
        self.service = service
        self.domain = domain

    def send(self, stanza: Element) -> None:
        self.service.send(stanza, self.domain)


class S2SService:
    """Outgoing links, incoming streams and the secrets they share."""

    def __init__(
        self,
        server: CoreServer,
        *,
        lookup: Lookup | None = None,
        connect: Connect | None = None,
    ) -> None:
        self.server = server
        self.config = server.config.s2s
        self.reactor = server.reactor
        self.links: dict[tuple[str, str], OutgoingLink] = {}
        self.inbound: set[S2SInbound] = set()
        self.secret = self.config.dialback_secret
        self.lookup: Lookup | None = lookup
        self._connect = connect
        self.tls: Any = None
        self.trust: Any = None
        self._own_cert: x509.Certificate | None = None

    # Start and stop --------------------------------------------------------------------

    async def start(self) -> None:
        """Load the secret, the trust store and our certificate (after the core's TLS)."""
        if not self.secret:
            # XEP-0185 §2: one secret per deployment, so any node can verify any node's key.
            await self.server.redis.set(keys.dialback_secret(), dialback.new_secret(), nx=True)
            raw = await self.server.redis.get(keys.dialback_secret())
            self.secret = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            self.trust = load_trust_store(self.config.trust_store)
        except (OSError, TrustStoreError) as e:
            raise SystemExit(f"s2s.trust_store: {e}") from None
        cert, key = tls_files(self.server.config)
        self.load_certificate(cert, key)
        if self.lookup is None:
            self.lookup = dns_lookup()

    def load_certificate(self, cert_path: Path, key_path: Path) -> None:
        self.tls = S2STLS(cert_path, key_path)
        self._own_cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]

    def close_all(self, error: StreamError) -> None:
        """Close every link and incoming stream (shutdown)."""
        for link in list(self.links.values()):
            link.close(error)
        for stream in list(self.inbound):
            stream.close_reason = "server shutting down"
            stream.close_with(error)

    # Routing ---------------------------------------------------------------------------

    def hosted(self, domain: str) -> bool:
        """A domain served here: ours or a component's."""
        return domain == self.server.domain or domain in self.server.component_domains()

    def route_for(self, domain: str) -> RemoteRoute | None:
        """For the router: the route to a domain served elsewhere."""
        if self.hosted(domain):
            return None
        return RemoteRoute(self, domain)

    def send(self, stanza: Element, remote: str) -> None:
        frm = stanza.get("from")
        try:
            sender: JID | None = parse_jid(frm) if frm else None
        except JIDError:
            sender = None
        if sender is None or not self.hosted(sender.domain):
            # Only our own domains may appear as senders on our links.
            log.warning("s2s: not relaying a stanza from %s to %s", frm, remote)
            self.bounce(stanza, StanzaError("not-allowed", "not relayed"))
            return
        link, new = self.link(sender.domain, remote)
        link.send(stanza)
        if new:
            link.start()

    def link(self, local: str, remote: str) -> tuple[OutgoingLink, bool]:
        """The link for a domain pair, and whether it is new: the caller gives a new link
        its first work, then starts it (a connection can fail before start() returns)."""
        found = self.links.get((local, remote))
        if found is not None and not found.closed:
            return found, False
        link = OutgoingLink(self, local, remote)
        self.links[(local, remote)] = link
        return link, True

    def link_closed(self, link: OutgoingLink) -> None:
        if self.links.get((link.local, link.remote)) is link:
            del self.links[(link.local, link.remote)]

    def bounce(self, stanza: Element, error: StanzaError) -> None:
        """Return a stanza we could not deliver to its sender (never an error to an error)."""
        try:
            self.server.router.deliver_error(stanza, error)
        except Exception:
            log.exception("s2s: bouncing a stanza failed")

    def send_reply(self, reply: Element) -> None:
        """Route an error reply that we generated for a stanza from a remote server."""
        try:
            to = parse_jid(reply.get("to", ""))
            frm = parse_jid(reply.get("from", "")) if reply.get("from") else None
        except JIDError:
            return
        sender = frm or JID(None, self.server.domain, None)
        self.server.router.route(reply, sender, to)

    def connect(self, target: Target, factory: Any) -> defer.Deferred[Any]:
        """Open a TCP connection to ``target``; fires with the protocol."""
        if self._connect is not None:
            return self._connect(target, factory)
        from twisted.internet.endpoints import HostnameEndpoint

        endpoint = HostnameEndpoint(
            self.reactor,
            target.host.encode("idna"),
            target.port,
            timeout=self.config.connect_timeout,
        )
        return endpoint.connect(factory)

    # Dialback and certificates ---------------------------------------------------------

    def dialback_key(self, *, receiving: str, originating: str, stream_id: str) -> str:
        return dialback.generate_key(self.secret, receiving, originating, stream_id)

    def check_dialback_key(
        self, *, receiving: str, originating: str, stream_id: str, key: str
    ) -> bool:
        return dialback.check_key(self.secret, receiving, originating, stream_id, key)

    def verify_dialback(
        self, *, local: str, remote: str, stream_id: str, key: str, callback: VerifyCallback
    ) -> None:
        """Ask ``remote``'s authoritative server about a key it sent to ``local`` on our
        incoming stream ``stream_id`` (XEP-0220 §2.1.2), over our link to it."""
        link, new = self.link(local, remote)
        link.verify(stream_id, key, callback)
        if new:
            link.start()

    def check_certificate(self, chain: list[x509.Certificate], domain: str) -> CertCheck:
        return check_certificate(self.trust, chain, domain)

    def own_cert_fits(self, domain: str) -> bool:
        """Whether our certificate names ``domain``, so that SASL EXTERNAL can work for it."""
        return self._own_cert is not None and identity_matches(self._own_cert, domain)

"""TLS for server-to-server streams (RFC 6120 §5, XEP-0368 ``xmpp-server``, RFC 7590).

Both sides present our certificate, and both ask for the peer's but accept any during the
handshake: a self-signed peer still gets an encrypted stream and may authenticate with
dialback, and whether its certificate is trusted for its domain is decided afterwards from the
chain it presented (core/xmpp/certs.py), where the reason can be logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

from core.xmpp.tls import ALPN_SERVER


def _accept_any(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    # The verdict is reached after the handshake, with a reason (see module docstring).
    return True


def _context(cert_path: Path, key_path: Path, *, server: bool) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET)
    ctx.use_certificate_chain_file(str(cert_path))
    ctx.use_privatekey_file(str(key_path))
    ctx.check_privatekey()
    # Ask the peer for its certificate (the server side sends a CertificateRequest); a peer
    # without one is still let in.
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
    if server:
        # Required by OpenSSL once peer certificates are requested on the server side.
        ctx.set_session_id(b"switchboard-s2s")
    return ctx


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class S2STLS:
    """Connection creators for both ends of s2s TLS, built from our certificate files."""

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self._server = _context(cert_path, key_path, server=True)
        self._client = _context(cert_path, key_path, server=False)
        self._server.set_alpn_select_callback(_select_xmpp_server)

    def serverConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        return SSL.Connection(self._server, None)

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        # Twisted's own creator interface; the s2s code uses client_for() to name the peer.
        return SSL.Connection(self._client, None)

    def client_for(self, domain: str, *, direct: bool = False) -> ClientCreator:
        """A creator for an outgoing stream to ``domain``: SNI names the domain (RFC 7590
        §3.1 asks for the domain, not the SRV target), ALPN ``xmpp-server`` on direct TLS."""
        return ClientCreator(self._client, domain, direct)


@implementer(IOpenSSLClientConnectionCreator)
class ClientCreator:
    def __init__(self, ctx: SSL.Context, domain: str, direct: bool) -> None:
        self._ctx = ctx
        self._domain = domain
        self._direct = direct

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)
        try:
            conn.set_tlsext_host_name(self._domain.encode("idna"))
        except (UnicodeError, ValueError):
            pass  # an IP literal or a name SNI cannot carry: no server name then
        if self._direct:
            conn.set_alpn_protos([ALPN_SERVER])
        return conn


def _select_xmpp_server(conn: SSL.Connection, offered: list[bytes]) -> bytes | Any:
    # XEP-0368 §3: xmpp-server when offered; RFC 7301 §3.2 lets us ignore any other offer.
    return ALPN_SERVER if ALPN_SERVER in offered else SSL.NO_OVERLAPPING_PROTOCOLS

"""TLS helpers: certificates, context factories and channel-binding data.

RFC 6120 §5 (STARTTLS), XEP-0368 (direct TLS, ALPN ``xmpp-client``), RFC 9266 and RFC 5929
(channel bindings for SCRAM-PLUS).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl

from core.xmpp.sasl import TLS_EXPORTER_LABEL, tls_server_end_point

log = logging.getLogger(__name__)

ALPN_CLIENT = b"xmpp-client"
ALPN_SERVER = b"xmpp-server"


def ensure_self_signed(cert_path: Path, key_path: Path, domain: str, *, days: int = 3650) -> bool:
    """Create a self-signed certificate for ``domain`` (and its subdomains) unless one exists.

    Returns True when a new certificate was written."""
    if cert_path.exists() and key_path.exists():
        return False
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName]
    try:
        sans = [x509.IPAddress(ipaddress.ip_address(domain.strip("[]")))]
    except ValueError:
        sans = [x509.DNSName(domain)]
        # RFC 6125 §7.2: no wildcard over a single label ("*.localhost"); verifiers such as
        # service_identity refuse the whole certificate when it carries one.
        if "." in domain:
            sans.append(x509.DNSName(f"*.{domain}"))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path.write_bytes(key_bytes)
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("created a self-signed certificate for %s at %s", domain, cert_path)
    return True


class ServerTLS:
    """The server's certificate and the context factories built from it."""

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        pem = cert_path.read_bytes()
        self.certificate = ssl.Certificate.loadPEM(pem)
        chain = x509.load_pem_x509_certificates(pem)
        self._chain = chain
        self.cert_der = chain[0].public_bytes(serialization.Encoding.DER)
        # cryptography objects: pyOpenSSL deprecates its own X509 and PKey types.
        self._private_key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        # RFC 5929 §4.1 defines no binding for certificates signed with e.g. Ed25519.
        try:
            self.end_point: bytes | None = tls_server_end_point(self.cert_der)
        except ValueError:
            self.end_point = None
        # One set of options (one OpenSSL context) per ALPN list, shared by every connection:
        # building a context per STARTTLS (loading the key, setting ciphers) cost about a
        # tenth of a TLS login's CPU, and a shared context lets clients resume sessions.
        self._options: dict[tuple[bytes, ...] | None, ssl.CertificateOptions] = {}

    def options(self, alpn: list[bytes] | None = None) -> ssl.CertificateOptions:
        """Server options; ``alpn`` lists the protocols chosen when the client offers them
        (XEP-0368: ``xmpp-client`` on the direct TLS port, none for STARTTLS)."""
        key = tuple(alpn) if alpn is not None else None
        found = self._options.get(key)
        if found is None:
            found = self._options[key] = self._new_options(alpn)
        return found

    def _new_options(self, alpn: list[bytes] | None) -> ssl.CertificateOptions:
        return _ServerOptions(
            privateKey=self._private_key,  # type: ignore[arg-type]
            certificate=self._chain[0],  # type: ignore[arg-type]
            extraCertChain=self._chain[1:] or None,  # type: ignore[arg-type]
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            acceptableProtocols=alpn,
        )


class _ServerOptions(ssl.CertificateOptions):
    """CertificateOptions that ignore an ALPN offer they share no protocol with.

    Twisted answers such an offer with an empty selection, which OpenSSL turns into a fatal
    internal_error alert: a client offering ALPN on a STARTTLS port (where we select none)
    could not connect at all. RFC 7301 §3.2 lets a server that does not use ALPN ignore the
    extension, so we answer "no overlap" and the handshake goes on without a protocol."""

    _alpn_fixed = False

    def getContext(self) -> SSL.Context:
        ctx = super().getContext()
        if not self._alpn_fixed:
            self._alpn_fixed = True
            ctx.set_alpn_select_callback(_alpn_selector(list(self._acceptableProtocols or ())))
        return ctx


def _alpn_selector(accepted: list[bytes]) -> Any:
    def select(conn: SSL.Connection, offered: list[bytes]) -> bytes | Any:
        for proto in accepted:
            if proto in offered:
                return proto
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def channel_bindings(transport: Any, server_end_point: bytes | None) -> dict[str, bytes]:
    """The channel-binding data of an established TLS connection, by type name.

    tls-exporter (RFC 9266) only on TLS 1.3, where it is safe without extended master secret;
    tls-server-end-point (RFC 5929) on any version."""
    conn = _ssl_connection(transport)
    if conn is None:
        return {}
    out = {} if server_end_point is None else {"tls-server-end-point": server_end_point}
    try:
        if conn.get_protocol_version_name() == "TLSv1.3":
            out["tls-exporter"] = conn.export_keying_material(TLS_EXPORTER_LABEL, 32, b"")
    except SSL.Error:
        log.debug("no keying material exporter on this connection")
    return out


def tls_version(transport: Any) -> str | None:
    conn = _ssl_connection(transport)
    return None if conn is None else conn.get_protocol_version_name()


def _ssl_connection(transport: Any) -> SSL.Connection | None:
    handle = getattr(transport, "getHandle", lambda: None)()
    return handle if isinstance(handle, SSL.Connection) else None

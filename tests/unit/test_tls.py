"""TLS helpers (core/xmpp/tls.py): certificates, server options with ALPN (XEP-0368) and the
channel-binding data for SCRAM-PLUS (RFC 9266, RFC 5929), over in-memory TLS connections."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.internet.task import Clock

from core.xmpp.sasl import TLS_EXPORTER_LABEL, tls_server_end_point
from core.xmpp.tls import ServerTLS, channel_bindings, ensure_self_signed, tls_version
from tests.unit.helpers import MemoryTransport, Received, pump

NOW = datetime.datetime.now(datetime.UTC)


def sans(cert_path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in ext]


def handshake(
    server_options: Any, client_options: Any
) -> tuple[MemoryTransport, MemoryTransport, Received]:
    """A TLS connection in memory; returns (server end, client end, what the server read)."""
    clock = Clock()
    server, client = (
        MemoryTransport(clock, client=False, port=5223),
        MemoryTransport(clock, client=True, port=5223),
    )
    received = Received()
    server.attach(received)
    client.attach(Received())
    server.startTLS(server_options)
    client.startTLS(client_options)
    client.write(b"ping")
    pump(clock, server, client)
    return server, client, received


def client_options(
    trust: ssl.Certificate, *, alpn: list[bytes] | None = None, max_version: Any = None
) -> Any:
    extra = {} if max_version is None else {"lowerMaximumSecurityTo": max_version}
    return ssl.optionsForClientTLS(
        "localhost", trustRoot=trust, acceptableProtocols=alpn, extraCertificateOptions=extra
    )


def established(server: MemoryTransport, client: MemoryTransport, received: Received) -> bool:
    """The handshake finished, the client accepted the certificate and data went through."""
    assert server.tls is not None and client.tls is not None
    return bytes(received.data) == b"ping" and not client.tls.disconnecting


@pytest.fixture
def tls(tmp_path: Path) -> ServerTLS:
    ensure_self_signed(tmp_path / "c.crt", tmp_path / "c.key", "localhost")
    return ServerTLS(tmp_path / "c.crt", tmp_path / "c.key")


# -- Certificates ------------------------------------------------------------------------


def test_self_signed_created_once(tmp_path: Path) -> None:
    """The certificate and a private key readable by the owner only are written once."""
    cert, key = tmp_path / "tls" / "d.crt", tmp_path / "tls" / "d.key"
    assert ensure_self_signed(cert, key, "example.com") is True
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = cert.read_bytes()
    assert ensure_self_signed(cert, key, "example.com") is False
    assert cert.read_bytes() == first
    assert sans(cert) == ["example.com", "*.example.com"]
    parsed = x509.load_pem_x509_certificate(first)
    assert parsed.not_valid_after_utc > NOW + datetime.timedelta(days=3000)


@pytest.mark.parametrize(
    ("domain", "expected"),
    [("localhost", ["localhost"]), ("127.0.0.1", ["127.0.0.1"]), ("[::1]", ["::1"])],
)
def test_self_signed_names(tmp_path: Path, domain: str, expected: list[str]) -> None:
    """RFC 6125 §7.2: no wildcard over a single label; an IP domain gets an IP name."""
    ensure_self_signed(tmp_path / "c.crt", tmp_path / "c.key", domain)
    assert sans(tmp_path / "c.crt") == expected


def test_server_end_point_of_the_certificate(tls: ServerTLS) -> None:
    """RFC 5929 §4.1: the binding is the hash of the DER certificate."""
    assert tls.end_point == tls_server_end_point(tls.cert_der)
    assert tls.certificate.dump() == tls.cert_der  # DER by default


def _cert(
    subject: str,
    key: Any,
    issuer: str,
    issuer_key: Any,
    *,
    ca: bool,
    algorithm: Any = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    return builder.sign(issuer_key, algorithm)


def _pem(*items: Any) -> bytes:
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += item.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    return out


def test_intermediate_certificates_are_sent(tmp_path: Path) -> None:
    """A certificate file with a chain serves the whole chain: a client that trusts only the
    root verifies the server through the intermediate."""
    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("Root", root_key, "Root", root_key, ca=True, algorithm=hashes.SHA256())
    inter = _cert("Inter", inter_key, "Root", root_key, ca=True, algorithm=hashes.SHA256())
    leaf = _cert("localhost", leaf_key, "Inter", inter_key, ca=False, algorithm=hashes.SHA256())
    (tmp_path / "chain.crt").write_bytes(_pem(leaf, inter))
    (tmp_path / "leaf.key").write_bytes(_pem(leaf_key))
    server_tls = ServerTLS(tmp_path / "chain.crt", tmp_path / "leaf.key")
    trust = ssl.Certificate.loadPEM(_pem(root))
    assert established(*handshake(server_tls.options(), client_options(trust)))


def test_ed25519_certificate_has_no_server_end_point(tmp_path: Path) -> None:
    """RFC 5929 §4.1 leaves tls-server-end-point undefined for Ed25519 signatures: it is not
    offered, while tls-exporter still is on TLS 1.3."""
    key = ed25519.Ed25519PrivateKey.generate()
    cert = _cert("localhost", key, "localhost", key, ca=False)
    (tmp_path / "e.crt").write_bytes(_pem(cert))
    (tmp_path / "e.key").write_bytes(_pem(key))
    server_tls = ServerTLS(tmp_path / "e.crt", tmp_path / "e.key")
    assert server_tls.end_point is None
    trust = ssl.Certificate.loadPEM(_pem(cert))
    server, client, received = handshake(server_tls.options(), client_options(trust))
    assert established(server, client, received)
    assert set(channel_bindings(server, server_tls.end_point)) == {"tls-exporter"}


# -- ALPN (XEP-0368) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_alpn", "client_alpn", "selected"),
    [
        (None, None, None),
        (None, [b"xmpp-client"], None),
        ([b"xmpp-client"], [b"xmpp-client"], b"xmpp-client"),
        ([b"xmpp-client"], [b"h2", b"xmpp-client"], b"xmpp-client"),
        ([b"xmpp-client"], [b"h2"], None),
        ([b"xmpp-client"], None, None),
    ],
    ids=["none", "starttls-offered", "direct", "direct-second", "direct-other", "direct-none"],
)
def test_alpn(
    tls: ServerTLS,
    server_alpn: list[bytes] | None,
    client_alpn: list[bytes] | None,
    selected: bytes | None,
) -> None:
    """The direct TLS port selects xmpp-client when offered; an offer with nothing in common
    (any offer on the STARTTLS port) is ignored instead of failing the handshake."""
    server, client, received = handshake(
        tls.options(alpn=server_alpn), client_options(tls.certificate, alpn=client_alpn)
    )
    assert established(server, client, received)
    conn = client.getHandle()
    assert conn is not None
    assert (conn.get_alpn_proto_negotiated() or None) == selected


# -- Channel bindings (RFC 9266, RFC 5929) -----------------------------------------------


def test_channel_bindings_on_tls_13(tls: ServerTLS) -> None:
    """TLS 1.3 offers tls-exporter and tls-server-end-point, equal to what the client
    computes on its side of the same connection."""
    server, client, received = handshake(tls.options(), client_options(tls.certificate))
    assert established(server, client, received)
    assert tls_version(server) == "TLSv1.3"
    bindings = channel_bindings(server, tls.end_point)
    assert list(bindings) == ["tls-server-end-point", "tls-exporter"]
    conn = client.getHandle()
    assert conn is not None
    assert bindings["tls-exporter"] == conn.export_keying_material(TLS_EXPORTER_LABEL, 32, b"")
    peer = conn.get_peer_certificate(as_cryptography=True)
    assert peer is not None
    assert bindings["tls-server-end-point"] == tls_server_end_point(
        peer.public_bytes(serialization.Encoding.DER)
    )


def test_channel_bindings_on_tls_12(tls: ServerTLS) -> None:
    """RFC 9266 §3: no tls-exporter below TLS 1.3 (no extended master secret guarantee)."""
    server, client, received = handshake(
        tls.options(),
        client_options(tls.certificate, max_version=ssl.TLSVersion.TLSv1_2),
    )
    assert established(server, client, received)
    assert tls_version(server) == "TLSv1.2"
    assert list(channel_bindings(server, tls.end_point)) == ["tls-server-end-point"]


def test_no_channel_bindings_without_tls() -> None:
    """A plain transport has no TLS version and no channel bindings."""
    plain = MemoryTransport(Clock(), client=False, port=5222)
    assert channel_bindings(plain, b"x") == {}
    assert tls_version(plain) is None
    assert channel_bindings(object(), b"x") == {}


def test_options_are_built_once_per_alpn_list(tls: ServerTLS) -> None:
    """Every STARTTLS shares one OpenSSL context (no key loading per connection); the
    direct TLS port, which selects xmpp-client by ALPN, has its own."""
    starttls = tls.options()
    assert tls.options() is starttls
    assert starttls.getContext() is tls.options().getContext()
    direct = tls.options(alpn=[b"xmpp-client"])
    assert direct is tls.options(alpn=[b"xmpp-client"])
    assert direct is not starttls

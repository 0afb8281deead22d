"""Peer certificate verification for s2s (RFC 6120 §13.7.2, RFC 6125, XEP-0178)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.xmpp.certs import (
    OID_XMPP_ADDR,
    TrustStoreError,
    check_certificate,
    identity_matches,
    load_trust_store,
    verify_chain,
    xmpp_addrs,
)

NOW = datetime.datetime.now(datetime.UTC)
ID_ON_DNS_SRV = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "Test CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    names: list[x509.GeneralName] | None,
    *,
    cn: str = "server",
    expired: bool = False,
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    end = NOW - datetime.timedelta(hours=1) if expired else NOW + datetime.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(end)
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca[1], hashes.SHA256())


def utf8(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 128
    return bytes([0x0C, len(raw)]) + raw


def ia5(text: str) -> bytes:
    raw = text.encode()
    return bytes([0x16, len(raw)]) + raw


def store_with(tmp_path: Path, *certs: x509.Certificate) -> object:
    path = tmp_path / "trust.pem"
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return load_trust_store(str(path))


def test_dns_id_and_wildcards() -> None:
    """A DNS-ID names the domain; a wildcard covers exactly one leftmost label (RFC 6125 §6.4.3)."""
    ca = make_ca()
    cert = issue(ca, [x509.DNSName("example.com"), x509.DNSName("*.chat.example.com")])
    assert identity_matches(cert, "example.com")
    assert identity_matches(cert, "EXAMPLE.com")
    assert identity_matches(cert, "rooms.chat.example.com")
    assert not identity_matches(cert, "chat.example.com")
    assert not identity_matches(cert, "a.b.chat.example.com")
    assert not identity_matches(cert, "example.org")


def test_srv_id_and_xmpp_addr() -> None:
    """SRV-ID _xmpp-server.<domain> and XmppAddr otherNames name a domain (RFC 6120 §13.7.1.2)."""
    ca = make_ca()
    srv = issue(ca, [x509.OtherName(ID_ON_DNS_SRV, ia5("_xmpp-server.srv.example"))])
    assert identity_matches(srv, "srv.example")
    assert not identity_matches(srv, "other.example")
    addr = issue(ca, [x509.OtherName(OID_XMPP_ADDR, utf8("Addr.Example"))])
    assert xmpp_addrs(addr) == {"addr.example"}
    assert identity_matches(addr, "addr.example")
    assert not identity_matches(addr, "other.example")


def test_common_name_alone_is_not_an_identity() -> None:
    """RFC 6125 §6.4.4: with no subjectAltName the CN is not consulted."""
    cert = issue(make_ca(), None, cn="legacy.example")
    assert not identity_matches(cert, "legacy.example")


def test_chain_verification_reasons(tmp_path: Path) -> None:
    """Trusted, untrusted, expired, and nothing presented: each with its reason."""
    ca, other = make_ca(), make_ca("Other CA")
    store = store_with(tmp_path, ca[0])
    good = issue(ca, [x509.DNSName("peer.example")])
    assert verify_chain(store, [good]) is None  # type: ignore[arg-type]
    problem = verify_chain(store, [issue(other, [x509.DNSName("peer.example")])])  # type: ignore[arg-type]
    assert problem is not None and "unable to get local issuer" in problem
    problem = verify_chain(store, [issue(ca, [x509.DNSName("peer.example")], expired=True)])  # type: ignore[arg-type]
    assert problem is not None and "expired" in problem
    assert verify_chain(store, []) == "no certificate was presented"  # type: ignore[arg-type]


def test_check_certificate_needs_trust_and_identity(tmp_path: Path) -> None:
    """Valid only when the chain is trusted and the certificate names the domain."""
    ca = make_ca()
    store = store_with(tmp_path, ca[0])
    cert = issue(ca, [x509.DNSName("peer.example")])
    ok = check_certificate(store, [cert], "peer.example")  # type: ignore[arg-type]
    assert ok and ok.valid
    wrong = check_certificate(store, [cert], "spoof.example")  # type: ignore[arg-type]
    assert not wrong and wrong.reason == "certificate does not name spoof.example"
    selfsigned = make_ca("peer.example")[0]
    bad = check_certificate(store, [selfsigned], "peer.example")  # type: ignore[arg-type]
    assert not bad and "self-signed" in bad.reason


def test_trust_store_sources(tmp_path: Path) -> None:
    """A PEM file, a directory of PEM files, or the system roots; a store without any
    certificate is a configuration error."""
    ca = make_ca()
    pem = ca[0].public_bytes(serialization.Encoding.PEM)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "ca.pem").write_bytes(pem)
    (tmp_path / "dir" / "README").write_text("not a certificate")
    cert = issue(ca, [x509.DNSName("peer.example")])
    from_dir = load_trust_store(str(tmp_path / "dir"))
    assert verify_chain(from_dir, [cert]) is None
    assert verify_chain(load_trust_store(""), [cert]) is not None  # not a system root
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(TrustStoreError):
        load_trust_store(str(tmp_path / "empty.pem"))
    with pytest.raises(TrustStoreError):
        load_trust_store(str(tmp_path / "missing.pem"))


def test_missing_trust_store_is_a_config_problem(tmp_path: Path) -> None:
    """`switchboard config check` names a trust store that is not there."""
    from core.runtime.config import ConfigError, load_config

    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError) as info:
        load_config(None, {"SWITCHBOARD_S2S_TRUST_STORE": str(missing)})
    expected = f"s2s.trust_store: {missing} does not exist"
    assert any(p.startswith(expected) for p in info.value.problems)
    missing.write_text("")
    assert load_config(None, {"SWITCHBOARD_S2S_TRUST_STORE": str(missing)}).s2s.trust_store

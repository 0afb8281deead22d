"""Certificate verification for server-to-server streams (RFC 6120 §13.7.2, RFC 6125, XEP-0178).

Two questions are asked of a peer's certificate, and each answer comes with a reason that an
operator can read in the log:

* does its chain lead to a trusted root (PKIX, checked with pyOpenSSL against the configured
  trust store, or the system's when none is configured)?
* does it name the domain (RFC 6125 §6 with RFC 6120 §13.7.1.2's identifiers: a DNS-ID, an
  SRV-ID ``_xmpp-server.<domain>``, or an XmppAddr otherName; the CN is not consulted)?

The TLS layer accepts any certificate during the handshake (see core/s2s/tls.py); what the
answers allow (SASL EXTERNAL, dialback, nothing) is decided by the s2s streams.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, SRV_ID, verify_service_identity

log = logging.getLogger(__name__)

# RFC 6120 §13.7.1.4: id-on-xmppAddr.
OID_XMPP_ADDR = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.5")


class TrustStoreError(Exception):
    """The configured trust store cannot be read."""


def load_trust_store(path: str = "") -> crypto.X509Store:
    """Trusted roots: a PEM file or a directory of PEM files, or the system's when empty."""
    store = crypto.X509Store()
    if not path:
        paths = ssl.get_default_verify_paths()
        cafile = paths.cafile if paths.cafile and Path(paths.cafile).is_file() else None
        capath = paths.capath if paths.capath and Path(paths.capath).is_dir() else None
        if cafile or capath:
            store.load_locations(cafile, capath)
        return store
    where = Path(path)
    files = sorted(p for p in where.iterdir() if p.is_file()) if where.is_dir() else [where]
    loaded = 0
    for file in files:
        try:
            certs = x509.load_pem_x509_certificates(file.read_bytes())
        except (OSError, ValueError) as e:
            if where.is_dir():
                continue  # a directory may hold other files (hash links, READMEs)
            raise TrustStoreError(f"cannot read trust store {file}: {e}") from e
        for cert in certs:
            store.add_cert(crypto.X509.from_cryptography(cert))
            loaded += 1
    if not loaded:
        raise TrustStoreError(f"no PEM certificates in trust store {path}")
    return store


@dataclass(frozen=True, slots=True)
class CertCheck:
    """The verdict on a peer certificate for one domain."""

    valid: bool
    reason: str  # why not, or what matched

    def __bool__(self) -> bool:
        return self.valid


def verify_chain(store: crypto.X509Store, chain: list[x509.Certificate]) -> str | None:
    """None when ``chain`` (leaf first) leads to a root in ``store``, else the reason."""
    if not chain:
        return "no certificate was presented"
    leaf, *rest = chain
    ctx = crypto.X509StoreContext(
        store,
        crypto.X509.from_cryptography(leaf),
        [crypto.X509.from_cryptography(c) for c in rest],
    )
    try:
        ctx.verify_certificate()
    except crypto.X509StoreContextError as e:
        return f"certificate chain does not verify: {e}"
    return None


def identity_matches(cert: x509.Certificate, domain: str) -> bool:
    """Whether ``cert`` names ``domain`` as a DNS-ID, an SRV-ID or an XmppAddr (RFC 6120
    §13.7.1.2, RFC 6125 §6.4, wildcards only as the whole leftmost label)."""
    try:
        patterns = extract_patterns(cert)
    except CertificateError:
        patterns = []
    for ident in (DNS_ID(domain), SRV_ID(f"_xmpp-server.{domain}")):
        try:
            verify_service_identity(patterns, obligatory_ids=[ident], optional_ids=[])
            return True
        except (VerificationError, CertificateError):
            continue
    return domain.lower() in xmpp_addrs(cert)


def xmpp_addrs(cert: x509.Certificate) -> set[str]:
    """The id-on-xmppAddr otherNames of ``cert`` (UTF8String values), lower-cased."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    out = set()
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id != OID_XMPP_ADDR:
            continue
        value = _der_utf8(other.value)
        if value is not None:
            out.add(value.lower())
    return out


def _der_utf8(der: bytes) -> str | None:
    """The text of a DER UTF8String (tag 0x0C), or None for anything else."""
    if len(der) < 2 or der[0] != 0x0C:
        return None
    length, i = der[1], 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or len(der) < 2 + n:
            return None
        length, i = int.from_bytes(der[2 : 2 + n], "big"), 2 + n
    if len(der) != i + length:
        return None
    try:
        return der[i:].decode("utf-8")
    except UnicodeDecodeError:
        return None


def check_certificate(
    store: crypto.X509Store, chain: list[x509.Certificate], domain: str
) -> CertCheck:
    """Whether ``chain`` is a trusted certificate for ``domain``, with the reason."""
    problem = verify_chain(store, chain)
    if problem is not None:
        return CertCheck(False, problem)
    if not identity_matches(chain[0], domain):
        return CertCheck(False, f"certificate does not name {domain}")
    return CertCheck(True, f"trusted certificate for {domain}")


def peer_chain(transport: Any) -> list[x509.Certificate]:
    """The certificates the peer presented on a TLS transport, leaf first; [] without TLS."""
    handle = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(handle, SSL.Connection):
        return []
    leaf = handle.get_peer_certificate(as_cryptography=True)
    if leaf is None:
        return []
    # The server side's peer chain leaves out the leaf, the client side's starts with it.
    rest = handle.get_peer_cert_chain(as_cryptography=True) or []
    if rest and _der(rest[0]) == _der(leaf):
        rest = rest[1:]
    return [leaf, *rest]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)

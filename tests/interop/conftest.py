"""Fixtures for interop tests: a real Prosody (Debian's package) on free loopback ports, and a
test certificate authority made with ``cryptography``.

Prosody resolves the domains it federates with through libunbound (lua-unbound). Each
Prosody here gets an unbound configuration of its own: the zone ``test.`` answered locally, an
SRV record for the Switchboard domain pointing at that core's s2s port, and a hosts file of its
own naming 127.0.0.1. Nothing on the machine is changed (no /etc/hosts entry, no system
service), and no query leaves the process.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness import free_port, wait_port


def prosody_missing() -> str | None:
    """Why Prosody cannot run here, or None when it can."""
    if shutil.which("prosody") is None or shutil.which("prosodyctl") is None:
        return "prosody is not installed (apt-get install prosody lua-unbound)"
    lua = shutil.which("lua5.4")
    if lua is None:
        return "lua5.4 (prosody's interpreter) is not installed"
    probe = subprocess.run(
        [lua, "-e", 'require "lunbound"'], capture_output=True, timeout=10, check=False
    )
    if probe.returncode != 0:
        return "lua-unbound is missing: prosody cannot be given its own DNS answers"
    return None


# Test CA -------------------------------------------------------------------------------


@dataclass
class CertAuthority:
    """A certificate authority for one test module; issues server certificates."""

    directory: Path
    key: ec.EllipticCurvePrivateKey = field(init=False)
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Switchboard Test CA")])
        now = datetime.datetime.now(datetime.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @property
    def path(self) -> Path:
        return self.directory / "ca.pem"

    def issue(self, domain: str) -> tuple[Path, Path]:
        """A certificate naming ``domain`` (DNS-ID), signed by this CA; (cert, key) paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path = self.directory / f"{domain}.crt"
        key_path = self.directory / f"{domain}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path


def self_signed(directory: Path, domain: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``domain`` (the dialback deployments)."""
    from core.xmpp.tls import ensure_self_signed

    cert, key = directory / f"{domain}.crt", directory / f"{domain}.key"
    ensure_self_signed(cert, key, domain)
    return cert, key


# Prosody -------------------------------------------------------------------------------

_CONFIG = """\
-- Written by tests/interop/conftest.py for one test module.
run_as_root = true
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
certificates = "{dir}/certs"
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{dir}/prosody.log" }} }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
s2s_ports = {{ {s2s_port} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{
    "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "version"; "vcard";
    "presence"; "message"; "iq"; "posix";
}}
modules_disabled = {{ "s2s_bidi" }}
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = {secure_auth}
s2s_timeout = 10
ssl = {{ certificate = "{cert}"; key = "{key}";{cafile} }}
unbound = {{
    resolvconf = false;
    hoststxt = "{dir}/hosts";
    options = {{
        ["local-zone:"] = "test. static";
        ["local-data:"] = "_xmpp-server._tcp.{peer}. 60 IN SRV 0 0 {peer_port} {peer}.";
    }};
}}
VirtualHost "{domain}"
"""


@dataclass
class Prosody:
    """A running Prosody serving ``domain``; its peer is reached through its own DNS."""

    directory: Path
    domain: str
    c2s_port: int
    s2s_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.directory / "prosody.cfg.lua"

    def register(self, user: str, password: str) -> None:
        subprocess.run(
            ["prosodyctl", "--config", str(self.config), "register", user, self.domain, password],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def start(self) -> Prosody:
        out = (self.directory / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            ["prosody", "--config", str(self.config), "-F"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        out.close()
        wait_port(self.c2s_port, timeout=20, proc=self.proc)
        wait_port(self.s2s_port, timeout=20, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        path = self.directory / "prosody.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until a line of Prosody's log contains ``text``; returns that line."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log().splitlines():
                if text in line:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no line of prosody's log contains {text!r}")
            time.sleep(0.05)


def write_prosody(
    directory: Path,
    *,
    domain: str,
    cert: tuple[Path, Path],
    peer: str,
    peer_port: int,
    cafile: Path | None = None,
    secure_auth: bool = False,
) -> Prosody:
    """Configure (not start) a Prosody for ``domain`` whose DNS sends ``peer`` to
    127.0.0.1:``peer_port``."""
    (directory / "data").mkdir(parents=True, exist_ok=True)
    (directory / "certs").mkdir(exist_ok=True)
    (directory / "hosts").write_text(f"127.0.0.1 {peer}\n")
    server = Prosody(directory, domain, free_port(), free_port())
    server.config.write_text(
        _CONFIG.format(
            dir=directory,
            c2s_port=server.c2s_port,
            s2s_port=server.s2s_port,
            secure_auth="true" if secure_auth else "false",
            cert=cert[0],
            key=cert[1],
            cafile=f' cafile = "{cafile}";' if cafile else "",
            peer=peer,
            peer_port=peer_port,
            domain=domain,
        )
    )
    return server


@pytest.fixture(scope="module")
def prosody_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Prosody]]:
    """Make, start and finally stop Prosody servers; skips when Prosody cannot run here."""
    reason = prosody_missing()
    if reason:
        pytest.skip(reason)
    made: list[Prosody] = []

    def make(**kwargs: object) -> Prosody:
        directory = Path(tmp_path_factory.mktemp("prosody"))
        server = write_prosody(directory, **kwargs)  # type: ignore[arg-type]
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            server.stop()

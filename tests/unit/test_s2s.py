"""Server-to-server streams in memory (RFC 6120 §5, §6, §13.7; XEP-0178; XEP-0220).

Outgoing links and incoming streams of two (or three) s2s services talk over in-memory
connections that run real TLS (tests/unit/helpers.MemoryTransport); time is a task.Clock. No
socket, no sleep, no Redis: the services are given their secret, trust store and certificates.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from core.runtime.config import Config
from core.s2s.inbound import S2SInbound
from core.s2s.resolve import Target
from core.s2s.service import S2SService
from core.xmpp.certs import load_trust_store
from core.xmpp.errors import StanzaError
from core.xmpp.jid import JID
from core.xmpp.ns import NS_CLIENT, NS_TLS, qn
from core.xmpp.stanza import make
from core.xmpp.tls import ensure_self_signed
from tests.unit.helpers import MemoryTransport, pump

A, B, C = "a.example", "b.example", "c.example"
NOW = datetime.datetime.now(datetime.UTC)


class Router:
    """Records what the s2s layer hands the router."""

    def __init__(self) -> None:
        self.routed: list[tuple[etree._Element, JID, JID, Any]] = []
        self.bounced: list[tuple[etree._Element, StanzaError]] = []

    def route(
        self, stanza: etree._Element, sender: JID, to: JID | None, origin: Any = None
    ) -> None:
        self.routed.append((stanza, sender, to, origin))

    def deliver_error(self, stanza: etree._Element, error: StanzaError) -> None:
        self.bounced.append((stanza, error))


@dataclass
class Node:
    domain: str
    service: S2SService
    router: Router
    port: int


@dataclass
class Network:
    """In-memory connections between services: each ``connect`` makes a new pair."""

    clock: Clock = field(default_factory=Clock)
    nodes: dict[int, Node] = field(default_factory=dict)
    pairs: list[tuple[MemoryTransport, MemoryTransport]] = field(default_factory=list)
    silent: set[int] = field(default_factory=set)  # ports that accept and never answer

    def connect(self, target: Target, factory: Any) -> defer.Deferred[Any]:
        if target.port in self.silent:
            proto = factory.buildProtocol(None)
            proto.makeConnection(StringTransport())
            return defer.succeed(proto)
        node = self.nodes.get(target.port)
        if node is None:
            return defer.fail(ConnectionRefusedError("connection refused"))
        client = MemoryTransport(self.clock, client=True, port=len(self.pairs) * 2 + 1)
        server = MemoryTransport(self.clock, client=False, port=len(self.pairs) * 2 + 2)
        inbound = S2SInbound(node.service)
        server.attach(inbound)
        if target.direct_tls:
            # XEP-0368: the listener speaks TLS from the first byte.
            server.startTLS(node.service.tls)
            inbound.tls_active = True
        proto = factory.buildProtocol(None)
        client.attach(proto)
        self.pairs.append((client, server))
        return defer.succeed(proto)

    def pump(self) -> None:
        for _ in range(50):
            if not any(pump(self.clock, a, b) for a, b in list(self.pairs)):
                return
        raise AssertionError("the network never went quiet")


def make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Unit CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(ca: Any, domain: str, directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(ca[1], hashes.SHA256())
    )
    cert_path, key_path = directory / f"{domain}.crt", directory / f"{domain}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def add_node(
    net: Network,
    tmp_path: Path,
    domain: str,
    *,
    ca: Any = None,
    components: tuple[str, ...] = (),
    **s2s: Any,
) -> Node:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = Config(domain=domain)
    for name, value in s2s.items():
        setattr(config.s2s, name, value)
    router = Router()
    server = SimpleNamespace(
        config=config,
        domain=domain,
        reactor=net.clock,
        router=router,
        component_domains=lambda: list(components),
        spawn=lambda coro: coro.close(),
    )
    service = S2SService(server, connect=net.connect)  # type: ignore[arg-type]
    service.secret = f"secret of {domain}"
    if ca is not None:
        cert, key = issue(ca, domain, tmp_path)
        trust = tmp_path / "ca.pem"
        trust.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
        service.trust = load_trust_store(str(trust))
    else:
        cert, key = tmp_path / f"{domain}.crt", tmp_path / f"{domain}.key"
        ensure_self_signed(cert, key, domain)
        service.trust = load_trust_store("")
    service.load_certificate(cert, key)
    port = 5000 + len(net.nodes)
    node = Node(domain, service, router, port)
    net.nodes[port] = node
    for other in net.nodes.values():
        for name in (domain, *components):
            other.service.config.hosts[name] = f"127.0.0.1:{port}"
        for name in (other.domain, *other.service.server.component_domains()):
            config.s2s.hosts[name] = f"127.0.0.1:{other.port}"
    return node


def message(frm: str, to: str, body: str = "hi") -> etree._Element:
    m = make("message", frm=frm, to=to, type="chat", id=body)
    etree.SubElement(m, qn(NS_CLIENT, "body")).text = body
    return m


def send(node: Node, stanza: etree._Element) -> None:
    to = JID.parse(stanza.get("to", ""))
    route = node.service.route_for(to.domain)
    assert route is not None
    route.send(stanza)


def bodies(node: Node) -> list[str]:
    return [s.findtext(qn(NS_CLIENT, "body")) or "" for s, *_ in node.router.routed]


def bounced(node: Node) -> list[tuple[str, str]]:
    return [(s.get("id", ""), e.condition) for s, e in node.router.bounced]


# Federation over TLS --------------------------------------------------------------------


def test_dialback_over_tls_between_two_servers(tmp_path: Path) -> None:
    """Self-signed certificates: TLS, then dialback with a verification round trip to the
    authoritative server; queued stanzas then arrive in order, in jabber:client."""
    net = Network()
    a, b = add_node(net, tmp_path / "a", A), add_node(net, tmp_path / "b", B)
    send(a, message(f"alice@{A}/r", f"bob@{B}", "one"))
    send(a, message(f"alice@{A}/r", f"bob@{B}", "two"))
    net.pump()
    assert bodies(b) == ["one", "two"]
    stanza, sender, to, origin = b.router.routed[0]
    assert stanza.tag == qn(NS_CLIENT, "message")
    assert (str(sender), str(to)) == (f"alice@{A}/r", f"bob@{B}")
    assert isinstance(origin, S2SInbound) and origin.tls_active
    assert origin.authenticated == {A: {B}}
    link = a.service.links[(A, B)]
    assert link.ready and link.how == "dialback"
    assert link.stream is not None and link.stream.transport.getHandle() is not None
    # b verified the key by asking a over its own link to a, which a answered.
    assert (B, A) in b.service.links
    assert not bounced(a) and not bounced(b)


def test_sasl_external_with_trusted_certificates(tmp_path: Path) -> None:
    """Certificates from a CA both trust: SASL EXTERNAL in both directions, no dialback."""
    net = Network()
    ca = make_ca()
    a = add_node(net, tmp_path / "a", A, ca=ca, require_valid_certificates=True)
    b = add_node(net, tmp_path / "b", B, ca=ca, require_valid_certificates=True)
    send(a, message(f"alice@{A}/r", f"bob@{B}", "to b"))
    send(b, message(f"bob@{B}/r", f"alice@{A}", "to a"))
    net.pump()
    assert bodies(b) == ["to b"] and bodies(a) == ["to a"]
    assert a.service.links[(A, B)].how == "SASL EXTERNAL"
    assert b.service.links[(B, A)].how == "SASL EXTERNAL"


def test_untrusted_peer_gets_no_link_when_valid_certificates_are_required(
    tmp_path: Path,
) -> None:
    """s2s.require_valid_certificates and a self-signed peer: the stanzas bounce with
    remote-server-not-found, the reason names the certificate, nothing is delivered."""
    net = Network()
    a = add_node(net, tmp_path / "a", A, require_valid_certificates=True)
    b = add_node(net, tmp_path / "b", B)
    send(a, message(f"alice@{A}/r", f"bob@{B}", "m1"))
    net.pump()
    assert bounced(a) == [("m1", "remote-server-not-found")]
    assert "self-signed" in (a.router.bounced[0][1].text or "")
    assert (A, B) not in a.service.links
    assert not b.router.routed


def test_inbound_refuses_dialback_without_a_valid_certificate(tmp_path: Path) -> None:
    """The receiving side requires valid certificates: it answers the dialback request with
    a not-authorized error; the sender bounces with remote-server-timeout (XEP-0220 §2.4)."""
    net = Network()
    a = add_node(net, tmp_path / "a", A)
    b = add_node(net, tmp_path / "b", B, require_valid_certificates=True)
    send(a, message(f"alice@{A}/r", f"bob@{B}", "m1"))
    net.pump()
    assert bounced(a) == [("m1", "remote-server-timeout")]
    assert "not-authorized" in (a.router.bounced[0][1].text or "")
    assert not b.router.routed


def test_one_link_per_domain_pair(tmp_path: Path) -> None:
    """All traffic of a domain pair shares one link; a component's domain gets its own."""
    net = Network()
    a = add_node(net, tmp_path / "a", A, components=(f"muc.{A}",))
    b = add_node(net, tmp_path / "b", B)
    for i in range(3):
        send(a, message(f"user{i}@{A}/r", f"bob@{B}", f"m{i}"))
    net.pump()
    send(a, message(f"room@muc.{A}/nick", f"bob@{B}", "from the room"))
    net.pump()
    assert bodies(b) == ["m0", "m1", "m2", "from the room"]
    assert sorted(a.service.links) == [(A, B), (f"muc.{A}", B)]
    inbound = {id(o) for *_, o in b.router.routed}
    assert len(inbound) == 2


def test_direct_tls_to_an_xmpps_server_target(tmp_path: Path) -> None:
    """An _xmpps-server SRV target gets TLS from the first byte, with SNI naming the domain
    and ALPN xmpp-server (XEP-0368); no STARTTLS is needed."""
    from twisted.names import dns

    net = Network()
    a, b = add_node(net, tmp_path / "a", A), add_node(net, tmp_path / "b", B)
    del a.service.config.hosts[B]
    record = dns.RRHeader(
        name=b"x", type=dns.SRV, payload=dns.Record_SRV(0, 0, b.port, b"xmpp.b.example")
    )

    def lookup(name: str) -> defer.Deferred[Any]:
        if name == f"_xmpps-server._tcp.{B}":
            return defer.succeed(([record], [], []))
        return defer.fail(OSError("no such record"))

    a.service.lookup = lookup
    send(a, message(f"alice@{A}/r", f"bob@{B}", "direct"))
    net.pump()
    assert bodies(b) == ["direct"]
    stream = a.service.links[(A, B)].stream
    assert stream is not None and stream.target.direct_tls
    assert stream.transport.getHandle().get_alpn_proto_negotiated() == b"xmpp-server"
    server_side = net.pairs[0][1].getHandle()
    assert server_side is not None and server_side.get_servername() == B.encode()
    assert stream.features is not None
    assert stream.features.find(qn(NS_TLS, "starttls")) is None


def test_stanza_from_a_foreign_domain_is_not_relayed(tmp_path: Path) -> None:
    """Only our own domains may appear as senders on our links."""
    net = Network()
    a = add_node(net, tmp_path / "a", A)
    add_node(net, tmp_path / "b", B)
    send(a, message(f"mallory@{C}/r", f"bob@{B}", "relay me"))
    assert bounced(a) == [("relay me", "not-allowed")]
    assert not a.service.links


# Failures -------------------------------------------------------------------------------


def test_unreachable_domain_bounces_each_stanza_once(tmp_path: Path) -> None:
    """Connection refused: every queued stanza comes back once with remote-server-not-found;
    the next stanza tries again."""
    net = Network()
    a = add_node(net, tmp_path / "a", A)
    a.service.config.hosts[C] = "127.0.0.1:1"
    send(a, message(f"alice@{A}/r", f"carol@{C}", "m1"))
    send(a, message(f"alice@{A}/r", f"carol@{C}", "m2"))
    net.pump()
    assert bounced(a) == [("m1", "remote-server-not-found"), ("m2", "remote-server-not-found")]
    net.clock.advance(a.service.config.connect_timeout)
    assert len(bounced(a)) == 2
    send(a, message(f"alice@{A}/r", f"carol@{C}", "m3"))
    assert bounced(a)[-1] == ("m3", "remote-server-not-found")


def test_silent_peer_times_out(tmp_path: Path) -> None:
    """A peer that never answers: after s2s.connect_timeout the stanzas bounce with
    remote-server-timeout, once."""
    net = Network()
    a = add_node(net, tmp_path / "a", A, connect_timeout=5.0)
    a.service.config.hosts[C] = "127.0.0.1:9"
    net.silent.add(9)
    send(a, message(f"alice@{A}/r", f"carol@{C}", "m1"))
    net.clock.advance(4.9)
    assert not bounced(a)
    net.clock.advance(0.2)
    assert bounced(a) == [("m1", "remote-server-timeout")]
    net.clock.advance(60)
    assert len(bounced(a)) == 1
    assert (A, C) not in a.service.links


def test_queue_is_bounded(tmp_path: Path) -> None:
    """Past s2s.queue_limit stanzas waiting for a link, more bounce with resource-constraint."""
    net = Network()
    a = add_node(net, tmp_path / "a", A, queue_limit=2)
    a.service.config.hosts[C] = "127.0.0.1:9"
    net.silent.add(9)
    for i in range(3):
        send(a, message(f"alice@{A}/r", f"carol@{C}", f"m{i}"))
    assert bounced(a) == [("m2", "resource-constraint")]


def test_idle_link_is_closed_and_reopened(tmp_path: Path) -> None:
    """A link without traffic for s2s.idle_timeout closes; the next stanza opens a new one."""
    net = Network()
    a = add_node(net, tmp_path / "a", A, idle_timeout=60.0)
    b = add_node(net, tmp_path / "b", B)
    send(a, message(f"alice@{A}/r", f"bob@{B}", "m1"))
    net.pump()
    first = a.service.links[(A, B)]
    net.clock.advance(30)
    send(a, message(f"alice@{A}/r", f"bob@{B}", "m2"))
    net.pump()
    net.clock.advance(45)  # 75 s after the start, 45 s after the last stanza: still open
    assert a.service.links.get((A, B)) is first
    net.clock.advance(20)
    net.pump()
    assert (A, B) not in a.service.links and first.closed
    send(a, message(f"alice@{A}/r", f"bob@{B}", "m3"))
    net.pump()
    assert bodies(b) == ["m1", "m2", "m3"]
    assert a.service.links[(A, B)] is not first

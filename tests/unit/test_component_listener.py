"""The server side of XEP-0114 over StringTransport: stream header, handshake, 'from' checks,
routing to and from a link, replace and shard, the grace period, bounded writes, and the link
records in Redis. A real CoreServer on the test Redis with a task.Clock as its reactor."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from lxml import etree
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from core.component_listener import ComponentFactory, ComponentStream
from core.component_routes import rendezvous
from core.runtime.config import ComponentConfig, Config
from core.server import CoreServer
from core.storage import keys
from core.xmpp.component_link import QN_HANDSHAKE, handshake_digest
from core.xmpp.errors import StreamError
from core.xmpp.jid import JID, parse_jid
from core.xmpp.ns import NS_CLIENT, NS_COMPONENT, NS_STANZAS, NS_STREAMS, qn
from core.xmpp.parser import StreamClose, StreamOpen, StreamParser
from core.xmpp.stanza import make

Run = Callable[[Awaitable[Any]], Any]
MUC = "muc.localhost"
SHARD = "shard.localhost"
SECRETS = {MUC: "muc-secret", SHARD: "shard-secret"}


@dataclass
class FakeSession:
    """A bound client session that records what the router hands it."""

    jid: JID
    priority: int = 0
    available: bool = True
    sent: list[etree._Element] = field(default_factory=list)

    @property
    def full(self) -> str:
        return str(self.jid)

    @property
    def bare(self) -> str:
        return str(self.jid.bare)

    def send(self, stanza: etree._Element) -> None:
        self.sent.append(stanza)

    def close_with(self, error: StreamError) -> None:
        pass


def make_server(redis_client: redis.asyncio.Redis, *, grace: float = 30.0) -> CoreServer:
    config = Config(domain="localhost", node_id="node-1")
    config.component_listener.grace_period = grace
    config.component_listener.max_stanza_size = 10000
    config.components = {
        "muc": ComponentConfig(domain=MUC, secret=SECRETS[MUC]),
        "shard": ComponentConfig(domain=SHARD, secret=SECRETS[SHARD], instances="shard"),
    }
    return CoreServer(config, redis_client, reactor=Clock(), modules=[])


class Link:
    """One component connection over a StringTransport, with the server's output parsed."""

    def __init__(self, server: CoreServer, port: int = 40000) -> None:
        self.proto: ComponentStream = ComponentFactory(server).buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.proto.makeConnection(self.transport)
        self.parser = StreamParser()
        self.header: StreamOpen | None = None
        self.closed = False

    def send(self, data: str) -> None:
        self.proto.dataReceived(data.encode())

    def read(self) -> list[etree._Element]:
        """The elements the server wrote since the last read."""
        data = self.transport.value()
        self.transport.clear()
        out = []
        for ev in self.parser.feed(data):
            if isinstance(ev, StreamOpen):
                self.header = ev
            elif isinstance(ev, StreamClose):
                self.closed = True
            else:
                out.append(ev)
        return out

    def open(self, to: str | None, *, frm: str | None = None, ns: str = NS_COMPONENT) -> None:
        attrs = (f" to='{to}'" if to else "") + (f" from='{frm}'" if frm else "")
        self.send(f"<stream:stream xmlns='{ns}' xmlns:stream='{NS_STREAMS}'{attrs}>")

    def handshake(self, secret: str) -> list[etree._Element]:
        assert self.header is not None or self.read() is not None
        assert self.header is not None
        self.send(f"<handshake>{handshake_digest(self.header.attrs['id'], secret)}</handshake>")
        return self.read()

    def stream_error(self) -> str | None:
        for el in self.read():
            if el.tag == qn(NS_STREAMS, "error"):
                return next(etree.QName(c).localname for c in el)
        return None


def linked(server: CoreServer, domain: str, instance: str | None = None, port: int = 40000) -> Link:
    link = Link(server, port)
    link.open(domain, frm=f"{domain}/{instance}" if instance else None)
    link.read()
    out = link.handshake(SECRETS[domain])
    assert [el.tag for el in out] == [QN_HANDSHAKE]
    return link


def condition(el: etree._Element) -> tuple[str | None, str | None]:
    err = el.find(qn(NS_CLIENT, "error"))
    assert err is not None, etree.tostring(el)
    cond = next(etree.QName(c).localname for c in err if etree.QName(c).namespace == NS_STANZAS)
    return err.get("type"), cond


def bind(server: CoreServer, full: str) -> FakeSession:
    session = FakeSession(parse_jid(full))
    server.router.bind(session)
    return session


async def from_user(server: CoreServer, session: FakeSession, to: str, body: str = "hi") -> None:
    """A client message on its way through the router, as c2s hands it over."""
    msg = make("message", to=to, frm=session.full, type="chat")
    etree.SubElement(msg, qn(NS_CLIENT, "body")).text = body
    await route(server, msg, session)


async def route(server: CoreServer, stanza: etree._Element, session: FakeSession) -> None:
    pending = server.router.route(stanza, session.jid, parse_jid(stanza.get("to")), session)
    if pending is not None:
        await pending


async def settle(server: CoreServer) -> None:
    """Let the spawned tasks (routing, Redis writes) finish."""
    while server._tasks:
        await asyncio.wait(list(server._tasks), timeout=5)


# Header and handshake ----------------------------------------------------------------------


def test_handshake_accepted(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """The server answers the header with from=domain and an id, accepts hex SHA-1(id+secret)
    with an empty <handshake/>, and names the instance after the header's from resource."""

    async def go() -> None:
        server = make_server(redis_client)
        link = Link(server)
        link.open(MUC, frm=f"{MUC}/one")
        assert link.read() == []
        assert link.header is not None
        assert link.header.attrs["from"] == MUC and len(link.header.attrs["id"]) >= 16
        assert link.header.nsmap[None] == NS_COMPONENT
        assert [el.tag for el in link.handshake(SECRETS[MUC])] == [QN_HANDSHAKE]
        assert list(server.components.domains[MUC].links) == ["one"]
        await settle(server)

    run_async(go())


def test_handshake_digest_is_case_insensitive(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """XEP-0114 §3 says lowercase hex; an uppercase digest from a sloppy component still
    proves the secret. A component without an instance in its header gets a generated one."""

    async def go() -> None:
        server = make_server(redis_client)
        link = Link(server)
        link.open(MUC)
        link.read()
        assert link.header is not None
        digest = handshake_digest(link.header.attrs["id"], SECRETS[MUC]).upper()
        link.send(f"<handshake> {digest} </handshake>")
        assert [el.tag for el in link.read()] == [QN_HANDSHAKE]
        (instance,) = server.components.domains[MUC].links
        assert instance and instance != MUC
        await settle(server)

    run_async(go())


def test_header_refusals(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """Unknown domain: host-unknown; no 'to': improper-addressing; jabber:client as content
    namespace: invalid-namespace. The header comes first, then the error, then the close."""

    async def go() -> None:
        server = make_server(redis_client)
        for to, ns, expected in [
            ("nobody.localhost", NS_COMPONENT, "host-unknown"),
            (None, NS_COMPONENT, "improper-addressing"),
            (MUC, NS_CLIENT, "invalid-namespace"),
        ]:
            link = Link(server)
            link.open(to, ns=ns)
            assert link.stream_error() == expected
            assert link.header is not None and link.closed
            assert link.transport.disconnecting
        assert server.components.links() == []

    run_async(go())


def test_wrong_secret_and_early_stanza_refused(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """A wrong handshake and a stanza before the handshake are both not-authorized."""

    async def go() -> None:
        server = make_server(redis_client)
        link = Link(server)
        link.open(MUC)
        link.read()
        link.handshake("not-the-secret")
        assert link.closed and link.transport.disconnecting
        link = Link(server)
        link.open(MUC)
        link.read()
        link.send(f"<message from='{MUC}' to='alice@localhost'><body>x</body></message>")
        assert link.stream_error() == "not-authorized"
        assert server.components.links() == []

    run_async(go())


def test_negotiation_timeout(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """A connection that never completes the handshake is closed with connection-timeout."""

    async def go() -> None:
        server = make_server(redis_client)
        link = Link(server)
        link.open(MUC)
        server.reactor.advance(server.config.c2s.negotiation_timeout + 1)
        assert link.stream_error() == "connection-timeout"

    run_async(go())


# Stanzas from the component ----------------------------------------------------------------


def test_from_checks(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """'from' must be at exactly the component's domain: another domain, a subdomain and a
    malformed JID are invalid-from."""

    async def go() -> None:
        server = make_server(redis_client)
        for frm in ("x@localhost", f"room@sub.{MUC}", "a@@b"):
            link = linked(server, MUC)
            link.send(f"<message from='{frm}' to='alice@localhost'><body>x</body></message>")
            assert link.stream_error() == "invalid-from", frm
        await settle(server)

    run_async(go())


def test_component_stanza_reaches_client(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """A message from room@domain/nick reaches the client in jabber:client with a normalised
    'from'; a stanza without 'from' is taken as from the domain (COMPAT)."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = bind(server, "alice@localhost/res")
        link = linked(server, MUC)
        link.send(
            f"<message from='Room@{MUC}/Nick' to='alice@localhost/res' type='groupchat'>"
            "<body>hello</body><x xmlns='urn:example'/></message>"
            "<presence to='alice@localhost/res'/>"
        )
        await settle(server)
        msg, pres = alice.sent
        assert msg.tag == qn(NS_CLIENT, "message")
        assert msg.get("from") == f"room@{MUC}/Nick"
        assert msg.findtext(qn(NS_CLIENT, "body")) == "hello"
        assert msg.find("{urn:example}x") is not None
        assert pres.get("from") == MUC
        await settle(server)

    run_async(go())


def test_handshake_in_either_namespace(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """XEP-0114 §3: <handshake/> is in jabber:component:accept, whether it inherits the
    stream's default namespace (read as jabber:client) or the component declares it again."""

    async def go() -> None:
        server = make_server(redis_client)
        for decl in ("", f" xmlns='{NS_COMPONENT}'"):
            link = Link(server)
            link.open(MUC)
            link.read()
            assert link.header is not None
            digest = handshake_digest(link.header.attrs["id"], SECRETS[MUC])
            link.send(f"<handshake{decl}>{digest}</handshake>")
            assert [el.tag for el in link.read()] == [QN_HANDSHAKE], decl
            assert not link.closed
        await settle(server)

    run_async(go())


def test_component_namespace_declared_on_elements(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """A component may qualify a stanza, or an element inside one, with
    jabber:component:accept itself (RFC 6120 §4.8.3): the client gets it all in jabber:client
    (§4.8.5: with no prefix), like a stanza that inherits the stream's namespace."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = bind(server, "alice@localhost/res")
        link = linked(server, MUC)
        frm = f"from='room@{MUC}/n' to='alice@localhost/res' type='groupchat'"
        link.send(
            f"<message {frm} id='1'><body>a</body></message>"
            f"<message xmlns='{NS_COMPONENT}' {frm} id='2'><body>b</body></message>"
            f"<message {frm} id='3'><body xmlns='{NS_COMPONENT}'>c</body></message>"
            f"<c:message xmlns:c='{NS_COMPONENT}' {frm} id='4'><c:body>d</c:body></c:message>"
        )
        await settle(server)
        assert [m.get("id") for m in alice.sent] == ["1", "2", "3", "4"]
        for msg, body in zip(alice.sent, "abcd", strict=True):
            assert [(el.tag, el.prefix) for el in msg.iter()] == [
                (qn(NS_CLIENT, "message"), None),
                (qn(NS_CLIENT, "body"), None),
            ]
            assert msg.findtext(qn(NS_CLIENT, "body")) == body
        await settle(server)

    run_async(go())


def test_component_addressing_errors(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """A malformed 'to' is answered with jid-malformed on the link; an IQ without id is
    bad-request; a stanza without 'to' is improper-addressing; a non-stanza element is
    unsupported-stanza-type."""

    async def go() -> None:
        server = make_server(redis_client)
        link = linked(server, MUC)
        link.send(f"<message from='{MUC}' to='a@@b' id='m1'><body>x</body></message>")
        (reply,) = link.read()
        assert reply.tag == qn(NS_COMPONENT, "message") and reply.get("id") == "m1"
        err = reply.find(qn(NS_COMPONENT, "error"))
        assert err is not None and err.find(qn(NS_STANZAS, "jid-malformed")) is not None
        link.send(f"<iq from='{MUC}' to='localhost' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        (reply,) = link.read()
        assert reply.find(qn(NS_COMPONENT, "error")).find(qn(NS_STANZAS, "bad-request")) is not None
        link.send(f"<message from='{MUC}'><body>x</body></message>")
        assert link.stream_error() == "improper-addressing"
        link = linked(server, MUC, port=40001)
        link.send("<handshake>again</handshake>")
        assert link.stream_error() == "unsupported-stanza-type"
        await settle(server)

    run_async(go())


def test_oversized_stanza_is_policy_violation(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """The component link has a stanza size limit like client streams."""

    async def go() -> None:
        server = make_server(redis_client)
        link = linked(server, MUC)
        link.send(
            f"<message from='{MUC}' to='alice@localhost'><body>{'x' * 20000}</body></message>"
        )
        assert link.stream_error() == "policy-violation"
        await settle(server)

    run_async(go())


# Stanzas to the component ----------------------------------------------------------------


def test_client_message_goes_over_the_link(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """A stanza to the domain or to any JID at it is written to the link in
    jabber:component:accept, its 'to' prepared."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = bind(server, "alice@localhost/res")
        link = linked(server, MUC)
        await from_user(server, alice, f"Room@{MUC.upper()}/nick")
        await from_user(server, alice, MUC)
        first, second = link.read()
        assert first.tag == qn(NS_COMPONENT, "message")
        assert first.get("to") == f"room@{MUC}/nick" and first.get("from") == alice.full
        assert first.findtext(qn(NS_COMPONENT, "body")) == "hi"
        assert second.get("to") == MUC
        await settle(server)

    run_async(go())


def test_replace_mode_conflict(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """instances = "replace": a new link takes over and the old one gets <conflict/>."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = bind(server, "alice@localhost/res")
        old = linked(server, MUC, "a", port=40001)
        new = linked(server, MUC, "b", port=40002)
        assert old.stream_error() == "conflict" and old.closed
        assert list(server.components.domains[MUC].links) == ["b"]
        await from_user(server, alice, f"room@{MUC}")
        assert len(new.read()) == 1 and old.read() == []
        # The old connection going away later does not take the new link down.
        old.proto.connectionLost()
        assert list(server.components.domains[MUC].links) == ["b"]
        await settle(server)

    run_async(go())


def test_shard_routes_by_rendezvous(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """instances = "shard": each bare JID goes to its rendezvous instance, whatever the
    resource or case; the domain itself goes by the sender's bare JID; a link with the same
    instance id replaces that instance only."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = bind(server, "alice@localhost/res")
        links = {i: linked(server, SHARD, i, port=40000 + n) for n, i in enumerate("abc")}
        rooms = [f"room{n}@{SHARD}" for n in range(30)]
        for room in rooms:
            await from_user(server, alice, f"{room.upper()}/nick")
        got = {el.get("to").split("/")[0].lower(): i for i, lk in links.items() for el in lk.read()}
        assert got == {r: rendezvous(r, "abc") for r in rooms}
        await from_user(server, alice, SHARD)
        owner = rendezvous("alice@localhost", "abc")
        assert [el.get("to") for el in links[owner].read()] == [SHARD]
        again = linked(server, SHARD, "b", port=40010)
        assert links["b"].stream_error() == "conflict"
        assert links["a"].read() == [] and links["c"].read() == []
        assert sorted(server.components.domains[SHARD].links) == ["a", "b", "c"]
        assert server.components.domains[SHARD].links["b"] is again.proto
        await settle(server)

    run_async(go())


def test_shard_iq_reply_returns_to_its_sender(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """An IQ result goes back to the shard instance that sent the IQ, even when the hash of
    its address names another instance."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = bind(server, "alice@localhost/res")
        links = {i: linked(server, SHARD, i, port=40000 + n) for n, i in enumerate("ab")}
        hashed = rendezvous("alice@localhost", "ab")
        sender = "b" if hashed == "a" else "a"
        links[sender].send(
            f"<iq from='{SHARD}' to='alice@localhost/res' type='get' id='q1'>"
            "<ping xmlns='urn:xmpp:ping'/></iq>"
        )
        await settle(server)
        assert [el.get("id") for el in alice.sent] == ["q1"]
        result = make("iq", to=SHARD, frm=alice.full, type="result", id="q1")
        await route(server, result, alice)
        assert [el.get("id") for el in links[sender].read()] == ["q1"]
        assert links[hashed].read() == []
        # Without a pending IQ the hash decides.
        result = make("iq", to=SHARD, frm=alice.full, type="result", id="q2")
        await route(server, result, alice)
        assert [el.get("id") for el in links[hashed].read()] == ["q2"]
        await settle(server)

    run_async(go())


# Down and grace ----------------------------------------------------------------------------


def test_never_connected_is_service_unavailable(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """A configured component that never linked: service-unavailable (type cancel)."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = bind(server, "alice@localhost/res")
        await from_user(server, alice, f"room@{MUC}")
        (reply,) = alice.sent
        assert reply.get("type") == "error" and reply.get("from") == f"room@{MUC}"
        assert condition(reply) == ("cancel", "service-unavailable")

    run_async(go())


def test_grace_period_then_unavailable(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """After the link drops: remote-server-timeout (type wait) for grace_period seconds,
    service-unavailable after; no error answers an error."""

    async def go() -> None:
        server = make_server(redis_client, grace=10.0)
        alice = bind(server, "alice@localhost/res")
        link = linked(server, MUC)
        link.proto.connectionLost()
        server.reactor.advance(9.5)
        await from_user(server, alice, f"room@{MUC}")
        assert condition(alice.sent.pop()) == ("wait", "remote-server-timeout")
        error = make("message", to=f"room@{MUC}", frm=alice.full, type="error")
        await route(server, error, alice)
        assert alice.sent == []
        server.reactor.advance(1.0)
        await from_user(server, alice, f"room@{MUC}")
        assert condition(alice.sent.pop()) == ("cancel", "service-unavailable")
        await settle(server)

    run_async(go())


def test_component_that_stops_reading_gets_bounded_writes(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """When the transport says the component stopped reading, writes continue up to the
    overflow limit, then stanzas bounce with resource-constraint until it reads again."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = bind(server, "alice@localhost/res")
        link = linked(server, MUC)
        link.proto.overflow_limit = 2000
        link.proto.pauseProducing()
        for n in range(40):
            await from_user(server, alice, f"room{n}@{MUC}", body="x" * 100)
        written = len(link.read())
        assert 0 < written < 40
        assert len(alice.sent) == 40 - written
        assert {condition(el) for el in alice.sent} == {("wait", "resource-constraint")}
        link.proto.resumeProducing()
        await from_user(server, alice, f"room@{MUC}")
        assert len(link.read()) == 1
        await settle(server)

    run_async(go())


# Redis records -------------------------------------------------------------------------------


def test_link_records_in_redis(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """A live link is recorded with its node and a TTL; when it drops the record goes and a
    grace marker with the grace period's TTL appears; a new link clears the marker."""

    async def go() -> None:
        server = make_server(redis_client, grace=10.0)
        link = linked(server, MUC, "one")
        await settle(server)
        assert await redis_client.hgetall(keys.component_links(MUC)) == {b"one": b"node-1"}
        assert await redis_client.get(keys.component_link(MUC, "one")) == b"node-1"
        assert 0 < await redis_client.ttl(keys.component_link(MUC, "one")) <= 30
        link.proto.connectionLost()
        await settle(server)
        assert await redis_client.hgetall(keys.component_links(MUC)) == {}
        assert not await redis_client.exists(keys.component_link(MUC, "one"))
        assert 9000 < await redis_client.pttl(keys.component_down(MUC)) <= 10000
        linked(server, MUC, "two")
        await settle(server)
        assert not await redis_client.exists(keys.component_down(MUC))

    run_async(go())


def test_start_cleans_stale_records_and_resumes_grace(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """At start: this node's old records and records whose TTL expired are removed, a live
    record of another node is kept, and a recent grace marker keeps answering
    remote-server-timeout after the restart."""

    async def go() -> None:
        await redis_client.hset(
            keys.component_links(MUC),
            mapping={"mine": "node-1", "dead": "node-9", "live": "node-2"},
        )
        await redis_client.set(keys.component_link(MUC, "mine"), "node-1", ex=30)
        await redis_client.set(keys.component_link(MUC, "live"), "node-2", ex=30)
        await redis_client.set(keys.component_down(MUC), "node-1", px=5000)
        server = make_server(redis_client, grace=10.0)
        await server.components.start()
        try:
            assert await redis_client.hgetall(keys.component_links(MUC)) == {b"live": b"node-2"}
            assert not await redis_client.exists(keys.component_link(MUC, "mine"))
            alice = bind(server, "alice@localhost/res")
            await from_user(server, alice, f"room@{MUC}")
            assert condition(alice.sent.pop()) == ("wait", "remote-server-timeout")
            server.reactor.advance(5.5)
            await from_user(server, alice, f"room@{MUC}")
            assert condition(alice.sent.pop()) == ("cancel", "service-unavailable")
        finally:
            await server.components.stop()

    run_async(go())


def test_heartbeat_refreshes_and_stop_removes(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """The heartbeat refreshes each link record's TTL; stop() removes this node's records."""

    async def go() -> None:
        server = make_server(redis_client)
        await server.components.start()
        linked(server, SHARD, "a")
        linked(server, SHARD, "b", port=40001)
        await settle(server)
        await redis_client.expire(keys.component_link(SHARD, "a"), 3)
        await server.components.heartbeat()
        assert await redis_client.ttl(keys.component_link(SHARD, "a")) > 3
        await server.components.stop()
        assert await redis_client.hgetall(keys.component_links(SHARD)) == {}
        assert not await redis_client.exists(keys.component_link(SHARD, "b"))

    run_async(go())

"""Shared pieces of the unit tests of the core (RFC 6120 streams, the router, the Module API).

* XML transcripts: stanzas are compared as parsed trees, never as strings (``assert_xml``).
* An in-memory connection between a ``C2SStream`` and a scripted client: each end is a
  ``StringTransport`` whose ``startTLS`` negotiates real TLS over memory BIOs, so STARTTLS,
  direct TLS (XEP-0368) and channel bindings (RFC 9266, RFC 5929) run for real, with no socket.
* A real ``CoreServer`` on the test session's Redis, with a ``task.Clock`` as its reactor.
* ``FakeSession``: a bound session that records what the router hands it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio
from lxml import etree
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from core.c2s import C2SFactory, C2SStream
from core.runtime.config import Config
from core.server import CoreServer
from core.xmpp.errors import StreamError
from core.xmpp.jid import JID
from core.xmpp.module import Module
from core.xmpp.ns import NS_BIND, NS_CLIENT, NS_SASL, NS_STREAMS, NS_TLS, qn
from core.xmpp.parser import Event, StreamClose, StreamOpen, StreamParser
from core.xmpp.sasl import TLS_EXPORTER_LABEL, ScramClient, tls_server_end_point
from core.xmpp.tls import ServerTLS, ensure_self_signed

Element = etree._Element
DOMAIN = "localhost"
PASSWORD = "correct horse"
ANY = "*"

HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'{extra}>"
)

# -- XML as trees -----------------------------------------------------------------------


def xml(text: str | bytes) -> Element:
    """Parse one element written in a test."""
    return etree.fromstring(text.encode() if isinstance(text, str) else text)


def _text(value: str | None) -> str:
    return (value or "").strip()


def mismatch(actual: Element, expected: Element, path: str = "") -> str | None:
    """Where ``actual`` differs from ``expected``; '*' as an attribute value or as text in
    ``expected`` matches anything present."""
    if actual.tag != expected.tag:
        return f"{path}: element {actual.tag} instead of {expected.tag}"
    here = f"{path}/{etree.QName(expected).localname}"
    if set(actual.attrib) != set(expected.attrib):
        return f"{here}: attributes {sorted(actual.attrib)} instead of {sorted(expected.attrib)}"
    for name, want in expected.attrib.items():
        if want != ANY and actual.get(name) != want:
            return f"{here}/@{name}: {actual.get(name)!r} instead of {want!r}"
    want_text = _text(expected.text)
    if want_text != ANY and _text(actual.text) != want_text:
        return f"{here}: text {_text(actual.text)!r} instead of {want_text!r}"
    got = [c for c in actual if isinstance(c.tag, str)]
    want_children = [c for c in expected if isinstance(c.tag, str)]
    if len(got) != len(want_children):
        return f"{here}: {len(got)} children instead of {len(want_children)}"
    for a, e in zip(got, want_children, strict=True):
        problem = mismatch(a, e, here)
        if problem:
            return problem
    return None


def assert_xml(actual: Element | None, expected: str | Element) -> None:
    """Assert that ``actual`` is the tree ``expected`` (tags, attributes, trimmed text and
    children in order); '*' in ``expected`` matches any attribute value or text."""
    want = xml(expected) if isinstance(expected, str) else expected
    assert actual is not None, f"nothing received, expected {etree.tostring(want).decode()}"
    problem = mismatch(actual, want)
    assert problem is None, (
        f"{problem}\n  got:      {etree.tostring(actual).decode()}"
        f"\n  expected: {etree.tostring(want).decode()}"
    )


def stream_error(el: Element | None) -> str | None:
    """The condition of a ``<stream:error/>``, or None when ``el`` is not one."""
    if el is None or el.tag != qn(NS_STREAMS, "error"):
        return None
    for c in el:
        if etree.QName(c).localname != "text":
            return etree.QName(c).localname
    return None


def stanza_error(el: Element | None) -> tuple[str, str] | None:
    """(type, condition) of a stanza of type 'error', or None."""
    if el is None or el.get("type") != "error":
        return None
    error = el.find(qn(NS_CLIENT, "error"))
    assert error is not None, etree.tostring(el)
    for c in error:
        if etree.QName(c).localname != "text":
            return error.get("type", ""), etree.QName(c).localname
    raise AssertionError(f"error without condition: {etree.tostring(el)!r}")


def elements(events: Iterable[Event]) -> list[Element]:
    return [e for e in events if isinstance(e, etree._Element)]


# -- The server -------------------------------------------------------------------------


def make_config(data_dir: Path, **c2s: Any) -> Config:
    """The defaults, with no delay after failed logins and the given [c2s] values."""
    cfg = Config()
    cfg.domain = DOMAIN
    cfg.node_id = "unit"
    cfg.data_dir = str(data_dir)
    cfg.auth.failure_delay = 0.0
    for name, value in c2s.items():
        section, _, key = name.partition("__")
        if key:
            setattr(getattr(cfg, section), key, value)
        else:
            setattr(cfg.c2s, name, value)
    return cfg


def server_tls(directory: Path) -> ServerTLS:
    """The server's self-signed certificate, created in ``directory`` (core/xmpp/tls.py)."""
    cert, key = directory / f"{DOMAIN}.crt", directory / f"{DOMAIN}.key"
    ensure_self_signed(cert, key, DOMAIN)
    return ServerTLS(cert, key)


@contextlib.asynccontextmanager
async def running_server(
    redis_url: str,
    tmp_path: Path,
    *,
    modules: list[Module] | None = None,
    **c2s: Any,
) -> AsyncIterator[CoreServer]:
    """A real CoreServer on the test Redis with a task.Clock as its reactor; call from the
    event loop that runs the test. ``c2s`` overrides [c2s] keys (``auth__max_failures=1``
    reaches another section)."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=False)
    if modules is None:
        # The wire-level modules only: RFC 6121 modules would change what routing does.
        from core.modules import disco, ping, version

        modules = [disco.module, ping.module, version.module]
    server = CoreServer(make_config(tmp_path, **c2s), client, reactor=Clock(), modules=modules)
    server.tls = server_tls(tmp_path / "tls")
    try:
        yield server
    finally:
        await settle(server)
        await client.aclose()


async def settle(server: CoreServer, timeout: float = 5.0) -> None:
    """Wait until every task the server spawned has finished (bounded)."""
    for _ in range(200):
        await asyncio.sleep(0)
        pending = [t for t in server._tasks if not t.done()]
        if not pending:
            return
        done, _ = await asyncio.wait(pending, timeout=timeout)
        if not done:
            raise AssertionError(f"{len(pending)} server tasks still running after {timeout} s")
    raise AssertionError("the server kept spawning tasks")


async def add_account(server: CoreServer, user: str, password: str = PASSWORD) -> None:
    await server.accounts.create(user, DOMAIN, password)


# -- An in-memory connection that can run TLS -------------------------------------------


class MemoryTransport(StringTransport):
    """One end of an in-memory connection. ``startTLS`` puts a real TLS layer (memory BIO)
    between the protocol and the wire, as Twisted does for TCP transports."""

    def __init__(self, clock: Clock, *, client: bool, port: int) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", port),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000 + port % 1000),
        )
        self.clock = clock
        self.is_client = client
        self.protocol: Any = None
        self.tls: TLSMemoryBIOProtocol | None = None
        self.wire = StringTransport()  # the bytes below the TLS layer once it runs

    def attach(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    def write(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.write(data)
        else:
            super().write(data)

    def writeSequence(self, seq: Iterable[bytes]) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        if self.tls is not None:
            self.tls.loseConnection()
        super().loseConnection()

    def startTLS(self, options: Any, normal: bool = True) -> None:
        factory = TLSMemoryBIOFactory(options, self.is_client, None, clock=self.clock)
        self.tls = factory.protocol(factory, self.protocol, False)
        self.tls.makeConnection(self.wire)

    def getHandle(self) -> SSL.Connection | None:
        return None if self.tls is None else self.tls.getHandle()

    def take(self) -> bytes:
        """What this end sent since the last call (plaintext first, then TLS records)."""
        data = self.value() + self.wire.value()
        self.clear()
        self.wire.clear()
        return data

    def deliver(self, data: bytes) -> None:
        """Bytes arriving from the peer."""
        if self.tls is not None:
            self.tls.dataReceived(data)
        else:
            self.protocol.dataReceived(data)


def pump(clock: Clock, a: MemoryTransport, b: MemoryTransport) -> bool:
    """Move bytes both ways until neither end has anything to send; True if any moved."""
    moved = False
    for _ in range(100):
        clock.advance(0)  # flushes the TLS layer's aggregated small writes
        da, db = a.take(), b.take()
        if not da and not db:
            return moved
        moved = True
        if da:
            b.deliver(da)
        if db:
            a.deliver(db)
    raise AssertionError("the connection never went quiet")


class Received(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.data += data


def client_tls_options(server: CoreServer, *, max_version: ssl.TLSVersion | None = None) -> Any:
    """Client TLS options that trust the server's self-signed certificate."""
    assert server.tls is not None
    extra: dict[str, Any] = {}
    if max_version is not None:
        extra["lowerMaximumSecurityTo"] = max_version
    return ssl.optionsForClientTLS(
        DOMAIN,
        trustRoot=server.tls.certificate,
        acceptableProtocols=[b"xmpp-client"],
        extraCertificateOptions=extra,
    )


class Client:
    """A scripted client connected in memory to one C2SStream of ``server``."""

    def __init__(
        self,
        server: CoreServer,
        *,
        direct_tls: bool = False,
        max_tls: ssl.TLSVersion | None = None,
        port: int = 5222,
    ) -> None:
        self.server = server
        self.clock: Clock = server.reactor
        self.max_tls = max_tls
        self.server_end = MemoryTransport(self.clock, client=False, port=port)
        self.client_end = MemoryTransport(self.clock, client=True, port=port)
        self.received = Received()
        self.client_end.attach(self.received)
        if direct_tls:
            # As listenSSL does: the stream's transport is the TLS protocol itself.
            assert server.tls is not None
            factory = TLSMemoryBIOFactory(
                server.tls.options(alpn=[b"xmpp-client"]),
                False,
                C2SFactory(server, direct_tls=True),
                clock=self.clock,
            )
            top = factory.buildProtocol(self.server_end.getPeer())
            self.server_end.attach(top)
            self.stream: C2SStream = top.wrappedProtocol
            self.client_end.startTLS(client_tls_options(server, max_version=max_tls))
        else:
            self.stream = C2SStream(server, direct_tls=False)
            self.server_end.attach(self.stream)
        self.parser = StreamParser(max_stanza_bytes=1 << 20)
        self.header: StreamOpen | None = None
        self.jid: str | None = None
        self._lost = False
        pump(self.clock, self.server_end, self.client_end)

    # Bytes and events ------------------------------------------------------------------

    def send(self, data: str | bytes) -> None:
        self.client_end.write(data.encode() if isinstance(data, str) else data)
        pump(self.clock, self.server_end, self.client_end)

    def read(self) -> list[Event]:
        data = bytes(self.received.data)
        self.received.data.clear()
        return self.parser.feed(data) if data else []

    async def settle(self) -> None:
        """Let the server finish what it started and deliver everything it wrote."""
        for _ in range(50):
            await settle(self.server)
            if not pump(self.clock, self.server_end, self.client_end) and not any(
                not t.done() for t in self.server._tasks
            ):
                break
        self._check_lost()

    async def exchange(self, data: str | bytes) -> list[Event]:
        """Send ``data``, wait for the server, and return the events it sent back."""
        self.send(data)
        await self.settle()
        return self.read()

    async def element(self, data: str | bytes) -> Element | None:
        """Send ``data`` and return the one element the server answers with (or None)."""
        got = elements(await self.exchange(data))
        assert len(got) <= 1, [etree.tostring(e) for e in got]
        return got[0] if got else None

    @property
    def closed(self) -> bool:
        """Whether the server closed the connection."""
        return bool(self.server_end.disconnecting)

    def _check_lost(self) -> None:
        # A closed connection reports connectionLost, as a real transport would.
        if self.closed and not self._lost:
            self._lost = True
            top = self.server_end.protocol
            if self.server_end.tls is not None:
                top = self.server_end.tls
            top.connectionLost(Failure(connectionDone.value))

    async def disconnect(self) -> None:
        """The client goes away without closing its stream."""
        if not self._lost:
            self._lost = True
            self.server_end.disconnecting = True
            self.stream.connectionLost(Failure(connectionDone.value))
        await settle(self.server)

    # Negotiation ------------------------------------------------------------------------

    async def open(self, to: str = DOMAIN, extra: str = "", raw: str | None = None) -> Element:
        """Send a stream header; return the stream features (asserting the header came)."""
        events = await self.exchange(raw if raw is not None else HEADER.format(to=to, extra=extra))
        tls = self.client_end.tls
        assert tls is None or not tls.disconnecting, "the client refused the server certificate"
        assert events and isinstance(events[0], StreamOpen), events
        self.header = events[0]
        got = elements(events)
        assert len(got) == 1, [etree.tostring(e) for e in got]
        return got[0]

    async def open_error(self, raw: str) -> str | None:
        """Send a header that must be refused; return the stream error condition."""
        events = await self.exchange(raw)
        assert events and isinstance(events[0], StreamOpen), events
        assert isinstance(events[-1], StreamClose), events
        assert self.closed
        return stream_error(elements(events)[-1])

    async def starttls(self) -> Element:
        """STARTTLS (RFC 6120 §5.4); returns the features of the restarted stream."""
        proceed = await self.element(f"<starttls xmlns='{NS_TLS}'/>")
        assert_xml(proceed, f"<proceed xmlns='{NS_TLS}'/>")
        self.client_end.startTLS(client_tls_options(self.server, max_version=self.max_tls))
        self.parser.reset()
        await self.settle()
        return await self.open()

    def ssl_connection(self) -> SSL.Connection:
        conn = self.client_end.getHandle()
        assert conn is not None, "TLS is not running"
        return conn

    def channel_binding(self, cb_type: str) -> bytes:
        """The client's view of this connection's channel-binding data."""
        conn = self.ssl_connection()
        if cb_type == "tls-exporter":
            return bytes(conn.export_keying_material(TLS_EXPORTER_LABEL, 32, b""))
        cert = conn.get_peer_certificate()
        assert cert is not None
        from cryptography.hazmat.primitives.serialization import Encoding

        return tls_server_end_point(cert.to_cryptography().public_bytes(Encoding.DER))

    async def scram(
        self,
        user: str,
        password: str = PASSWORD,
        *,
        hash_name: str = "sha256",
        cb_type: str | None = None,
        plus: bool = False,
    ) -> Element | None:
        """A SCRAM exchange; returns the final <success/> (verified) or <failure/>."""
        client = ScramClient(
            hash_name,
            user,
            password,
            cb_type=cb_type,
            cb_data=self.channel_binding(cb_type) if cb_type and plus else None,
            plus_advertised=plus,
        )
        el = await self.element(sasl_auth(client.mechanism, client.first()))
        if el is None or el.tag != qn(NS_SASL, "challenge"):
            return el
        el = await self.element(sasl_element("response", client.respond(b64(el.text))))
        if el is not None and el.tag == qn(NS_SASL, "success"):
            client.verify(b64(el.text))
        return el

    async def login(self, user: str, password: str = PASSWORD, resource: str | None = "res") -> str:
        """Header, SCRAM-SHA-256, restart and bind; returns the bound full JID."""
        await self.open()
        success = await self.scram(user, password)
        assert success is not None and success.tag == qn(NS_SASL, "success"), success
        self.parser.reset()
        await self.open()
        reply = await self.element(bind_request(resource))
        assert reply is not None and reply.get("type") == "result", etree.tostring(reply)
        self.jid = reply.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        assert self.jid
        return self.jid


def b64(text: str | None) -> bytes:
    text = (text or "").strip()
    return b"" if text in ("", "=") else base64.b64decode(text)


def sasl_auth(mechanism: str, data: bytes | None) -> str:
    body = "" if data is None else (base64.b64encode(data).decode() or "=")
    return f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{body}</auth>"


def sasl_element(name: str, data: bytes) -> str:
    return f"<{name} xmlns='{NS_SASL}'>{base64.b64encode(data).decode() or '='}</{name}>"


def bind_request(resource: str | None, id: str = "bind1") -> str:
    inner = "" if resource is None else f"<resource>{resource}</resource>"
    return f"<iq type='set' id='{id}'><bind xmlns='{NS_BIND}'>{inner}</bind></iq>"


# -- Sessions for the router ------------------------------------------------------------


@dataclass
class FakeSession:
    """A bound session that records the stanzas the router gives it (router.Session)."""

    jid: JID
    priority: int = 0
    available: bool = True
    received: list[Element] = field(default_factory=list)
    closed_with: list[StreamError] = field(default_factory=list)

    @property
    def full(self) -> str:
        return str(self.jid)

    @property
    def bare(self) -> str:
        return str(self.jid.bare)

    def send(self, stanza: Element) -> None:
        self.received.append(stanza)

    def close_with(self, error: StreamError) -> None:
        self.closed_with.append(error)


async def run_route(
    route: Callable[..., Any], stanza: Element, sender: JID, to: JID | None, origin: Any = None
) -> None:
    """Route a stanza and wait for whatever I/O the decision needed."""
    pending = route(stanza, sender, to, origin)
    if pending is not None:
        await pending


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds, giving the loop (Redis, threads) a turn in between;
    fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("the awaited condition never came true")
        await asyncio.sleep(0.001)

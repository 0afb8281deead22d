"""The component client of XEP-0114 (core.xmpp.component) against a scripted server: a
MemoryReactorClock for connections and backoff, a StringTransport per connection."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from lxml import etree
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from core.xmpp.component import Backoff, ComponentApp, ComponentStream
from core.xmpp.component_link import handshake_digest, handshake_valid
from core.xmpp.errors import StanzaError
from core.xmpp.module import IqContext, Module
from core.xmpp.ns import (
    NS_CLIENT,
    NS_COMPONENT,
    NS_DISCO_INFO,
    NS_PING,
    NS_STANZAS,
    NS_STREAMS,
    QN_PING,
    qn,
)
from core.xmpp.parser import StreamClose, StreamOpen, StreamParser
from core.xmpp.stanza import make

Run = Callable[[Awaitable[Any]], Any]
DOMAIN = "echo.localhost"
SECRET = "s3cret"
SERVER_HEADER = (
    f"<stream:stream xmlns='{NS_COMPONENT}' xmlns:stream='{NS_STREAMS}' "
    f"from='{DOMAIN}' id='{{id}}'>"
)


def C(local: str) -> str:
    return qn(NS_COMPONENT, local)


class Server:
    """The server end of one connection made by the app."""

    def __init__(self, app: ComponentApp) -> None:
        _host, _port, factory, _timeout, _bind = app.reactor.tcpClients[-1]
        self.proto: ComponentStream = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.parser = StreamParser()
        self.header: StreamOpen | None = None
        self.closed = False

    def read(self) -> list[etree._Element]:
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

    def send(self, data: str) -> None:
        self.proto.dataReceived(data.encode())

    def accept(self, stream_id: str = "sid1") -> None:
        self.send(SERVER_HEADER.format(id=stream_id))
        (hs,) = self.read()
        assert hs.tag == C("handshake")
        assert hs.text == handshake_digest(stream_id, SECRET)
        self.send("<handshake/>")

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


def make_app(modules: list[Module] | None = None, **kwargs: Any) -> ComponentApp:
    kwargs.setdefault("backoff", Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.0))
    kwargs.setdefault("keepalive", 0)
    return ComponentApp(
        DOMAIN,
        SECRET,
        "127.0.0.1",
        5347,
        modules or [],
        instance="i1",
        reactor=MemoryReactorClock(),
        **kwargs,
    )


def linked_app(modules: list[Module] | None = None, **kwargs: Any) -> tuple[ComponentApp, Server]:
    app = make_app(modules, **kwargs)
    app.start()
    server = Server(app)
    server.accept()
    assert app.linked
    return app, server


def retry_delays(app: ComponentApp) -> list[float]:
    now = app.reactor.seconds()
    return [round(c.getTime() - now, 3) for c in app.reactor.getDelayedCalls() if c.active()]


async def idle() -> None:
    """Let the handler tasks run (no time passes: asyncio turns only)."""
    for _ in range(10):
        await asyncio.sleep(0)


# The handshake and backoff ----------------------------------------------------------------


def test_handshake_digest() -> None:
    """XEP-0114 §3: lowercase hex SHA-1 of stream id + secret; checked in constant time,
    tolerant of case and surrounding whitespace, safe with any input."""
    digest = handshake_digest("3BF96D32", "secret")
    assert digest == hashlib.sha1(b"3BF96D32secret").hexdigest()
    assert handshake_valid("3BF96D32", "secret", f" {digest.upper()}\n")
    assert not handshake_valid("3BF96D32", "secret", handshake_digest("3BF96D32", "other"))
    assert not handshake_valid("3BF96D32", "secret", "é" * 40)
    assert handshake_digest("id", "sécret") == hashlib.sha1("idsécret".encode()).hexdigest()


def test_backoff_grows_to_a_bound_with_jitter() -> None:
    """Delays double up to the maximum; jitter takes up to its fraction off each delay."""
    plain = Backoff(initial=0.5, maximum=4.0, factor=2.0, jitter=0.0)
    assert [plain.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    jittery = Backoff(initial=1.0, maximum=30.0, jitter=0.5)
    assert jittery.delay(3, rand=lambda: 0.0) == 8.0
    assert jittery.delay(3, rand=lambda: 1.0) == 4.0
    assert jittery.delay(10_000, rand=lambda: 0.0) == 30.0


# Link up ------------------------------------------------------------------------------------


def test_header_handshake_and_link_up(run_async: Run) -> None:
    """The header names the domain in 'to' and domain/instance in 'from'; the handshake
    answers the server's id; <handshake/> brings the link up and modules hear 'link-up'."""
    module = Module("watch")
    seen: list[str] = []

    @module.on("link-up")
    async def up(app: ComponentApp) -> None:
        seen.append(app.instance)

    async def go() -> None:
        app = make_app([module])
        app.start()
        host, port, *_ = app.reactor.tcpClients[0]
        assert (host, port) == ("127.0.0.1", 5347)
        server = Server(app)
        assert server.read() == []
        assert server.header is not None
        assert server.header.nsmap[None] == NS_COMPONENT
        assert server.header.attrs == {"to": DOMAIN, "from": f"{DOMAIN}/i1"}
        assert not app.linked
        server.accept("xyz")
        assert app.linked and app.links == 1
        await idle()
        assert seen == ["i1"]

    run_async(go())


def test_refused_handshake_retries(run_async: Run) -> None:
    """A not-authorized stream error is remembered and the client tries again later."""

    async def go() -> None:
        app = make_app()
        app.start()
        server = Server(app)
        server.send(SERVER_HEADER.format(id="a"))
        server.read()
        server.send(
            "<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            "</stream:error></stream:stream>"
        )
        assert server.read() == []
        assert server.closed and server.transport.disconnecting
        server.lose()
        assert app.last_error is not None and app.last_error.condition == "not-authorized"
        assert retry_delays(app) == [1.0]

    run_async(go())


# Dispatch -----------------------------------------------------------------------------------


def test_iq_dispatch_through_modules(run_async: Run) -> None:
    """IQs to the domain and to JIDs at it reach the module for that target; unknown payloads
    are service-unavailable; disco#info of the domain comes from the declared features."""
    module = Module("ping", features=[NS_PING])

    @module.iq("get", QN_PING, to="entity")
    async def ping(ctx: IqContext) -> None:
        assert ctx.to.local == "room" and ctx.sender.local == "alice"
        return None

    async def go() -> None:
        _app, server = linked_app([module])
        server.send(
            f"<iq from='alice@localhost/r' to='room@{DOMAIN}' type='get' id='p1'>"
            f"<ping xmlns='{NS_PING}'/></iq>"
            f"<iq from='alice@localhost/r' to='{DOMAIN}' type='get' id='p2'>"
            f"<ping xmlns='{NS_PING}'/></iq>"
            f"<iq from='alice@localhost/r' to='{DOMAIN}' type='get' id='d1'>"
            f"<query xmlns='{NS_DISCO_INFO}'/></iq>"
        )
        await idle()
        replies = {el.get("id"): el for el in server.read()}
        ok = replies["p1"]
        assert ok.tag == C("iq") and ok.get("type") == "result"
        assert (ok.get("from"), ok.get("to")) == (f"room@{DOMAIN}", "alice@localhost/r")
        err = replies["p2"].find(C("error"))
        assert err is not None and err.find(qn(NS_STANZAS, "service-unavailable")) is not None
        query = replies["d1"].find(f"{{{NS_DISCO_INFO}}}query")
        features = {f.get("var") for f in query.iter(f"{{{NS_DISCO_INFO}}}feature")}
        assert features == {NS_PING, NS_DISCO_INFO}

    run_async(go())


def test_messages_and_presence_reach_hooks(run_async: Run) -> None:
    """Messages and presence go to the 'message' and 'presence' hooks in jabber:client."""
    module = Module("hooks")
    got: list[etree._Element] = []

    @module.on("message")
    async def on_message(app: ComponentApp, stanza: etree._Element) -> None:
        got.append(stanza)

    @module.on("presence")
    async def on_presence(app: ComponentApp, stanza: etree._Element) -> None:
        got.append(stanza)

    async def go() -> None:
        _app, server = linked_app([module])
        server.send(
            f"<message from='a@localhost/r' to='x@{DOMAIN}'><body>hi</body></message>"
            f"<presence from='a@localhost/r' to='x@{DOMAIN}/nick'/>"
        )
        await idle()
        assert [el.tag for el in got] == [qn(NS_CLIENT, "message"), qn(NS_CLIENT, "presence")]
        assert got[0].findtext(qn(NS_CLIENT, "body")) == "hi"
        assert server.read() == []

    run_async(go())


def test_server_qualifies_elements_itself(run_async: Run) -> None:
    """The link reads the stream's namespace as jabber:client; what the server qualifies with
    jabber:component:accept itself (RFC 6120 §4.8.3), the handshake answer included, reaches
    the hooks in jabber:client all the same."""
    module = Module("hooks")
    got: list[etree._Element] = []

    @module.on("message")
    async def on_message(app: ComponentApp, stanza: etree._Element) -> None:
        got.append(stanza)

    async def go() -> None:
        app = make_app([module])
        app.start()
        server = Server(app)
        server.send(SERVER_HEADER.format(id="sid1"))
        server.read()
        server.send(f"<handshake xmlns='{NS_COMPONENT}'/>")
        assert app.linked
        frm = f"from='a@localhost/r' to='x@{DOMAIN}'"
        server.send(
            f"<message {frm} id='1'><body>a</body></message>"
            f"<message xmlns='{NS_COMPONENT}' {frm} id='2'><body>b</body></message>"
            f"<message {frm} id='3'><body xmlns='{NS_COMPONENT}'>c</body></message>"
        )
        await idle()
        assert [m.get("id") for m in got] == ["1", "2", "3"]
        for msg, body in zip(got, "abc", strict=True):
            assert [el.tag for el in msg.iter()] == [
                qn(NS_CLIENT, "message"),
                qn(NS_CLIENT, "body"),
            ]
            assert msg.findtext(qn(NS_CLIENT, "body")) == body
        assert server.read() == []

    run_async(go())


def test_message_without_handler_is_refused(run_async: Run) -> None:
    """With no 'message' hook a message is answered service-unavailable; an error is not
    answered at all."""

    async def go() -> None:
        _app, server = linked_app()
        server.send(
            f"<message from='a@localhost/r' to='x@{DOMAIN}' id='m1'><body>hi</body></message>"
            f"<message from='a@localhost/r' to='x@{DOMAIN}' type='error' id='m2'/>"
        )
        await idle()
        (reply,) = server.read()
        assert reply.get("id") == "m1" and reply.get("type") == "error"
        assert reply.get("from") == f"x@{DOMAIN}" and reply.get("to") == "a@localhost/r"

    run_async(go())


def test_same_bare_jid_in_order_others_concurrently(run_async: Run) -> None:
    """Stanzas to one bare JID are handled one after the other; another JID does not wait."""
    module = Module("slow")
    gates: dict[str, asyncio.Event] = {}
    log: list[str] = []

    @module.on("message")
    async def on_message(app: ComponentApp, stanza: etree._Element) -> None:
        body = stanza.findtext(qn(NS_CLIENT, "body")) or ""
        log.append(f"start {body}")
        await gates.setdefault(body, asyncio.Event()).wait()
        log.append(f"end {body}")

    async def go() -> None:
        _app, server = linked_app([module])
        for to, body in [("room1", "1a"), ("room1", "1b"), ("room2", "2a")]:
            gates[body] = asyncio.Event()
            server.send(
                f"<message from='a@localhost/r' to='{to}@{DOMAIN}/n'><body>{body}</body></message>"
            )
        await idle()
        assert log == ["start 1a", "start 2a"]
        gates["2a"].set()
        gates["1a"].set()
        await idle()
        assert log[2:] == ["end 2a", "end 1a", "start 1b"] or log[2:] == [
            "end 1a",
            "end 2a",
            "start 1b",
        ]
        gates["1b"].set()
        await idle()
        assert log[-1] == "end 1b"

    run_async(go())


def test_in_flight_work_is_bounded(run_async: Run) -> None:
    """Past max_in_flight handlers the client stops reading until they finish."""
    module = Module("slow")
    gate = asyncio.Event()

    @module.on("message")
    async def on_message(app: ComponentApp, stanza: etree._Element) -> None:
        await gate.wait()

    async def go() -> None:
        _app, server = linked_app([module], max_in_flight=4)
        for n in range(4):
            server.send(
                f"<message from='a@localhost/r' to='r{n}@{DOMAIN}'><body>x</body></message>"
            )
        await idle()
        assert server.transport.producerState == "paused"
        gate.set()
        await idle()
        assert server.transport.producerState == "producing"

    run_async(go())


# Sending and IQs -----------------------------------------------------------------------------


def test_send_and_iq(run_async: Run) -> None:
    """send() writes in jabber:component:accept with 'from' defaulting to the domain;
    iq() returns the result, raises StanzaError for an error reply, and ignores a reply
    from an entity the IQ was not sent to."""

    async def go() -> None:
        app, server = linked_app()
        assert app.send(make("message", to="a@localhost"))
        (msg,) = server.read()
        assert msg.tag == C("message") and msg.get("from") == DOMAIN

        ping = make("iq", to="a@localhost/r", type="get")
        etree.SubElement(ping, QN_PING, nsmap={None: NS_PING})
        call = asyncio.ensure_future(app.iq(ping, timeout=5))
        await idle()
        (sent,) = server.read()
        iq_id = sent.get("id")
        assert sent.tag == C("iq") and iq_id
        server.send(f"<iq from='mallory@localhost/x' to='{DOMAIN}' type='result' id='{iq_id}'/>")
        await idle()
        assert not call.done()
        server.send(f"<iq from='A@localhost/r' to='{DOMAIN}' type='result' id='{iq_id}'/>")
        reply = await call
        assert reply.get("type") == "result" and reply.tag == qn(NS_CLIENT, "iq")

        ping = make("iq", to="a@localhost/r", type="get", id="e1")
        etree.SubElement(ping, QN_PING, nsmap={None: NS_PING})
        call = asyncio.ensure_future(app.iq(ping, timeout=5))
        await idle()
        server.send(
            f"<iq from='a@localhost/r' to='{DOMAIN}' type='error' id='e1'><error type='cancel'>"
            f"<feature-not-implemented xmlns='{NS_STANZAS}'/></error></iq>"
        )
        with pytest.raises(StanzaError) as err:
            await call
        assert err.value.condition == "feature-not-implemented"

    run_async(go())


def test_iq_fails_when_the_link_drops(run_async: Run) -> None:
    """A pending iq() fails with ConnectionError when the link goes down; send() and iq()
    while down fail at once."""

    async def go() -> None:
        app, server = linked_app()
        ping = make("iq", to="a@localhost/r", type="get")
        call = asyncio.ensure_future(app.iq(ping, timeout=5))
        await idle()
        server.lose()
        with pytest.raises(ConnectionError):
            await call
        assert not app.linked
        assert not app.send(make("message", to="a@localhost"))
        with pytest.raises(ConnectionError):
            await app.iq(make("iq", to="a@localhost", type="get"))

    run_async(go())


# Reconnection and shutdown -------------------------------------------------------------------


def test_reconnects_forever_with_backoff(run_async: Run) -> None:
    """Each failed attempt waits twice as long, up to the maximum; a link that stayed up
    resets the backoff; a link lost at once does not."""

    async def go() -> None:
        app, server = linked_app()
        server.lose()
        assert retry_delays(app) == [1.0]
        factory = None
        for expected in (2.0, 4.0, 8.0, 8.0):
            app.reactor.advance(retry_delays(app)[0])
            connector_args = app.reactor.tcpClients[-1]
            factory = connector_args[2]
            factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
            assert retry_delays(app) == [expected]
        app.reactor.advance(8.0)
        server = Server(app)
        server.accept()
        assert app.linked
        server.lose()  # lost at once: keeps backing off
        assert retry_delays(app) == [8.0]
        app.reactor.advance(8.0)
        server = Server(app)
        server.accept()
        app.reactor.advance(app.stable_after)
        server.lose()
        assert retry_delays(app) == [1.0]
        assert len(app.reactor.tcpClients) == 7

    run_async(go())


def test_conflict_waits_the_longest_delay(run_async: Run) -> None:
    """Replaced by another instance (<conflict/>): come back only after the maximum delay."""

    async def go() -> None:
        app, server = linked_app()
        server.send(
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        )
        server.lose()
        assert retry_delays(app) == [8.0]

    run_async(go())


def test_graceful_stop(run_async: Run) -> None:
    """stop(): in-flight work finishes and its answer is sent, new stanzas are refused with
    remote-server-timeout, then the stream is closed and nothing reconnects."""
    module = Module("slow")
    gate = asyncio.Event()

    @module.on("message")
    async def on_message(app: ComponentApp, stanza: etree._Element) -> None:
        await gate.wait()
        app.send(make("message", to=stanza.get("from"), frm=stanza.get("to")))

    async def go() -> None:
        app, server = linked_app([module])
        server.send(f"<message from='a@localhost/r' to='x@{DOMAIN}'><body>1</body></message>")
        await idle()
        stopping = asyncio.ensure_future(app.stop(timeout=5))
        await idle()
        server.send(f"<message from='a@localhost/r' to='y@{DOMAIN}' id='late'><body/></message>")
        (refused,) = server.read()
        assert refused.get("id") == "late"
        err = refused.find(C("error"))
        assert err is not None and err.get("type") == "wait"
        assert err.find(qn(NS_STANZAS, "remote-server-timeout")) is not None
        assert not server.closed
        gate.set()
        await idle()
        (answer,) = server.read()
        assert answer.get("from") == f"x@{DOMAIN}"
        assert server.closed and server.transport.disconnecting
        server.lose()
        await asyncio.wait_for(stopping, 1)
        assert retry_delays(app) == []

    run_async(go())


def test_keepalive_whitespace(run_async: Run) -> None:
    """A linked client sends a space every keepalive interval (RFC 6120 §4.6.1)."""

    async def go() -> None:
        app = make_app(keepalive=60.0)
        app.start()
        server = Server(app)
        server.accept()
        server.transport.clear()
        app.reactor.advance(60.0)
        assert server.transport.value() == b" "
        server.lose()
        server.transport.clear()
        app.reactor.advance(60.0)
        assert server.transport.value() == b""

    run_async(go())

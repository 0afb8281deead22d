"""External components end to end (XEP-0114): a real core, our component client running the
echo component (tests/e2e/echo_component.py) as separate processes, raw component streams,
and clients as the peers on the other side."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from lxml import etree

from core.component_routes import rendezvous
from core.xmpp.component import handshake_digest
from core.xmpp.ns import (
    NS_CLIENT,
    NS_COMPONENT,
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_STREAMS,
    NS_VERSION,
    qn,
)
from core.xmpp.parser import StreamOpen
from tests.harness import (
    ComponentProcess,
    CoreProcess,
    RawClient,
    free_port,
    separate_db,
    stanza_error,
    wait_links,
)

PASSWORD = "component-test-pw"
SECRETS = {"echo": "echo-secret", "shard": "shard-secret", "cut": "cut-secret"}
COMPONENT_ENV = {
    "SWITCHBOARD_COMPONENTS_ECHO_DOMAIN": "echo.localhost",
    "SWITCHBOARD_COMPONENTS_ECHO_SECRET": SECRETS["echo"],
    "SWITCHBOARD_COMPONENTS_SHARD_DOMAIN": "shard.localhost",
    "SWITCHBOARD_COMPONENTS_SHARD_SECRET": SECRETS["shard"],
    "SWITCHBOARD_COMPONENTS_SHARD_INSTANCES": "shard",
    "SWITCHBOARD_COMPONENTS_CUT_DOMAIN": "cut.localhost",
    "SWITCHBOARD_COMPONENTS_CUT_SECRET": SECRETS["cut"],
    "SWITCHBOARD_COMPONENTS_NEVER_DOMAIN": "never.localhost",
    "SWITCHBOARD_COMPONENTS_NEVER_SECRET": "never-secret",
    "SWITCHBOARD_COMPONENTS_RAW_DOMAIN": "raw.localhost",
    "SWITCHBOARD_COMPONENTS_RAW_SECRET": "raw-secret",
}
USERS = ("alice", "bob", "carol", "dave", "erin")


class EchoProcess(ComponentProcess):
    """One instance of the echo component, a process of its own."""

    def __init__(self, core: CoreProcess, name: str, instance: str, port: int | None) -> None:
        port = core.component_port if port is None else port
        args = ["--name", name, "--instance", instance, "--port", str(port)]
        super().__init__(core, f"component-{name}-{instance}.log", "tests.e2e.echo_component", args)
        self.name = name
        self.instance = instance
        self.port = port


class Echoes:
    """Starts echo components for one test and stops them all at its end."""

    def __init__(self, core: CoreProcess) -> None:
        self.core = core
        self.procs: list[EchoProcess] = []

    def start(self, name: str, instance: str, port: int | None = None) -> EchoProcess:
        proc = EchoProcess(self.core, name, instance, port).start()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            p.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def components_core(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CoreProcess]:
    """One core with the test components configured, shared by this module."""
    workdir = Path(tmp_path_factory.mktemp("components"))
    proc = CoreProcess(separate_db(redis_server), workdir, env=COMPONENT_ENV).start()
    for user in USERS:
        proc.add_user(user, PASSWORD)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def echoes(components_core: CoreProcess) -> Iterator[Echoes]:
    group = Echoes(components_core)
    try:
        yield group
    finally:
        group.stop_all()


# Helpers ------------------------------------------------------------------------------------


async def login(core: CoreProcess, user: str, resource: str = "raw") -> RawClient:
    client = RawClient(core.c2s_port)
    await client.login(user, PASSWORD, resource=resource)
    return client


async def next_stanza(client: RawClient, local: str, timeout: float = 5.0) -> etree._Element:
    """The next stanza named ``local`` (message, iq, presence); others are skipped."""
    async with asyncio.timeout(timeout):
        while True:
            el = await client.next_element(timeout)
            if el.tag == qn(NS_CLIENT, local):
                return el


async def ask(client: RawClient, to: str, body: str, timeout: float = 5.0) -> etree._Element:
    await client.send(f"<message to='{to}' type='chat'><body>{body}</body></message>")
    return await next_stanza(client, "message", timeout)


def body_of(el: etree._Element) -> str | None:
    return el.findtext(qn(NS_CLIENT, "body"))


async def served_by(client: RawClient, jids: list[str]) -> dict[str, str]:
    """Send one message to each JID; which instance answered for each (from the reply body)."""
    for jid in jids:
        await client.send(f"<message to='{jid}' type='chat'><body>{jid}</body></message>")
    out: dict[str, str] = {}
    while len(out) < len(jids):
        reply = await next_stanza(client, "message")
        instance, _, echoed = (body_of(reply) or "").partition("|")
        assert echoed == reply.get("from"), etree.tostring(reply)
        out[echoed] = instance
    return out


class RawComponent(RawClient):
    """A component speaking raw XEP-0114, for precise checks of the server side."""

    async def open(self, domain: str) -> StreamOpen:
        await self.connect()
        await self.send(
            f"<stream:stream xmlns='{NS_COMPONENT}' xmlns:stream='{NS_STREAMS}' to='{domain}'>"
        )
        ev = await self.next_event()
        assert isinstance(ev, StreamOpen), ev
        self.header = ev
        return ev

    async def stream_error(self, timeout: float = 5.0) -> str | None:
        """The condition of the next element, which must be a stream error."""
        ev = await self.next_event(timeout)
        assert isinstance(ev, etree._Element), ev
        assert ev.tag == qn(NS_STREAMS, "error"), etree.tostring(ev)
        return next(etree.QName(c).localname for c in ev if etree.QName(c).localname != "text")


class CuttableProxy:
    """A TCP relay between a component and the core whose connections can be cut and whose
    door can be held shut: a network failure on demand."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.open = True
        self.pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    async def __aenter__(self) -> CuttableProxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        self.server.close()

    def cut(self, hold: bool = True) -> None:
        """Abort every relayed connection; with ``hold`` refuse new ones until ``release``."""
        self.open = not hold
        for a, b in list(self.pairs):
            a.transport.abort()
            b.transport.abort()
        self.pairs.clear()

    def release(self) -> None:
        self.open = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self.pairs.add(pair)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.pairs.discard(pair)


@contextlib.asynccontextmanager
async def session(core: CoreProcess, user: str, resource: str = "raw") -> AsyncIterator[RawClient]:
    client = await login(core, user, resource)
    try:
        yield client
    finally:
        await client.close()


# Tests ---------------------------------------------------------------------------------------


def test_message_and_iq_round_trip(components_core: CoreProcess, echoes: Echoes) -> None:
    """A client's message to user@component reaches our component client and its answer comes
    back; an IQ to the component's domain is served by its Module API handlers."""
    core = components_core
    echoes.start("echo", "a")

    async def run() -> None:
        await wait_links(core, "echo.localhost", {"a"})
        async with session(core, "alice") as alice:
            reply = await ask(alice, "Bob@echo.localhost", "hello")
            assert reply.get("from") == "bob@echo.localhost"
            assert reply.get("to") == alice.jid
            assert body_of(reply) == "a|hello"
            await alice.send(
                f"<iq to='echo.localhost' type='get' id='v1'><query xmlns='{NS_VERSION}'/></iq>"
            )
            iq = await next_stanza(alice, "iq")
            assert iq.get("type") == "result" and iq.get("id") == "v1"
            assert iq.findtext(f"{{{NS_VERSION}}}query/{{{NS_VERSION}}}version") == "a"
            await alice.send(
                "<iq to='room@echo.localhost' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"
            )
            iq = await next_stanza(alice, "iq")
            assert (iq.get("type"), iq.get("from")) == ("result", "room@echo.localhost")
            # An IQ nobody serves: the component's dispatcher answers service-unavailable.
            await alice.send(
                "<iq to='echo.localhost' type='get' id='u1'><x xmlns='urn:example:none'/></iq>"
            )
            iq = await next_stanza(alice, "iq")
            assert stanza_error(iq) == ("cancel", "service-unavailable")

    asyncio.run(run())


def test_component_iq_to_client_and_back(components_core: CoreProcess, echoes: Echoes) -> None:
    """The component sends an IQ to a client with app.iq() and gets the client's result."""
    core = components_core
    echoes.start("echo", "a")

    async def run() -> None:
        await wait_links(core, "echo.localhost", {"a"})
        async with session(core, "bob") as bob:
            await bob.send("<message to='x@echo.localhost'><body>ping-me</body></message>")
            ping = await next_stanza(bob, "iq")
            assert ping.get("type") == "get" and ping.get("from") == "x@echo.localhost"
            await bob.send(f"<iq type='result' id='{ping.get('id')}' to='x@echo.localhost'/>")
            reply = await next_stanza(bob, "message")
            assert body_of(reply) == "a|pong result"

    asyncio.run(run())


def test_disco_lists_components(components_core: CoreProcess, echoes: Echoes) -> None:
    """The server's disco#items lists the component domains; the component answers its own
    disco#info from its modules' features."""
    core = components_core
    echoes.start("echo", "a")

    async def run() -> None:
        await wait_links(core, "echo.localhost", {"a"})
        async with session(core, "alice", "disco") as alice:
            await alice.send(
                f"<iq to='localhost' type='get' id='d1'><query xmlns='{NS_DISCO_ITEMS}'/></iq>"
            )
            items = await next_stanza(alice, "iq")
            jids = {i.get("jid") for i in items.iter(f"{{{NS_DISCO_ITEMS}}}item")}
            assert {"echo.localhost", "shard.localhost", "never.localhost"} <= jids
            await alice.send(
                f"<iq to='echo.localhost' type='get' id='d2'><query xmlns='{NS_DISCO_INFO}'/></iq>"
            )
            info = await next_stanza(alice, "iq")
            features = {f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")}
            assert {NS_DISCO_INFO, "urn:xmpp:ping", NS_VERSION} <= features

    asyncio.run(run())


def test_never_connected_component_is_unavailable(components_core: CoreProcess) -> None:
    """A configured component that never connected: service-unavailable, never silence."""

    async def run() -> None:
        async with session(components_core, "carol") as carol:
            reply = await ask(carol, "room@never.localhost", "anyone?")
            assert reply.get("type") == "error"
            assert reply.get("from") == "room@never.localhost"
            assert stanza_error(reply) == ("cancel", "service-unavailable")
            await carol.send(
                "<iq to='never.localhost' type='get' id='n1'><ping xmlns='urn:xmpp:ping'/></iq>"
            )
            iq = await next_stanza(carol, "iq")
            assert stanza_error(iq) == ("cancel", "service-unavailable")

    asyncio.run(run())


def test_handshake_refusals(components_core: CoreProcess) -> None:
    """Unknown domain: host-unknown; wrong secret: not-authorized; a stanza before the
    handshake: not-authorized; a 'from' outside the domain after it: invalid-from."""
    port = components_core.component_port

    async def run() -> None:
        c = RawComponent(port)
        await c.open("nobody.localhost")
        assert await c.stream_error() == "host-unknown"
        await c.close()

        c = RawComponent(port)
        header = await c.open("raw.localhost")
        assert header.attrs.get("from") == "raw.localhost" and header.attrs.get("id")
        await c.send(f"<handshake>{handshake_digest(header.attrs['id'], 'wrong')}</handshake>")
        assert await c.stream_error() == "not-authorized"
        await c.close()

        c = RawComponent(port)
        await c.open("raw.localhost")
        await c.send("<message from='raw.localhost' to='alice@localhost'><body>x</body></message>")
        assert await c.stream_error() == "not-authorized"
        await c.close()

        c = RawComponent(port)
        header = await c.open("raw.localhost")
        await c.send(f"<handshake>{handshake_digest(header.attrs['id'], 'raw-secret')}</handshake>")
        ok = await c.next_event()
        assert isinstance(ok, etree._Element) and ok.tag == qn(NS_COMPONENT, "handshake")
        await c.send("<message from='x@localhost' to='alice@localhost'><body>x</body></message>")
        assert await c.stream_error() == "invalid-from"
        await c.close()

    asyncio.run(run())


def test_link_cut_answers_timeout_then_reconnects(
    components_core: CoreProcess, echoes: Echoes
) -> None:
    """When the network drops the link, stanzas get remote-server-timeout (type wait) during
    the grace period; the component reconnects by itself and traffic flows again."""
    core = components_core

    async def run() -> None:
        async with CuttableProxy(core.component_port) as proxy:
            comp = echoes.start("cut", "p", port=proxy.port)
            await wait_links(core, "cut.localhost", {"p"})
            async with session(core, "dave") as dave:
                assert body_of(await ask(dave, "r@cut.localhost", "before")) == "p|before"
                proxy.cut(hold=True)
                await wait_links(core, "cut.localhost", set())
                reply = await ask(dave, "r@cut.localhost", "during")
                assert reply.get("type") == "error"
                assert stanza_error(reply) == ("wait", "remote-server-timeout")
                proxy.release()
                await wait_links(core, "cut.localhost", {"p"})
                assert body_of(await ask(dave, "r@cut.localhost", "after")) == "p|after"
            assert comp.alive, comp.log()

    asyncio.run(run())


def test_shard_assignment_and_failover(components_core: CoreProcess, echoes: Echoes) -> None:
    """Two shard instances: 100 bare JIDs split across both by rendezvous hashing, each JID
    always to the same instance; stopping one moves exactly its JIDs to the other, and
    bringing it back restores the original assignment."""
    core = components_core
    domain = "shard.localhost"
    jids = [f"room{i}@{domain}" for i in range(100)]
    expected = {j: rendezvous(j, ["a", "b"]) for j in jids}
    echoes.start("shard", "a")
    b = echoes.start("shard", "b")

    async def run() -> None:
        await wait_links(core, domain, {"a", "b"})
        async with session(core, "erin") as erin:
            first = await served_by(erin, jids)
            assert set(first.values()) == {"a", "b"}
            assert first == expected
            assert await served_by(erin, jids) == first
            # Stanzas to the domain itself follow the sender's bare JID.
            await erin.send(
                f"<iq to='{domain}' type='get' id='v'><query xmlns='{NS_VERSION}'/></iq>"
            )
            iq = await next_stanza(erin, "iq")
            version = iq.findtext(f"{{{NS_VERSION}}}query/{{{NS_VERSION}}}version")
            assert version == rendezvous("erin@localhost", ["a", "b"])

            assert b.stop() == 0  # SIGTERM: a graceful stop
            await wait_links(core, domain, {"a"})
            assert set((await served_by(erin, jids)).values()) == {"a"}

            b.start()
            await wait_links(core, domain, {"a", "b"})
            assert await served_by(erin, jids) == first

    asyncio.run(run())


def test_component_survives_core_restart(make_core: Callable[..., CoreProcess]) -> None:
    """Restart the core on the same ports: the component reconnects by itself and client
    traffic reaches it again. A component that went down just before a restart is still
    answered remote-server-timeout after it (the grace period lives in Redis)."""
    core = make_core(env=COMPONENT_ENV)
    core.add_user("alice", PASSWORD)
    group = Echoes(core)
    comp = group.start("echo", "r")
    try:
        asyncio.run(wait_links(core, "echo.localhost", {"r"}))
        core.stop()
        core.start()

        async def after_restart() -> None:
            await wait_links(core, "echo.localhost", {"r"})
            async with session(core, "alice") as alice:
                assert body_of(await ask(alice, "z@echo.localhost", "back")) == "r|back"

        asyncio.run(after_restart())
        assert comp.alive
        assert comp.stop() == 0
        asyncio.run(wait_links(core, "echo.localhost", set()))
        core.stop()
        core.start()

        async def component_still_away() -> None:
            async with session(core, "alice") as alice:
                reply = await ask(alice, "z@echo.localhost", "anyone?")
                assert stanza_error(reply) == ("wait", "remote-server-timeout")
                comp.start()
                await wait_links(core, "echo.localhost", {"r"})
                assert body_of(await ask(alice, "z@echo.localhost", "again")) == "r|again"

        asyncio.run(component_still_away())
    finally:
        group.stop_all()

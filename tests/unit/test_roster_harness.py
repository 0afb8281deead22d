"""A core without sockets for RFC 6121 transcripts: a real CoreServer with its modules on the
test Redis, fake client sessions that record what they are sent, and a fake route for other
domains. Tests send XML in and compare the XML that comes out as parsed trees.

The tests at the end check the harness itself.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import redis.asyncio
from lxml import etree

from core.runtime.config import Config
from core.server import CoreServer
from core.storage import keys
from core.xmpp.jid import JID, parse_jid
from core.xmpp.ns import NS_CLIENT
from core.xmpp.stanza import Element
from tests.unit.helpers import mismatch


def xml(text: str) -> Element:
    """A stanza from its text, in the jabber:client namespace like everything in the core."""
    wrapper = etree.fromstring(f"<w xmlns='{NS_CLIENT}'>{text}</w>")
    return copy.deepcopy(wrapper[0])


def show(stanzas: list[Element]) -> str:
    return "\n".join(etree.tostring(s).decode() for s in stanzas) or "(nothing)"


def assert_stanzas(actual: list[Element], *expected: str) -> None:
    """``actual`` holds exactly the ``expected`` stanzas, in that order."""
    wanted = [xml(e) for e in expected]
    assert len(actual) == len(wanted), f"got:\n{show(actual)}\nexpected:\n{show(wanted)}"
    for a, e in zip(actual, wanted, strict=True):
        why = mismatch(a, e)
        assert why is None, f"{why}\ngot:\n{show(actual)}\nexpected:\n{show(wanted)}"


def assert_contains(actual: list[Element], *expected: str) -> None:
    """Each of the ``expected`` stanzas is in ``actual`` (in any order), and nothing else."""
    wanted = [xml(e) for e in expected]
    rest = list(actual)
    for e in wanted:
        found = next((a for a in rest if mismatch(a, e) is None), None)
        assert found is not None, f"missing {etree.tostring(e).decode()}\ngot:\n{show(actual)}"
        rest.remove(found)
    assert not rest, f"unexpected:\n{show(rest)}"


class FakeSession:
    """A bound client session (the router's Session) that records what it is sent."""

    def __init__(self, server: CoreServer, jid: JID) -> None:
        self.server = server
        self.jid = jid
        self.full = str(jid)
        self.bare = str(jid.bare)
        self.priority = 0
        self.available = False
        self.presence: Element | None = None
        self.interested = False
        self.data: dict[str, Any] = {}
        self.out: list[Element] = []
        self.closed_with: Any = None

    def send(self, stanza: Element) -> None:
        self.out.append(copy.deepcopy(stanza))

    def close_with(self, error: Any) -> None:
        self.closed_with = error

    def take(self) -> list[Element]:
        """What the session was sent since the last take."""
        out, self.out = self.out, []
        return out


class FakeRoute:
    """The route to other domains (the s2s layer): records what it is given."""

    def __init__(self) -> None:
        self.out: list[Element] = []

    def send(self, stanza: Element) -> None:
        self.out.append(copy.deepcopy(stanza))

    def take(self) -> list[Element]:
        out, self.out = self.out, []
        return out


class Im:
    """A core with its default modules on the test Redis, driven without sockets."""

    def __init__(
        self, client: redis.asyncio.Redis, domain: str = "localhost", node_id: str = "test-node"
    ) -> None:
        self.redis = client
        self.config = Config(domain=domain, node_id=node_id)
        self.remote = FakeRoute()
        self.server: CoreServer | None = None

    def limit(self, section: str, **values: int) -> Im:
        """Set ``[section]`` limits before ``start`` (e.g. ``limit("offline", max_messages=2)``)."""
        setattr(self.config, section, SimpleNamespace(**values))
        return self

    async def start(self) -> Im:
        self.server = CoreServer(self.config, self.redis, reactor=SimpleNamespace())
        await self.server.dispatcher.emit("server-started", self.server)
        self.server.router.remote_route = lambda domain: self.remote
        return self

    async def stop(self) -> None:
        """What a core does when it stops: modules let go of their listeners."""
        await self.core.dispatcher.emit("server-stopping", self.core)

    @property
    def core(self) -> CoreServer:
        assert self.server is not None
        return self.server

    async def accounts(self, *names: str) -> None:
        """Create accounts (only their existence matters here, not their credentials)."""
        for name in names:
            bare = f"{name}@{self.config.domain}"
            await self.redis.hset(keys.account(bare), "created", "0")

    async def login(
        self,
        jid: str,
        *,
        roster: bool = True,
        available: bool = True,
        priority: int | None = None,
    ) -> FakeSession:
        """Bind a session; by default it asks for the roster and sends initial presence.
        What it was sent on the way is dropped."""
        session = FakeSession(self.core, parse_jid(jid))
        self.core.router.bind(session)
        await self.core.session_started(session)
        if roster:
            await self.send(
                session, "<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>"
            )
        if available:
            prio = "" if priority is None else f"<priority>{priority}</priority>"
            await self.send(session, f"<presence>{prio}</presence>")
        session.take()
        return session

    async def logout(self, session: FakeSession) -> None:
        """The connection ends (without an unavailable presence from the client)."""
        await self.core.session_ended(session)

    async def send(self, session: FakeSession, text: str) -> None:
        """A stanza from the client of ``session``, as the c2s stream hands it to the router."""
        el = xml(text)
        el.set("from", session.full)
        to = parse_jid(el.get("to")) if el.get("to") else None
        await self._wait(self.core.router.route(el, session.jid, to, session))

    async def receive(self, text: str) -> None:
        """A stanza from another server (or an entity that is not a local session)."""
        el = xml(text)
        to = parse_jid(el.get("to")) if el.get("to") else None
        await self._wait(self.core.router.route(el, parse_jid(el.get("from", "")), to))

    async def _wait(self, pending: Awaitable[None] | None) -> None:
        if pending is not None:
            await pending


def run_im(
    run_async: Callable[[Awaitable[Any]], Any],
    client: redis.asyncio.Redis,
    scenario: Callable[[Im], Awaitable[Any]],
    *,
    limits: dict[str, dict[str, int]] | None = None,
) -> Any:
    """Start a core on ``client`` and run ``scenario(im)`` on the test's loop."""

    async def go() -> Any:
        im = Im(client)
        for section, values in (limits or {}).items():
            im.limit(section, **values)
        await im.start()
        try:
            return await scenario(im)
        finally:
            await im.stop()

    return run_async(go())


def test_login_binds_an_available_interested_session(redis_client: Any, run_async: Any) -> None:
    """A harness login leaves a bound session that asked for the roster and is available."""

    async def scenario(im: Im) -> None:
        await im.accounts("alice")
        s = await im.login("alice@localhost/a", priority=5)
        assert im.core.router.session(s.jid) is s
        assert s.interested and s.available and s.priority == 5

    run_im(run_async, redis_client, scenario)


def test_mismatch_names_the_difference() -> None:
    """The tree comparison reports a differing attribute and accepts the wildcard."""
    assert mismatch(xml("<iq type='set' id='x'/>"), xml("<iq type='set' id='*'/>")) is None
    assert "type" in (
        mismatch(xml("<iq type='get' id='x'/>"), xml("<iq type='set' id='*'/>")) or ""
    )

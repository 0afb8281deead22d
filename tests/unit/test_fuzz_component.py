"""Property-based robustness of the component listener (XEP-0114; RFC 6120 §4.9, §8).

A real CoreServer with every default module and two component domains (``muc.localhost``,
one link; ``shard.localhost``, shard instances) on the test Redis; a component linked over a
StringTransport sends generated stanzas (core.component_listener) with random types, ids,
'from' (its own domain, other domains, malformed), 'to' (local users online or not, the
server, itself, the other component, remote domains, malformed, none) and payloads, in
jabber:component:accept and, COMPAT, jabber:client. A client of the server is online
meanwhile. The properties, as for client streams (test_fuzz_c2s.py):

* nothing escapes and nothing is logged at ERROR;
* every IQ get/set is answered exactly once over the link, unless it was delivered to its
  addressee (a client, the other component, the component itself);
* an error, or an IQ result, is never answered with an error;
* every stanza the server sends carries its content namespace without prefix (§4.8.5);
* the link stays usable (a ping to the server is answered) or is closed with a stream error
  of RFC 6120 §4.9.3; the client's stream stays usable either way;
* the link records in Redis are the node's live links, and what the client's account has
  stored is intact afterwards (as in test_fuzz_c2s.py);
* random bytes and truncated XML, before and after the handshake, get a stream error or
  nothing, and new links are still served.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from core.component_listener import ComponentFactory, ComponentStream
from core.runtime.config import ComponentConfig
from core.storage import keys
from core.xmpp.component_link import QN_HANDSHAKE, handshake_digest
from core.xmpp.ns import NS_CLIENT, NS_COMPONENT, NS_PING, NS_STREAMS, qn
from core.xmpp.parser import StreamOpen, StreamParser
from tests.unit.helpers import DOMAIN, settle
from tests.unit.test_fuzz_c2s import (
    BOB,
    GARBAGE,
    MALFORMED_JID,
    ME,
    OTHER_PAYLOAD,
    OWN_PAYLOAD,
    TEXT,
    VALID_JID,
    C2SFuzz,
    check_answers,
    check_stream_end,
    drain,
    fuzz_settings,
    mostly,
    parse_sent,
    short,
    stanza,
    stanzas,
    weighted,
)

Element = etree._Element
MUC = "muc.localhost"
SHARD = "shard.localhost"
SECRETS = {MUC: "muc-secret", SHARD: "shard-secret"}
COMPONENTS = {
    "muc": ComponentConfig(domain=MUC, secret=SECRETS[MUC]),
    "shard": ComponentConfig(domain=SHARD, secret=SECRETS[SHARD], instances="shard"),
}

# 'from' of a component's stanzas: mostly at its domain (XEP-0114 §3), else anything.
FROM = weighted(
    (2, st.none()),
    (
        8,
        st.sampled_from([MUC, f"room@{MUC}", f"room@{MUC}/nick", f"{MUC}/x", "ROOM@MUC.LOCALHOST"]),
    ),
    (
        1,
        st.sampled_from([SHARD, f"sub.{MUC}", DOMAIN, "example.org", "alice@localhost"])
        | MALFORMED_JID
        | TEXT,
    ),
)
# 'to': the users of the server, the server, both components, other domains, or nothing.
TO = weighted(
    (1, st.none()),
    (6, st.sampled_from([ME, "alice@localhost", BOB, DOMAIN, SHARD, f"node@{SHARD}", MUC])),
    (4, VALID_JID),
    (1, MALFORMED_JID | TEXT),
)


@st.composite
def component_iq(draw: st.DrawFn) -> tuple[str | None, str | None, list[Element]]:
    """The type, 'to' and children of an IQ from a component: a client's payloads,
    addressed anywhere."""
    count = draw(st.sampled_from([1, 1, 1, 1, 1, 0, 2]))
    children = [draw(weighted((3, OTHER_PAYLOAD), (2, OWN_PAYLOAD))) for _ in range(count)]
    stype = draw(
        mostly(st.sampled_from(["get", "set"]), st.sampled_from(["result", "error", None]))
    )
    return stype, draw(TO), children


@st.composite
def component_stanza(draw: st.DrawFn) -> Element:
    """A stanza from a component, in its namespace or (COMPAT) in jabber:client."""
    ns = draw(weighted((5, st.just(NS_COMPONENT)), (1, st.just(NS_CLIENT))))
    return draw(stanza(ns=ns, to=TO, presence_to=TO, frm=FROM, iq=component_iq()))


class Link:
    """One component connection over a StringTransport, with what the server writes parsed."""

    def __init__(self, server: Any, port: int) -> None:
        self.proto: ComponentStream = ComponentFactory(server).buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.proto.makeConnection(self.transport)
        self.parser = StreamParser(max_stanza_bytes=1 << 20)
        self.header: StreamOpen | None = None
        self.events: list[Any] = []
        self.lost = False

    def send(self, data: str | bytes) -> None:
        self.proto.dataReceived(data.encode() if isinstance(data, str) else data)

    def read(self) -> list[Element]:
        """The elements the server wrote since the last read (all events kept in events)."""
        data = self.transport.value()
        self.transport.clear()
        out = []
        for ev in self.parser.feed(data) if data else []:
            self.events.append(ev)
            if isinstance(ev, StreamOpen):
                self.header = ev
            elif isinstance(ev, etree._Element):
                out.append(ev)
        return out

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def open(self, domain: str) -> None:
        self.send(
            f"<stream:stream xmlns='{NS_COMPONENT}' xmlns:stream='{NS_STREAMS}' "
            f"to='{domain}' from='{domain}/one'>"
        )
        self.read()

    def handshake(self, domain: str) -> None:
        assert self.header is not None
        self.send(
            f"<handshake>{handshake_digest(self.header.attrs['id'], SECRETS[domain])}</handshake>"
        )
        assert [el.tag for el in self.read()] == [QN_HANDSHAKE]

    def lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))

    def check_end(self) -> None:
        """Closed with a stream error of RFC 6120 §4.9.3 (or by its peer) and the close tag."""
        check_stream_end(self.events, self.proto)


class ComponentFuzz(C2SFuzz):
    """The C2S harness with component domains, and links to them closed after each example."""

    def __init__(self, redis_url: str, tmp_path: Path) -> None:
        super().__init__(redis_url, tmp_path, components=COMPONENTS)
        self.links: list[Link] = []
        self._port = 41000

    def link(self) -> Link:
        self._port += 1
        link = Link(self.server, self._port)
        self.links.append(link)
        return link

    async def linked(self, domain: str) -> Link:
        link = self.link()
        link.open(domain)
        link.handshake(domain)
        await self.quiet()
        return link

    async def quiet(self) -> None:
        """Let the server finish what the last input started."""
        await settle(self.server)

    async def cleanup(self) -> None:
        for link in self.links:
            link.lose()
        self.links.clear()
        await self.quiet()
        await super().cleanup()


@pytest.fixture
def fuzz(redis_url: str, tmp_path: Path) -> Iterator[ComponentFuzz]:
    """A core with component domains for the examples of one test."""
    with ComponentFuzz(redis_url, tmp_path) as harness:
        yield harness


PING = f"<iq type='get' id='final-ping' from='{MUC}' to='{DOMAIN}'><ping xmlns='{NS_PING}'/></iq>"


async def from_component(fuzz: ComponentFuzz, texts: list[str], shard_linked: bool) -> None:
    """Send ``texts`` over a link of muc.localhost, with a client online and the shard
    component linked or not, and check each answer, the link and the client's stream."""
    await fuzz.reset()
    alice = await fuzz.online("alice", "res")
    link = await fuzz.linked(MUC)
    shard = await fuzz.linked(SHARD) if shard_linked else None
    for text in texts:
        link.send(text)
        await fuzz.quiet()
        got = link.read()
        elsewhere = await drain(alice) + (shard.read() if shard is not None else [])
        sent = parse_sent(text)
        check_answers(sent, got, link.closed, elsewhere)
        if link.closed:
            break
    if link.closed:
        link.check_end()
    else:
        link.send(PING)
        await fuzz.quiet()
        pongs = [e for e in link.read() if e.get("id") == "final-ping"]
        assert [e.get("type") for e in pongs] == ["result"], [short(e) for e in pongs]
    # The live links in Redis are the links the node has (DESIGN: live state in Redis).
    await fuzz.quiet()
    for domain, route in fuzz.server.components.domains.items():
        records = await fuzz.server.redis.hgetall(keys.component_links(domain))
        assert {k.decode() for k in records} == set(route.links), domain
    await fuzz.finish(alice, [])
    await fuzz.after()


def test_random_stanzas_from_a_component(fuzz: ComponentFuzz) -> None:
    """Random stanzas from a linked component: each IQ get/set answered once, no error
    answered, nothing logged as a failure, the link usable or closed with a stream error,
    the client unharmed."""

    @fuzz_settings(100)
    @given(stanzas(component_stanza(), prelude=False), st.booleans())
    def check(texts: list[str], shard_linked: bool) -> None:
        fuzz.run(from_component(fuzz, texts, shard_linked))

    check()


async def garbage(fuzz: ComponentFuzz, stage: str, chunks: list[bytes]) -> None:
    """``chunks`` before the header, before the handshake or on a live link."""
    await fuzz.reset()
    if stage == "linked":
        link = await fuzz.linked(MUC)
    else:
        link = fuzz.link()
        if stage == "handshake":
            link.open(MUC)
    for chunk in chunks:
        link.send(chunk)
        await fuzz.quiet()
        link.read()
        if link.closed:
            break
    if link.closed:
        link.check_end()
    elif stage == "linked" and not link.proto.parser.bytes_in_stanza:
        link.send(PING)
        await fuzz.quiet()
        if not link.closed:
            pongs = [e for e in link.read() if e.get("id") == "final-ping"]
            assert [e.get("type") for e in pongs] == ["result"]
    link.lose()
    await fuzz.quiet()
    # The server goes on: a new link is accepted and answered.
    other = await fuzz.linked(MUC)
    other.send(PING)
    await fuzz.quiet()
    assert [e.get("type") for e in other.read() if e.get("id") == "final-ping"] == ["result"]


HANDSHAKES = st.sampled_from(
    [b"<handshake/>", b"<handshake>00</handshake>", b"<handshake><x/></handshake>"]
)


def test_random_bytes_on_the_component_port(fuzz: ComponentFuzz) -> None:
    """Random bytes and truncated XML before the header, before the handshake and on a live
    link: a stream error of RFC 6120 §4.9.3 or nothing, and new links are still served."""

    @fuzz_settings(80)
    @given(
        st.sampled_from(["header", "handshake", "linked"]),
        st.lists(GARBAGE | HANDSHAKES, min_size=1, max_size=3),
    )
    def check(stage: str, chunks: list[bytes]) -> None:
        fuzz.run(garbage(fuzz, stage, chunks))

    check()


# -- Regressions found by the properties above ------------------------------------------


def test_client_stanzas_reach_a_component_in_its_namespace(fuzz: ComponentFuzz) -> None:
    """A client that writes jabber:client with a prefix, or declares it again on a child,
    still has its stanza reach a component wholly in jabber:component:accept, with no prefix
    (RFC 6120 §4.8.3 re-scoping, §4.8.5 no prefixes for the content namespace)."""
    sent = [
        f"<c:message xmlns:c='{NS_CLIENT}' to='room@{MUC}' id='m1'><c:body>hi</c:body></c:message>",
        f"<message to='room@{MUC}' id='m2'><body xmlns='{NS_CLIENT}'>hi</body></message>",
        f"<message to='room@{MUC}' id='m3' xmlns:c='{NS_CLIENT}'><c:body>hi</c:body></message>",
    ]

    async def body() -> None:
        await fuzz.reset()
        alice = await fuzz.online("alice", "res")
        link = await fuzz.linked(MUC)
        for text in sent:
            alice.send(text)
            await alice.settle()
            await fuzz.quiet()
            (got,) = link.read()
            assert [(e.tag, e.prefix) for e in got.iter()] == [
                (qn(NS_COMPONENT, "message"), None),
                (qn(NS_COMPONENT, "body"), None),
            ], short(got)

    fuzz.run(body())

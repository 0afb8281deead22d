"""Property-based robustness of incoming server-to-server streams (RFC 6120 §4.9, §8, §13.7;
XEP-0220).

A real CoreServer with every default module on the test Redis and its s2s service; a remote
server ``a.example`` connects over a StringTransport (core.s2s.inbound), authenticates with
dialback, and sends generated stanzas in jabber:server with random types, ids, 'from' (its
users, its domain, domains it did not authenticate, malformed) and 'to' (local accounts online
or not, the server, other domains, malformed), with the payloads of test_fuzz_c2s.py. What the
server sends back to a.example goes to a recording route. A local client is online meanwhile.
The properties, as for client streams:

* nothing escapes and nothing is logged at ERROR;
* every IQ get/set is answered exactly once towards its sender, unless it was delivered to a
  local session;
* an error, or an IQ result, is never answered with an error;
* the stream stays usable (an IQ to the server is answered) or is closed with a stream error
  of RFC 6120 §4.9.3; random bytes and truncated XML get a stream error or nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from core.s2s.inbound import S2SInbound
from core.s2s.service import S2SService
from core.xmpp.ns import NS_CLIENT, NS_PING, NS_SERVER, NS_STREAMS, qn
from core.xmpp.parser import StreamParser
from core.xmpp.stanza import serialize
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
REMOTE = "a.example"
HEADER = (
    f"<stream:stream xmlns='{NS_SERVER}' xmlns:db='jabber:server:dialback' "
    f"xmlns:stream='{NS_STREAMS}' from='{REMOTE}' to='{DOMAIN}' version='1.0'>"
)

FROM = weighted(
    (
        10,
        st.sampled_from(
            [f"juliet@{REMOTE}/balcony", f"romeo@{REMOTE}", REMOTE, "JULIET@A.EXAMPLE"]
        ),
    ),
    (1, st.sampled_from(["eve@c.example", "", f"a@b@{REMOTE}"]) | MALFORMED_JID | TEXT),
)
TO = weighted(
    (8, st.sampled_from([ME, "alice@localhost", BOB, "bob@localhost", "nobody@localhost", DOMAIN])),
    (3, VALID_JID),
    (1, MALFORMED_JID | TEXT),
)


@st.composite
def remote_iq(draw: st.DrawFn) -> tuple[str | None, str | None, list[Element]]:
    """The type, 'to' and children of an IQ from a remote user."""
    count = draw(st.sampled_from([1, 1, 1, 1, 1, 0, 2]))
    children = [draw(weighted((3, OTHER_PAYLOAD), (2, OWN_PAYLOAD))) for _ in range(count)]
    stype = draw(
        mostly(st.sampled_from(["get", "set"]), st.sampled_from(["result", "error", None]))
    )
    return stype, draw(TO), children


REMOTE_STANZA = stanza(ns=NS_SERVER, to=TO, presence_to=TO, frm=FROM, iq=remote_iq())


class Recorder:
    """The route to every other domain: what the server sends there, as the remote server
    reads it (serialised for a jabber:server stream and parsed again)."""

    def __init__(self) -> None:
        self.out: list[Element] = []

    def send(self, stanza: Element) -> None:
        self.out.append(parse_sent(serialize(stanza, NS_SERVER).decode(), NS_SERVER))

    def take(self) -> list[Element]:
        out, self.out = self.out, []
        return out


def refuse(target: Any, factory: Any) -> defer.Deferred[Any]:
    """No outgoing connection is made here."""
    return defer.fail(ConnectionRefusedError("no outgoing connections in this test"))


class S2SFuzz(C2SFuzz):
    """The C2S harness with an s2s service whose replies to other domains are recorded."""

    def __init__(self, redis_url: str, tmp_path: Path) -> None:
        super().__init__(redis_url, tmp_path)
        self.remote = Recorder()
        self.streams: list[Inbound] = []

    async def _start(self) -> None:
        await super()._start()
        self.server.config.s2s.require_encryption = False
        service = S2SService(self.server, connect=refuse)
        service.secret = "dialback secret"
        tls = self.tmp_path / "tls"
        service.load_certificate(tls / f"{DOMAIN}.crt", tls / f"{DOMAIN}.key")
        self.server.s2s = service
        self.server.router.remote_route = lambda domain: self.remote

    def inbound(self) -> Inbound:
        stream = Inbound(self.server.s2s)
        self.streams.append(stream)
        return stream

    async def cleanup(self) -> None:
        for stream in self.streams:
            stream.lose()
        self.streams.clear()
        await settle(self.server)
        self.remote.take()
        await super().cleanup()


class Inbound:
    """An incoming s2s stream fed by hand; what it writes is parsed."""

    def __init__(self, service: S2SService) -> None:
        self.service = service
        self.stream = S2SInbound(service)
        self.transport = StringTransport()
        self.stream.makeConnection(self.transport)
        self.parser = StreamParser(max_stanza_bytes=1 << 20)
        self.events: list[Any] = []
        self.lost = False

    def send(self, data: str | bytes) -> None:
        self.stream.dataReceived(data.encode() if isinstance(data, str) else data)

    def read(self) -> list[Element]:
        data = self.transport.value()
        self.transport.clear()
        out = []
        for ev in self.parser.feed(data) if data else []:
            self.events.append(ev)
            if isinstance(ev, etree._Element):
                out.append(ev)
        return out

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def authenticate(self) -> None:
        """Dialback for a.example, with the verification answered as valid (XEP-0220)."""
        asked: list[Any] = []
        self.service.verify_dialback = lambda **kw: asked.append(kw)  # type: ignore[method-assign]
        self.send(HEADER)
        self.read()
        self.send(f"<db:result from='{REMOTE}' to='{DOMAIN}'>key</db:result>")
        assert asked, [short(e) for e in self.read()]
        asked[0]["callback"]("valid", None)
        (answer,) = self.read()
        assert answer.get("type") == "valid"

    def lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.stream.connectionLost(Failure(ConnectionDone()))

    def check_end(self) -> None:
        """Closed with a stream error of RFC 6120 §4.9.3 (or by its peer) and the close tag."""
        check_stream_end(self.events, self.stream)


@pytest.fixture
def fuzz(redis_url: str, tmp_path: Path) -> Iterator[S2SFuzz]:
    """A core with an s2s service for the examples of one test."""
    with S2SFuzz(redis_url, tmp_path) as harness:
        yield harness


PING = (
    f"<iq xmlns='{NS_SERVER}' type='get' id='final-ping' from='juliet@{REMOTE}/balcony' "
    f"to='{DOMAIN}'><ping xmlns='{NS_PING}'/></iq>"
)


async def from_remote(fuzz: S2SFuzz, texts: list[str]) -> None:
    """Send ``texts`` from a.example; check each answer, the stream, the local client."""
    await fuzz.reset()
    alice = await fuzz.online("alice", "res")
    inbound = fuzz.inbound()
    inbound.authenticate()
    for text in texts:
        inbound.send(text)
        await settle(fuzz.server)
        inbound.read()
        got = fuzz.remote.take()
        check_answers(parse_sent(text, NS_SERVER), got, inbound.closed, await drain(alice))
        if inbound.closed:
            break
    if inbound.closed:
        inbound.check_end()
    else:
        inbound.send(PING)
        await settle(fuzz.server)
        pongs = [e for e in fuzz.remote.take() if e.get("id") == "final-ping"]
        assert [e.get("type") for e in pongs] == ["result"], [short(e) for e in pongs]
    await fuzz.finish(alice, [])
    await fuzz.after()


def test_random_stanzas_from_a_remote_server(fuzz: S2SFuzz) -> None:
    """Random stanzas from an authenticated remote server: one answer per IQ get/set, no
    error answered, nothing logged as a failure, the stream usable or closed with a stream
    error, local sessions unharmed."""

    @fuzz_settings(60)
    @given(stanzas(REMOTE_STANZA, prelude=False))
    def check(texts: list[str]) -> None:
        fuzz.run(from_remote(fuzz, texts))

    check()


DIALBACK = st.builds(
    lambda kind, frm, to, key, dtype: (
        f"<db:{kind} xmlns:db='jabber:server:dialback'"
        + (f" from='{frm}'" if frm is not None else "")
        + (f" to='{to}'" if to is not None else "")
        + (f" type='{dtype}'" if dtype is not None else "")
        + (" id='s1'" if kind == "verify" else "")
        + f">{key}</db:{kind}>"
    ),
    st.sampled_from(["result", "verify"]),
    st.none() | st.sampled_from([REMOTE, "c.example", "", "a..example"]),
    st.none() | st.sampled_from([DOMAIN, "c.example", "", "LOCALHOST"]),
    st.sampled_from(["key", "", "x" * 300]),
    st.none() | st.sampled_from(["valid", "invalid", "error", "x"]),
)


async def garbage(fuzz: S2SFuzz, stage: str, chunks: list[bytes | str]) -> None:
    """``chunks`` before the header, after it, or on an authenticated stream: a stream
    error or nothing; new streams are still served."""
    await fuzz.reset()
    inbound = fuzz.inbound()
    if stage == "authenticated":
        inbound.authenticate()
        fuzz.server.s2s.verify_dialback = lambda **kw: None
    elif stage == "opened":
        inbound.send(HEADER)
    for chunk in chunks:
        inbound.send(chunk)
        await settle(fuzz.server)
        inbound.read()
        if inbound.closed:
            break
    if inbound.closed:
        inbound.check_end()
    inbound.lose()
    fuzz.remote.take()
    other = fuzz.inbound()
    other.authenticate()
    other.send(PING)
    await settle(fuzz.server)
    assert [e.get("type") for e in fuzz.remote.take() if e.get("id") == "final-ping"] == ["result"]


def test_random_bytes_and_dialback_on_incoming_streams(fuzz: S2SFuzz) -> None:
    """Random bytes, truncated XML and dialback elements with random attributes before the
    header, after it and once authenticated: a stream error of RFC 6120 §4.9.3, a dialback
    answer or nothing, never a failure; new streams are still served."""

    @fuzz_settings(80)
    @given(
        st.sampled_from(["header", "opened", "authenticated"]),
        st.lists(GARBAGE | DIALBACK, min_size=1, max_size=3),
    )
    def check(stage: str, chunks: list[bytes | str]) -> None:
        fuzz.run(garbage(fuzz, stage, chunks))

    check()


# -- Regressions found by the properties of test_fuzz_c2s.py and test_fuzz_component.py ----


def test_prefixed_client_stanzas_reach_other_servers_in_jabber_server(fuzz: S2SFuzz) -> None:
    """A client's stanza written with a jabber:client prefix goes to another server wholly in
    jabber:server, with no prefix (RFC 6120 §4.8.3, §4.8.5): a strict peer would otherwise
    close the whole s2s stream."""

    async def body() -> None:
        await fuzz.reset()
        alice = await fuzz.online("alice", "res")
        alice.send(
            f"<c:message xmlns:c='{NS_CLIENT}' to='juliet@{REMOTE}' type='chat' id='m1'>"
            "<c:body>hi</c:body></c:message>"
        )
        await alice.settle()
        (got,) = [e for e in fuzz.remote.take() if e.get("id") == "m1"]
        assert [(e.tag, e.prefix) for e in got.iter()] == [
            (qn(NS_SERVER, "message"), None),
            (qn(NS_SERVER, "body"), None),
        ], short(got)

    fuzz.run(body())

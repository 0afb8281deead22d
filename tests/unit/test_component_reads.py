"""What the core does with one read of a component link (core/component_listener.py): the
stanzas of a read reach each client in one write (WriteHold), elements the component
qualifies with jabber:component:accept are moved to jabber:client whichever read declares
it (RFC 6120 §4.8.3, XEP-0114 §3), and 'from' stays checked and normalised with the
per-link sender cache. A real CoreServer on the test Redis, over StringTransport."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import redis.asyncio
from lxml import etree

import core.component_listener as listener
from core.xmpp.component_link import handshake_digest
from core.xmpp.ns import NS_CLIENT, NS_COMPONENT, NS_STREAMS, qn
from core.xmpp.parser import StreamParser
from core.xmpp.stanza import serialize
from core.xmpp.xmlstream import HELD
from tests.unit.test_component_listener import (
    MUC,
    SECRETS,
    FakeSession,
    Link,
    Run,
    bind,
    linked,
    make_server,
    settle,
)

QN_MESSAGE = qn(NS_CLIENT, "message")
QN_BODY = qn(NS_CLIENT, "body")


@dataclass
class WritingSession(FakeSession):
    """A session that writes its stanzas as a client stream does: through the hold."""

    writes: list[bytes] = field(default_factory=list)

    def send(self, stanza: etree._Element) -> None:
        self.sent.append(stanza)
        HELD.write(self, serialize(stanza), _record)


def _record(session: WritingSession, data: bytes) -> None:
    session.writes.append(data)


def groupchat(to: str, mid: str, body: str = "hi") -> str:
    return (
        f"<message from='room@{MUC}/n' to='{to}' type='groupchat' id='{mid}'>"
        f"<body>{body}</body></message>"
    )


def bodies(session: FakeSession) -> list[tuple[str, str | None]]:
    """(tag, body) of what the session got, in order."""
    return [(m.tag, m.findtext(QN_BODY)) for m in session.sent]


def test_one_write_per_client_per_read(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """A read with stanzas for two clients gives each one write holding its stanzas in the
    order sent; nothing is written before the read is processed, nothing stays held."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = WritingSession(bind(server, "alice@localhost/a").jid)
        bob = WritingSession(bind(server, "bob@localhost/b").jid)
        server.router.bind(alice)
        server.router.bind(bob)
        link = linked(server, MUC)
        link.send(
            groupchat(alice.full, "1")
            + groupchat(bob.full, "2")
            + groupchat(alice.full, "3")
            + groupchat(bob.full, "4")
        )
        assert not HELD.holding
        assert [m.get("id") for m in alice.sent] == ["1", "3"]
        assert len(alice.writes) == 1 and len(bob.writes) == 1
        assert alice.writes[0] == b"".join(serialize(m) for m in alice.sent)
        assert bob.writes[0].count(b"<message ") == 2
        link.send(groupchat(alice.full, "5"))
        assert len(alice.writes) == 2 and b'id="5"' in alice.writes[1]
        await settle(server)

    run_async(go())


def test_stanzas_after_a_waiting_one_are_held_and_in_order(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """A stanza whose routing waits for Redis (to an offline account) holds back the ones
    after it (RFC 6120 §10.1); once they are handled the client has them all, in order."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = WritingSession(bind(server, "alice@localhost/a").jid)
        server.router.bind(alice)
        link = linked(server, MUC)
        waiting = f"<message from='room@{MUC}' to='nobody@localhost' id='w'><body/></message>"
        link.send(groupchat(alice.full, "1") + waiting + groupchat(alice.full, "2"))
        assert [m.get("id") for m in alice.sent] == ["1"]
        link.send(groupchat(alice.full, "3"))
        await settle(server)
        assert [m.get("id") for m in alice.sent] == ["1", "2", "3"]
        assert b"".join(alice.writes) == b"".join(serialize(m) for m in alice.sent)
        assert not HELD.holding
        # The offline account does not exist: the room is told.
        (bounce,) = link.read()
        assert bounce.get("id") == "w" and bounce.get("type") == "error"

    run_async(go())


def test_component_namespace_in_later_reads(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """After reads that name no jabber:component:accept, an element declared in it, in one
    read or cut across two (inside the namespace name, or a stanza that ends in the next
    read), and written with character references, still reaches the client in jabber:client."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = bind(server, "alice@localhost/res")
        link = linked(server, MUC)
        frm = f"from='room@{MUC}/n' to='alice@localhost/res' type='groupchat'"
        for i in range(3):
            link.send(groupchat(alice.full, f"plain{i}", "p"))
        link.send(f"<message {frm}><body xmlns='{NS_COMPONENT}'>a</body></message>")
        cut = f"<message {frm}><body xmlns='{NS_COMPONENT}'>b</body></message>"
        at = cut.index("component") + 3
        link.send(cut[:at])
        link.send(cut[at:])
        link.send(groupchat(alice.full, "plain3", "p"))
        link.send(f"<message {frm}><body xmlns='{NS_COMPONENT}'>c")
        link.send("</body></message>")
        link.send(groupchat(alice.full, "plain4", "p"))
        refs = f"<message {frm}><body xmlns='jabber:component&#58;accept'>d</body></message>"
        link.send(refs)
        link.send(groupchat(alice.full, "plain5", "p"))
        at = refs.index("&#") + 1
        link.send(refs[:at])
        link.send(refs[at:].replace(">d<", ">e<"))
        await settle(server)
        got = [b for tag, b in bodies(alice) if tag == QN_MESSAGE and b != "p"]
        assert got == ["a", "b", "c", "d", "e"]
        assert len(alice.sent) == 11
        for msg in alice.sent:
            assert [el.tag for el in msg.iter()] == [QN_MESSAGE, QN_BODY]

    run_async(go())


def test_header_prefix_for_component_namespace(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """A prefix the header binds to jabber:component:accept qualifies stanzas of any later
    read, with nothing in their bytes that names the namespace: they are moved all the same."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = bind(server, "alice@localhost/res")
        link = Link(server)
        link.send(
            f"<stream:stream xmlns='{NS_COMPONENT}' xmlns:c='{NS_COMPONENT}' "
            f"xmlns:stream='{NS_STREAMS}' to='{MUC}'>"
        )
        link.read()
        assert link.handshake(SECRETS[MUC]) != []
        for i in range(3):
            link.send(
                f"<c:message from='room@{MUC}/n' to='alice@localhost/res' id='{i}'>"
                f"<c:body>{i}</c:body></c:message>"
            )
        await settle(server)
        assert bodies(alice) == [(QN_MESSAGE, "0"), (QN_MESSAGE, "1"), (QN_MESSAGE, "2")]
        assert not link.closed

    run_async(go())


def test_header_declaration_by_character_reference(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """A header that declares jabber:component:accept with character references is read as
    sent, so every stanza arrives in that namespace (the handshake too): each is moved to
    jabber:client, including those of reads that do not name the namespace."""

    async def go() -> None:
        server = make_server(redis_client)
        alice = bind(server, "alice@localhost/res")
        link = Link(server)
        link.send(
            f"<stream:stream xmlns='jabber:component&#58;accept' xmlns:stream='{NS_STREAMS}' "
            f"to='{MUC}'>"
        )
        link.read()
        assert link.header is not None
        digest = handshake_digest(link.header.attrs["id"], SECRETS[MUC])
        link.send(f"<handshake>{digest}</handshake>")
        assert link.read() != [] and not link.closed
        for i in range(3):
            link.send(groupchat(alice.full, str(i), str(i)))
        await settle(server)
        assert bodies(alice) == [(QN_MESSAGE, "0"), (QN_MESSAGE, "1"), (QN_MESSAGE, "2")]

    run_async(go())


def test_senders_checked_and_normalised_every_time(
    redis_client: redis.asyncio.Redis, run_async: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same 'from' on stanza after stanza is normalised each time (RFC 7622), also when
    the sender cache has started afresh; a foreign 'from' after good ones is invalid-from."""

    async def go() -> None:
        monkeypatch.setattr(listener, "SENDER_CACHE", 2)
        server = make_server(redis_client)
        alice = bind(server, "alice@localhost/res")
        link = linked(server, MUC)
        senders = [f"Room{i}@{MUC.upper()}/Nick" for i in range(4)] * 2
        for i, frm in enumerate(senders):
            link.send(
                f"<message from='{frm}' to='alice@localhost/res' id='{i}'><body>x</body></message>"
            )
        link.send("<presence to='alice@localhost/res'/><presence to='alice@localhost/res'/>")
        await settle(server)
        got = [m.get("from") for m in alice.sent]
        assert got == [f"room{i % 4}@{MUC}/Nick" for i in range(8)] + [MUC, MUC]
        link.send("<message from='x@localhost' to='alice@localhost/res'><body>x</body></message>")
        assert link.stream_error() == "invalid-from"
        await settle(server)

    run_async(go())


def test_header_parser_reads_component_namespace_as_client() -> None:
    """The premise of the above: a header declaring jabber:component:accept plainly is read
    with its stanzas in jabber:client, without a copy (core.xmpp.parser)."""
    parser = StreamParser(content_ns_map=listener.CONTENT_NS_MAP)
    events = parser.feed(
        f"<stream:stream xmlns='{NS_COMPONENT}' xmlns:stream='{NS_STREAMS}' to='{MUC}'>"
        "<message to='a@b'/>".encode()
    )
    assert events[1].tag == QN_MESSAGE

"""The router's delivery rules (RFC 6120 §10, RFC 6121 §8.5), table-driven.

A real CoreServer on the test Redis (accounts exist or not for real) with only the wire-level
modules loaded, so the router's own rules apply: no presence, offline or privacy module.
Sessions are fakes that record what they are given.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from core.router import Router
from core.xmpp.jid import JID, parse_jid
from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_CLIENT
from tests.unit.helpers import (
    FakeSession,
    add_account,
    assert_xml,
    running_server,
    settle,
    stanza_error,
    xml,
)

ALICE = parse_jid("alice@localhost/a")
DISCO = "<query xmlns='http://jabber.org/protocol/disco#info'/>"
PING = "<ping xmlns='urn:xmpp:ping'/>"

# Bob's sessions in most cases: resource -> (priority, available).
BOB = {"hi": (5, True), "lo": (1, True), "neg": (-1, True), "away": (10, False)}


@dataclass
class Case:
    """One routing decision: ``stanza`` from alice@localhost/a to ``to``."""

    id: str
    stanza: str
    to: str | None
    delivered: list[str]  # full JIDs that receive the stanza, in any order
    error: str | None = None  # condition bounced to alice
    bob: dict[str, tuple[int, bool]] = field(default_factory=lambda: dict(BOB))
    accounts: tuple[str, ...] = ("alice", "bob")


def msg(mtype: str | None, body: str = "hi") -> str:
    t = f" type='{mtype}'" if mtype else ""
    return f"<message xmlns='jabber:client' id='m1'{t}><body>{body}</body></message>"


def iq(itype: str, payload: str = DISCO) -> str:
    inner = payload if itype in ("get", "set") else ""
    return f"<iq xmlns='jabber:client' id='i1' type='{itype}'>{inner}</iq>"


def presence(ptype: str | None = None) -> str:
    t = f" type='{ptype}'" if ptype else ""
    return f"<presence xmlns='jabber:client' id='p1'{t}/>"


B = "bob@localhost"
AVAILABLE = [f"{B}/hi", f"{B}/lo", f"{B}/neg"]

CASES = [
    # To a full JID with a session (§8.5.3.1): delivered whatever the priority or availability.
    Case("full/message", msg("chat"), f"{B}/lo", [f"{B}/lo"]),
    Case("full/negative-priority", msg("chat"), f"{B}/neg", [f"{B}/neg"]),
    Case("full/not-available", msg(None), f"{B}/away", [f"{B}/away"]),
    Case("full/groupchat", msg("groupchat"), f"{B}/lo", [f"{B}/lo"]),
    Case("full/iq", iq("get"), f"{B}/lo", [f"{B}/lo"]),
    Case("full/iq-result", iq("result"), f"{B}/lo", [f"{B}/lo"]),
    Case("full/presence", presence(), f"{B}/lo", [f"{B}/lo"]),
    # To a full JID without a session (§8.5.3.2).
    Case("gone/chat", msg("chat"), f"{B}/gone", [f"{B}/hi"]),
    Case("gone/normal", msg(None), f"{B}/gone", [f"{B}/hi"]),
    Case("gone/unknown-type", msg("bogus"), f"{B}/gone", [f"{B}/hi"]),
    Case("gone/headline", msg("headline"), f"{B}/gone", []),
    Case("gone/groupchat", msg("groupchat"), f"{B}/gone", [], "service-unavailable"),
    Case("gone/error", msg("error"), f"{B}/gone", []),
    Case("gone/iq", iq("get"), f"{B}/gone", [], "service-unavailable"),
    Case("gone/iq-result", iq("result"), f"{B}/gone", []),
    Case("gone/iq-error", iq("error"), f"{B}/gone", []),
    Case("gone/presence", presence(), f"{B}/gone", []),
    Case("gone/unavailable", presence("unavailable"), f"{B}/gone", []),
    Case("gone/subscribe", presence("subscribe"), f"{B}/gone", AVAILABLE),
    Case("gone/chat-no-session", msg("chat"), f"{B}/gone", [], "service-unavailable", bob={}),
    # To a bare JID with available resources (§8.5.2.1).
    Case("bare/chat", msg("chat"), B, [f"{B}/hi"]),
    Case("bare/normal", msg(None), B, [f"{B}/hi"]),
    Case("bare/unknown-type", msg("bogus"), B, [f"{B}/hi"]),
    Case(
        "bare/equal-top",
        msg("chat"),
        B,
        [f"{B}/one", f"{B}/two"],
        bob={"one": (3, True), "two": (3, True), "low": (0, True)},
    ),
    Case("bare/headline", msg("headline"), B, [f"{B}/hi", f"{B}/lo"]),
    Case("bare/groupchat", msg("groupchat"), B, [], "service-unavailable"),
    Case("bare/error", msg("error"), B, []),
    Case("bare/iq-result", iq("result"), B, []),
    Case("bare/iq-error", iq("error"), B, []),
    Case("bare/presence", presence(), B, AVAILABLE),
    # To a bare JID with no available non-negative resource (§8.5.2.2): no offline module.
    Case("neg-only/chat", msg("chat"), B, [], "service-unavailable", bob={"n": (-1, True)}),
    Case("none/chat", msg("chat"), B, [], "service-unavailable", bob={}),
    Case("none/normal", msg(None), B, [], "service-unavailable", bob={}),
    Case("none/headline", msg("headline"), B, [], bob={}),
    Case("none/error", msg("error"), B, [], bob={}),
    Case("none/groupchat", msg("groupchat"), B, [], "service-unavailable", bob={}),
    Case("none/presence", presence(), B, [], bob={}),
    # An account that does not exist (§8.5.1).
    Case("unknown/chat", msg("chat"), "nobody@localhost", [], "service-unavailable"),
    Case("unknown/headline", msg("headline"), "nobody@localhost", []),
    Case("unknown/iq", iq("get"), "nobody@localhost", [], "service-unavailable"),
    Case("unknown/iq-full", iq("get"), "nobody@localhost/x", [], "service-unavailable"),
    Case("unknown/presence", presence(), "nobody@localhost", []),
    Case("unknown/subscribe", presence("subscribe"), "nobody@localhost", []),
    # The server itself (§10.3, §10.4.1).
    Case("server/message", msg("chat"), "localhost", [], "service-unavailable"),
    Case("server/presence", presence(), "localhost", []),
    Case(
        "server/unknown-iq",
        iq("get", "<x xmlns='urn:unknown'/>"),
        "localhost",
        [],
        "service-unavailable",
    ),
    Case("server/no-payload", iq("get", ""), "localhost", [], "bad-request"),
    Case("server/resource", iq("get", PING), "localhost/admin", [], "service-unavailable"),
    # Another domain with no route (§10.4.3).
    Case("remote/message", msg("chat"), "juliet@example.org", [], "remote-server-not-found"),
    Case("remote/iq", iq("get"), "example.org", [], "remote-server-not-found"),
    Case("remote/error", msg("error"), "juliet@example.org", []),
]


def sessions_for(
    router: Router, bare: str, spec: dict[str, tuple[int, bool]]
) -> dict[str, FakeSession]:
    out = {}
    for resource, (priority, available) in spec.items():
        s = FakeSession(parse_jid(f"{bare}/{resource}"), priority, available)
        assert router.bind(s) is None
        out[s.full] = s
    return out


async def route(router: Router, stanza: etree._Element, to: str | None) -> None:
    stanza.set("from", str(ALICE))
    if to is not None:
        stanza.set("to", to)
    pending = router.route(stanza, ALICE, parse_jid(to) if to else None)
    if pending is not None:
        await pending


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_delivery(redis_url: str, tmp_path: Path, case: Case) -> None:
    """RFC 6121 §8.5 and RFC 6120 §10: who receives the stanza, and what bounces."""

    async def body() -> None:
        async with running_server(redis_url, tmp_path) as server:
            for user in case.accounts:
                await add_account(server, user)
            router = server.router
            alice = FakeSession(ALICE)
            router.bind(alice)
            bobs = sessions_for(router, "bob@localhost", case.bob)
            stanza = xml(case.stanza)
            await route(router, stanza, case.to)
            got = sorted(full for full, s in bobs.items() if s.received)
            assert got == sorted(case.delivered)
            for full in case.delivered:
                delivered = bobs[full].received
                assert len(delivered) == 1 and delivered[0].get("from") == str(ALICE)
            if case.error is None:
                assert alice.received == []
            else:
                assert len(alice.received) == 1, [etree.tostring(e) for e in alice.received]
                bounce = alice.received[0]
                assert stanza_error(bounce) is not None
                assert stanza_error(bounce)[1] == case.error  # type: ignore[index]
                assert bounce.get("to") == str(ALICE)
                assert bounce.get("from") == case.to
                assert bounce.get("id") == stanza.get("id")

    asyncio.run(body())


def test_bounce_keeps_body_and_error_type(redis_url: str, tmp_path: Path) -> None:
    """§8.3.1: the bounce of a message carries its body and the condition's error type."""

    async def body() -> None:
        async with running_server(redis_url, tmp_path) as server:
            alice = FakeSession(ALICE)
            server.router.bind(alice)
            await route(server.router, xml(msg("chat", "lost")), "juliet@example.org")
            assert_xml(
                alice.received[0],
                f"""<message xmlns='{NS_CLIENT}' id='m1' type='error'
                      to='alice@localhost/a' from='juliet@example.org'>
                  <body>lost</body>
                  <error type='cancel'>
                    <remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>
                  </error>
                </message>""",
            )

    asyncio.run(body())


def account_module() -> Module:
    """A module answering an IQ for any account, as vCard or PEP would (RFC 6121 §8.5.2.1.3)."""
    m = Module("echo-account")

    @m.iq("get", "{urn:test}q", to="account")
    async def answer(ctx: IqContext) -> etree._Element:
        return etree.Element("{urn:test}q", nsmap={None: "urn:test"}, owner=str(ctx.to))

    return m


def test_iq_to_account_answered_on_its_behalf(redis_url: str, tmp_path: Path) -> None:
    """§8.5.2.1.3: an IQ to an existing bare JID is answered by the server for the account,
    from that bare JID; one with no 'to' is served for the sender's own account."""

    async def body() -> None:
        async with running_server(redis_url, tmp_path, modules=[account_module()]) as server:
            await add_account(server, "bob")
            alice = FakeSession(ALICE)
            server.router.bind(alice)
            query = "<q xmlns='urn:test'/>"
            await route(server.router, xml(iq("get", query)), "bob@localhost")
            await route(server.router, xml(iq("get", query).replace("i1", "i2")), None)
            first, second = alice.received
            assert_xml(
                first,
                f"<iq xmlns='{NS_CLIENT}' type='result' id='i1' to='alice@localhost/a' "
                "from='bob@localhost'><q xmlns='urn:test' owner='bob@localhost'/></iq>",
            )
            assert_xml(
                second,
                f"<iq xmlns='{NS_CLIENT}' type='result' id='i2' to='alice@localhost/a' "
                "from='alice@localhost'><q xmlns='urn:test' owner='alice@localhost'/></iq>",
            )

    asyncio.run(body())


def test_generated_stanzas_wait_for_deferred_decisions(redis_url: str, tmp_path: Path) -> None:
    """When a routing decision needs I/O (privacy lists here), the bounces and IQ replies the
    server generates still arrive: the pending decision is run, not dropped."""

    async def body() -> None:
        async with running_server(redis_url, tmp_path) as server:
            router = server.router
            checked: list[str | None] = []

            def check(stanza: etree._Element, sender: JID, to: JID | None, origin: Any) -> Any:
                checked.append(stanza.get("type"))

                async def later() -> None:
                    pending = router.route(stanza, sender, to, origin, filtered=True)
                    if pending is not None:
                        await pending

                return later()

            server.privacy_check = check
            alice = FakeSession(ALICE)
            router.bind(alice)
            await route(router, xml(msg("chat")), "juliet@example.org")
            await route(router, xml(iq("get", PING)), "localhost")
            await settle(server)
            got = {e.get("id"): stanza_error(e) or e.get("type") for e in alice.received}
            assert got == {"m1": ("cancel", "remote-server-not-found"), "i1": "result"}
            assert sorted(checked) == ["chat", "error", "get", "result"]

    asyncio.run(body())


def test_server_iq_reply_and_result(redis_url: str, tmp_path: Path) -> None:
    """An IQ to the server is answered from the server; a result to the server completes the
    request the server sent (CoreServer.pending_iqs)."""

    async def body() -> None:
        async with running_server(redis_url, tmp_path) as server:
            alice = FakeSession(ALICE)
            server.router.bind(alice)
            await route(server.router, xml(iq("get", PING)), "localhost")
            assert_xml(
                alice.received[0],
                f"<iq xmlns='{NS_CLIENT}' id='i1' type='result' from='localhost' "
                "to='alice@localhost/a'/>",
            )
            waiting = asyncio.get_running_loop().create_future()
            server.pending_iqs["i1"] = waiting
            await route(server.router, xml(iq("result")), "localhost")
            assert waiting.done() and waiting.result().get("type") == "result"
            assert "i1" not in server.pending_iqs

    asyncio.run(body())


def test_message_without_to_goes_to_own_bare_jid(redis_url: str, tmp_path: Path) -> None:
    """RFC 6120 §10.3.1: a message with no 'to' is handled as sent to the sender's bare JID."""

    async def body() -> None:
        async with running_server(redis_url, tmp_path) as server:
            router = server.router
            alice = FakeSession(ALICE, priority=1)
            other = FakeSession(parse_jid("alice@localhost/b"), priority=0)
            router.bind(alice)
            router.bind(other)
            await route(router, xml(msg("chat")), None)
            assert len(alice.received) == 1 and other.received == []

    asyncio.run(body())


class Link:
    """A domain route that records what it carries."""

    def __init__(self) -> None:
        self.sent: list[etree._Element] = []

    def send(self, stanza: etree._Element) -> None:
        self.sent.append(stanza)


def test_domain_and_remote_routes(redis_url: str, tmp_path: Path) -> None:
    """§10.4: a component's domain goes to its link, any other domain to the remote route
    when there is one; nothing bounces."""

    async def body() -> None:
        async with running_server(redis_url, tmp_path) as server:
            router = server.router
            alice = FakeSession(ALICE)
            router.bind(alice)
            component, remote = Link(), Link()
            asked: list[str] = []
            router.domain_routes["muc.localhost"] = component
            router.remote_route = lambda domain: asked.append(domain) or remote
            await route(router, xml(msg("groupchat")), "room@muc.localhost")
            await route(router, xml(msg("chat")), "juliet@example.org/x")
            assert len(component.sent) == 1 and len(remote.sent) == 1
            assert asked == ["example.org"]
            assert alice.received == []

    asyncio.run(body())


def test_bind_unbind_and_lookups(redis_url: str, tmp_path: Path) -> None:
    """bind() returns the session a new one replaces; unbind() removes only the session it
    is given, so a replaced session's clean-up cannot remove its successor."""

    async def body() -> None:
        async with running_server(redis_url, tmp_path) as server:
            router = server.router
            first = FakeSession(ALICE)
            second = FakeSession(ALICE)
            other = FakeSession(parse_jid("alice@localhost/b"), available=False)
            assert router.bind(first) is None
            assert router.bind(other) is None
            assert router.bind(first) is None  # binding again is no replacement
            assert router.bind(second) is first
            router.unbind(first)
            assert router.session(ALICE) is second
            assert set(router.resources("alice@localhost")) == {"a", "b"}
            assert router.available_sessions("alice@localhost") == [second]
            router.unbind(second)
            router.unbind(other)
            assert router.local == {}
            assert router.session(JID("alice", "localhost", "a")) is None

    asyncio.run(body())

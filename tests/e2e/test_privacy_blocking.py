"""End-to-end blocking (XEP-0191) and privacy lists (XEP-0016) against a real core and Redis:
slixmpp clients as the real peers, the raw client where the exact XML matters, and a core
restart that keeps every block and list."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio
from lxml import etree

from core.storage.roster import RosterItem, RosterStore
from core.xmpp.ns import NS_CLIENT
from tests.harness import CoreProcess, RawClient, slix_client

PASSWORD = "e2e-privacy-secret-7"
TIMEOUT = 5.0
BLOCKING = "urn:xmpp:blocking"
PRIVACY = "jabber:iq:privacy"
PLUGINS = ("xep_0030", "xep_0191")


def users(core: CoreProcess, *names: str) -> list[str]:
    for name in names:
        core.add_user(name, PASSWORD)
    return [f"{name}@{core.domain}" for name in names]


def mutual_subscription(core: CoreProcess, one: str, other: str) -> None:
    """Both accounts see each other's presence (RFC 6121 'both'), written before any login."""

    async def write() -> None:
        client = redis.asyncio.Redis.from_url(core.redis_url)
        try:
            store = RosterStore(client)
            await store.write(
                one, version="e-1", items={other: RosterItem(other, subscription="both")}
            )
            await store.write(
                other, version="e-1", items={one: RosterItem(one, subscription="both")}
            )
        finally:
            await client.aclose()

    asyncio.run(write())


async def next_presence(client: Any, frm: str, ptype: str = "available") -> Any:
    """The next presence from ``frm`` of type ``ptype`` that ``client`` receives (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {ptype} presence from {frm}")
        p = await asyncio.wait_for(client.presences.get(), remaining)
        if str(p["from"]) == frm and p["type"] == ptype:
            return p


def collect(client: Any, event: str) -> asyncio.Queue[Any]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    client.add_event_handler(event, queue.put_nowait)
    return queue


async def raw_iq(c: RawClient, xml: str, id: str) -> etree._Element:
    """Send an IQ on a raw client; return its reply, skipping other stanzas (bounded)."""
    await c.send(xml)
    return await raw_next(c, lambda el: el.get("id") == id and el.get("type") != "set")


async def raw_next(c: RawClient, match: Callable[[etree._Element], bool]) -> etree._Element:
    deadline = time.monotonic() + TIMEOUT
    while True:
        el = await c.next_element(max(deadline - time.monotonic(), 0.01))
        if match(el):
            return el


def is_privacy_push(name: str) -> Callable[[etree._Element], bool]:
    def match(el: etree._Element) -> bool:
        lst = el.find(f"{{{PRIVACY}}}query/{{{PRIVACY}}}list")
        return el.get("type") == "set" and lst is not None and lst.get("name") == name

    return match


def chats(client: Any) -> list[str]:
    """The bodies of the messages (not errors) ``client`` received so far; empties its inbox."""
    out = []
    while not client.inbox.empty():
        msg = client.inbox.get_nowait()
        if msg["type"] != "error":
            out.append(msg["body"])
    return out


def condition(el: etree._Element) -> str:
    error = el.find(f"{{{NS_CLIENT}}}error")
    assert error is not None, etree.tostring(el)
    return etree.QName(error[0]).localname


def test_blocking_command(core: CoreProcess, run_async: Any) -> None:
    """Alice blocks Bob: her other resource sees the push, Bob sees her go offline, his
    message bounces with service-unavailable, hers to him with not-acceptable and <blocked/>;
    after unblocking, Bob sees her again and his messages arrive."""
    alice, bob = users(core, "block-alice", "block-bob")
    mutual_subscription(core, alice, bob)

    async def scenario() -> None:
        async with (
            slix_client(core.c2s_port, f"{alice}/a1", PASSWORD, plugins=PLUGINS) as a1,
            slix_client(core.c2s_port, f"{alice}/a2", PASSWORD, plugins=PLUGINS) as a2,
            slix_client(core.c2s_port, f"{bob}/b", PASSWORD) as b,
        ):
            pushes = collect(a2, "blocked")
            unblock_pushes = collect(a2, "unblocked")
            bob_errors = collect(b, "message_error")
            alice_errors = collect(a1, "message_error")
            assert await a2.plugin["xep_0191"].get_blocked_jids() == set()
            await next_presence(b, f"{alice}/a1")

            await a1.plugin["xep_0191"].block(bob)
            push = await asyncio.wait_for(pushes.get(), TIMEOUT)
            assert [str(i["jid"]) for i in push["block"]] == [bob]
            await next_presence(b, f"{alice}/a1", "unavailable")
            assert {str(j) for j in await a2.plugin["xep_0191"].get_blocked_jids()} == {bob}

            b.send_message(mto=alice, mbody="hello?", mtype="chat")
            bounced = await asyncio.wait_for(bob_errors.get(), TIMEOUT)
            assert bounced["error"]["condition"] == "service-unavailable"
            assert bounced["body"] == "hello?"

            a1.send_message(mto=bob, mbody="psst", mtype="chat")
            refused = await asyncio.wait_for(alice_errors.get(), TIMEOUT)
            assert refused["error"]["condition"] == "not-acceptable"
            blocked = refused.xml.find(f"{{{NS_CLIENT}}}error/{{urn:xmpp:blocking:errors}}blocked")
            assert blocked is not None
            assert chats(a1) == chats(a2) == chats(b) == []

            await a1.plugin["xep_0191"].unblock(bob)
            push = await asyncio.wait_for(unblock_pushes.get(), TIMEOUT)
            assert [str(i["jid"]) for i in push["unblock"]] == [bob]
            await next_presence(b, f"{alice}/a1")
            b.send_message(mto=f"{alice}/a1", mbody="back", mtype="chat")
            msg = await asyncio.wait_for(a1.inbox.get(), TIMEOUT)
            assert msg["body"] == "back"

    run_async(scenario())


def test_privacy_list_and_the_blocklist(core: CoreProcess, run_async: Any) -> None:
    """The same through a privacy list: Alice's list denying Bob is pushed to her other
    resource and, as her default list, bounces Bob; the blocking command sees the deny item
    as a block, and unblocking with it empties the privacy list too."""
    alice, bob = users(core, "plist-alice", "plist-bob")

    async def scenario() -> None:
        a1, a2 = RawClient(core.c2s_port), RawClient(core.c2s_port)
        await a1.login("plist-alice", PASSWORD, resource="a1")
        await a2.login("plist-alice", PASSWORD, resource="a2")
        try:
            async with slix_client(core.c2s_port, f"{bob}/b", PASSWORD) as b:
                bob_errors = collect(b, "message_error")
                reply = await raw_iq(
                    a1,
                    f"<iq type='set' id='l1'><query xmlns='{PRIVACY}'><list name='nobob'>"
                    f"<item type='jid' value='{bob}' action='deny' order='10'/>"
                    "<item action='allow' order='20'/></list></query></iq>",
                    "l1",
                )
                assert reply.get("type") == "result", etree.tostring(reply)
                await raw_next(a2, is_privacy_push("nobob"))
                reply = await raw_iq(
                    a1,
                    f"<iq type='set' id='d1'><query xmlns='{PRIVACY}'><default name='nobob'/>"
                    "</query></iq>",
                    "d1",
                )
                assert reply.get("type") == "result", etree.tostring(reply)

                b.send_message(mto=alice, mbody="anyone?", mtype="chat")
                bounced = await asyncio.wait_for(bob_errors.get(), TIMEOUT)
                assert bounced["error"]["condition"] == "service-unavailable"

                blocklist = await raw_iq(
                    a2, f"<iq type='get' id='g1'><blocklist xmlns='{BLOCKING}'/></iq>", "g1"
                )
                items = blocklist.findall(f"{{{BLOCKING}}}blocklist/{{{BLOCKING}}}item")
                assert [i.get("jid") for i in items] == [bob]

                reply = await raw_iq(
                    a2,
                    f"<iq type='set' id='u1'><unblock xmlns='{BLOCKING}'>"
                    f"<item jid='{bob}'/></unblock></iq>",
                    "u1",
                )
                assert reply.get("type") == "result", etree.tostring(reply)
                await raw_next(a1, is_privacy_push("nobob"))
                listed = await raw_iq(
                    a1,
                    f"<iq type='get' id='g2'><query xmlns='{PRIVACY}'><list name='nobob'/>"
                    "</query></iq>",
                    "g2",
                )
                remaining = listed.findall(
                    f"{{{PRIVACY}}}query/{{{PRIVACY}}}list/{{{PRIVACY}}}item"
                )
                assert [(i.get("action"), i.get("type")) for i in remaining] == [("allow", None)]

                b.send_message(mto=f"{alice}/a1", mbody="now?", mtype="chat")
                msg = await raw_next(a1, lambda el: el.tag == f"{{{NS_CLIENT}}}message")
                assert msg.findtext(f"{{{NS_CLIENT}}}body") == "now?"
        finally:
            await a1.close()
            await a2.close()

    run_async(scenario())


def test_refusals_over_the_wire(core: CoreProcess, run_async: Any) -> None:
    """Bad requests get their stanza errors on a real stream, which stays open."""
    users(core, "refuse-alice")

    async def scenario() -> None:
        a = RawClient(core.c2s_port)
        await a.login("refuse-alice", PASSWORD)
        try:
            cases = [
                (f"<iq type='set' id='r1'><block xmlns='{BLOCKING}'/></iq>", "bad-request"),
                (
                    f"<iq type='get' id='r2'><query xmlns='{PRIVACY}'><list name='none'/>"
                    "</query></iq>",
                    "item-not-found",
                ),
                (
                    f"<iq type='set' id='r3'><query xmlns='{PRIVACY}'><list name='x'>"
                    "<item action='deny' order='1'/><item action='allow' order='1'/>"
                    "</list></query></iq>",
                    "bad-request",
                ),
            ]
            for n, (xml, expected) in enumerate(cases, 1):
                reply = await raw_iq(a, xml, f"r{n}")
                assert reply.get("type") == "error" and condition(reply) == expected, xml
            assert (
                await raw_iq(
                    a,
                    "<iq to='localhost' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
                    "p",
                )
            ).get("type") == "result"
        finally:
            await a.close()

    run_async(scenario())


def test_restart_keeps_blocks_and_lists(
    make_core: Callable[..., CoreProcess], run_async: Any
) -> None:
    """Blocks and privacy lists live in Redis: after a core restart they are listed and
    enforced as before, and a list other than the blocklist keeps its items."""
    core = make_core()
    alice, bob = users(core, "keep-alice", "keep-bob")
    quiet = (
        "<list name='quiet'><item type='subscription' value='none' action='deny' order='5'>"
        "<message/></item><item action='allow' order='9'/></list>"
    )

    async def before() -> None:
        async with slix_client(core.c2s_port, f"{alice}/a", PASSWORD, plugins=PLUGINS) as a:
            await a.plugin["xep_0191"].block([bob, "spam.example"])
        raw = RawClient(core.c2s_port)
        await raw.login("keep-alice", PASSWORD, resource="raw")
        try:
            reply = await raw_iq(
                raw, f"<iq type='set' id='q1'><query xmlns='{PRIVACY}'>{quiet}</query></iq>", "q1"
            )
            assert reply.get("type") == "result", etree.tostring(reply)
        finally:
            await raw.close()

    async def after() -> None:
        async with (
            slix_client(core.c2s_port, f"{alice}/a", PASSWORD, plugins=PLUGINS) as a,
            slix_client(core.c2s_port, f"{bob}/b", PASSWORD) as b,
        ):
            blocked = {str(j) for j in await a.plugin["xep_0191"].get_blocked_jids()}
            assert blocked == {bob, "spam.example"}
            raw = RawClient(core.c2s_port)
            await raw.login("keep-alice", PASSWORD, resource="raw")
            try:
                get = f"<iq type='get' id='q2'><query xmlns='{PRIVACY}'><list name='quiet'/>"
                reply = await raw_iq(raw, get + "</query></iq>", "q2")
                found = reply.find(f"{{{PRIVACY}}}query/{{{PRIVACY}}}list")
                assert found is not None, etree.tostring(reply)
                assert [
                    (
                        i.get("type"),
                        i.get("value"),
                        i.get("action"),
                        i.get("order"),
                        [etree.QName(c).localname for c in i],
                    )
                    for i in found
                ] == [
                    ("subscription", "none", "deny", "5", ["message"]),
                    (None, None, "allow", "9", []),
                ]
            finally:
                await raw.close()
            errors = collect(b, "message_error")
            b.send_message(mto=f"{alice}/a", mbody="after restart", mtype="chat")
            bounced = await asyncio.wait_for(errors.get(), TIMEOUT)
            assert bounced["error"]["condition"] == "service-unavailable"
            assert chats(a) == []

    run_async(before())
    core.restart()
    run_async(after())

"""End-to-end instant messaging (RFC 6121, XEP-0160, XEP-0203, XEP-0012) against a real core
and a real Redis: slixmpp clients as the real peers, the raw client where exact stanzas matter,
and a core restart in the middle to show that rosters, pending subscriptions and offline
messages live in Redis.

aioxmpp is not used: it needs lxml 4 (and pytz), and this project runs lxml 6.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from lxml import etree

from core.xmpp.ns import NS_BIND, NS_CLIENT, NS_SASL, qn
from tests.harness import CoreProcess, RawClient, slix_client

PASSWORD = "e2e-im-secret-42"
NS_ROSTER = "jabber:iq:roster"
NS_DELAY = "urn:xmpp:delay"
TIMEOUT = 5.0


async def until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Wait until ``predicate()`` holds, checking as the event loop runs; bounded."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def take_presence(
    client: Any, match: Callable[[Any], bool], what: str, timeout: float = TIMEOUT
) -> Any:
    """The first presence ``client`` received (or receives, within ``timeout``) that matches;
    presence that does not match is kept for later calls, so arrival order does not matter."""
    seen: list[Any] = client.__dict__.setdefault("seen_presences", [])
    deadline = time.monotonic() + timeout
    while True:
        for p in seen:
            if match(p):
                seen.remove(p)
                return p
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {what}")
        try:
            seen.append(await asyncio.wait_for(client.presences.get(), remaining))
        except TimeoutError:
            raise AssertionError(f"no {what}") from None


async def next_presence(client: Any, frm: str, ptype: str = "available") -> Any:
    """A presence from ``frm`` of type ``ptype``."""

    def match(p: Any) -> bool:
        return str(p["from"]) == frm and p["type"] == ptype

    return await take_presence(client, match, f"{ptype} presence from {frm}")


async def presences_from(client: Any, senders: set[str], ptype: str = "available") -> None:
    """A presence of type ``ptype`` from each of ``senders``, in any order."""
    for frm in sorted(senders):
        await next_presence(client, frm, ptype)


def manual_subscriptions(*clients: Any) -> None:
    """Answer subscription requests in the test, not in slixmpp."""
    for c in clients:
        c.auto_authorize = None
        c.auto_subscribe = False


def subscription(client: Any, contact: str) -> str:
    item = client.client_roster[contact]
    return str(item["subscription"])


def test_two_users_two_resources(core: CoreProcess, run_async: Any) -> None:
    """Alice and Bob, two resources each, subscribe to each other; every resource's roster
    follows, each sees the other's resources come and go, and a message sent while Bob is
    offline survives a restart of the core and reaches him, stamped, at his next login."""
    core.add_user("alice", PASSWORD)
    core.add_user("bob", PASSWORD)
    alice, bob = "alice@localhost", "bob@localhost"

    async def scenario() -> None:
        async with (
            slix_client(core.c2s_port, f"{alice}/a1", PASSWORD) as a1,
            slix_client(core.c2s_port, f"{alice}/a2", PASSWORD) as a2,
            slix_client(core.c2s_port, f"{bob}/b1", PASSWORD) as b1,
        ):
            async with slix_client(core.c2s_port, f"{bob}/b2", PASSWORD) as b2:
                clients = [a1, a2, b1, b2]
                manual_subscriptions(*clients)
                await asyncio.gather(*(c.get_roster() for c in clients))
                # Alice asks from one resource; both of Bob's see it, the other one answers.
                a1.send_presence(pto=bob, ptype="subscribe")
                await next_presence(b1, alice, "subscribe")
                await next_presence(b2, alice, "subscribe")
                b2.send_presence(pto=alice, ptype="subscribed")
                b1.send_presence(pto=alice, ptype="subscribe")
                await next_presence(a1, bob, "subscribe")
                await next_presence(a2, bob, "subscribe")
                a2.send_presence(pto=bob, ptype="subscribed")
                for c, contact in ((a1, bob), (a2, bob), (b1, alice), (b2, alice)):
                    await until(lambda c=c, k=contact: subscription(c, k) == "both", "both")
                # Each resource sees every resource of the other account.
                for watcher in (a1, a2):
                    await presences_from(watcher, {f"{bob}/b1", f"{bob}/b2"})
                for watcher in (b1, b2):
                    await presences_from(watcher, {f"{alice}/a1", f"{alice}/a2"})
            # b2 went away, then comes back.
            await next_presence(a1, f"{bob}/b2", "unavailable")
            await next_presence(a2, f"{bob}/b2", "unavailable")
            async with slix_client(core.c2s_port, f"{bob}/b2", PASSWORD) as b2:
                await next_presence(a1, f"{bob}/b2")
                await next_presence(a2, f"{bob}/b2")
                await presences_from(b2, {f"{alice}/a1", f"{alice}/a2"})
        # Bob is gone: a message for him waits in storage, across a restart of the core.
        async with slix_client(core.c2s_port, f"{alice}/a1", PASSWORD) as a1:
            a1.send_message(mto=bob, mbody="while you were out", mtype="chat")
            await until(lambda: core_offline_count(core, bob) == 1, "the message stored")
        await asyncio.to_thread(core.restart)
        async with slix_client(core.c2s_port, f"{bob}/b3", PASSWORD) as b3:
            msg = await asyncio.wait_for(b3.inbox.get(), TIMEOUT)
            assert msg["body"] == "while you were out"
            assert str(msg["from"]) == f"{alice}/a1"
            delay = msg.xml.find(f"{{{NS_DELAY}}}delay")
            assert delay is not None and delay.get("from") == "localhost" and delay.get("stamp")
            await b3.get_roster()
            assert subscription(b3, alice) == "both"
        assert core_offline_count(core, bob) == 0

    run_async(scenario())


def core_offline_count(core: CoreProcess, bare: str) -> int:
    import redis

    client = redis.Redis.from_url(core.redis_url)
    try:
        return int(client.llen(f"offline:{{{bare}}}"))
    finally:
        client.close()


async def raw_login(core: CoreProcess, user: str, resource: str) -> tuple[RawClient, Any]:
    """A raw client logged in as ``user``; returns it with the post-authentication features."""
    c = RawClient(core.c2s_port)
    await c.connect()
    await c.open_stream()
    await c.starttls()
    result = await c.auth(user, PASSWORD)
    assert result.tag == qn(NS_SASL, "success"), etree.tostring(result)
    c.parser.reset()
    features = await c.open_stream()
    await c.send(
        f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>{resource}</resource>"
        "</bind></iq>"
    )
    reply = await c.next_element()
    assert reply.get("type") == "result", etree.tostring(reply)
    return c, features


async def read_until(c: RawClient, match: Callable[[Any], bool], what: str) -> Any:
    """Read stanzas until one matches; bounded by the raw client's read timeout."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        el = await c.next_element(timeout=deadline - time.monotonic())
        if match(el):
            return el
    raise AssertionError(f"no {what}")


def test_restart_keeps_roster_pending_request_and_offline_message(
    make_core: Callable[..., CoreProcess], run_async: Any
) -> None:
    """Everything a client was told happened is in Redis: after a restart of the core, the
    roster item (with ask='subscribe'), the pending request and the stored message are there."""
    core = make_core()
    core.add_user("carol", PASSWORD)
    core.add_user("dave", PASSWORD)
    carol, dave = "carol@localhost", "dave@localhost"

    async def before() -> None:
        c, _ = await raw_login(core, "carol", "desk")
        await c.send(
            f"<iq type='set' id='add'><query xmlns='{NS_ROSTER}'><item jid='{dave}' name='Dave'>"
            "<group>Friends</group></item></query></iq>"
        )
        await read_until(c, lambda e: e.get("id") == "add", "roster set result")
        await c.send(f"<presence type='subscribe' to='{dave}'><status>hello</status></presence>")
        await c.send(f"<message type='chat' to='{dave}' id='m1'><body>see you</body></message>")
        # An IQ round trip: the stream handles stanzas in order, so both are done by now.
        await c.send(f"<iq type='get' id='sync'><query xmlns='{NS_ROSTER}'/></iq>")
        await read_until(c, lambda e: e.get("id") == "sync", "roster result")
        await c.close()

    async def after() -> None:
        c, _ = await raw_login(core, "carol", "desk")
        await c.send(f"<iq type='get' id='r'><query xmlns='{NS_ROSTER}'/></iq>")
        result = await read_until(c, lambda e: e.get("id") == "r", "roster result")
        items = result.findall(f"{{{NS_ROSTER}}}query/{{{NS_ROSTER}}}item")
        assert [
            (i.get("jid"), i.get("name"), i.get("subscription"), i.get("ask")) for i in items
        ] == [(dave, "Dave", "none", "subscribe")]
        assert items[0].findtext(f"{{{NS_ROSTER}}}group") == "Friends"
        await c.close()
        d, _ = await raw_login(core, "dave", "home")
        await d.send("<presence/>")
        request = await read_until(d, lambda e: e.get("type") == "subscribe", "the request")
        assert (
            request.get("from") == carol and request.findtext(f"{{{NS_CLIENT}}}status") == "hello"
        )
        message = await read_until(d, lambda e: e.tag == qn(NS_CLIENT, "message"), "the message")
        assert message.findtext(f"{{{NS_CLIENT}}}body") == "see you"
        assert message.find(f"{{{NS_DELAY}}}delay") is not None
        await d.close()

    run_async(before())
    core.restart()
    run_async(after())


def test_stream_features_versioning_and_last(core: CoreProcess, run_async: Any) -> None:
    """After authentication the core offers roster versioning and pre-approval; a roster get
    with the current version is an empty result; the server answers Last Activity."""
    core.add_user("erin", PASSWORD)

    async def scenario() -> None:
        c, features = await raw_login(core, "erin", "r")
        assert features.find("{urn:xmpp:features:rosterver}ver") is not None
        assert features.find("{urn:xmpp:features:pre-approval}sub") is not None
        await c.send(
            f"<iq type='set' id='add'><query xmlns='{NS_ROSTER}'><item jid='frank@localhost'/>"
            "</query></iq>"
        )
        await read_until(c, lambda e: e.get("id") == "add", "roster set result")
        await c.send(f"<iq type='get' id='v'><query xmlns='{NS_ROSTER}' ver=''/></iq>")
        full = await read_until(c, lambda e: e.get("id") == "v", "roster result")
        ver = full.find(f"{{{NS_ROSTER}}}query").get("ver")
        assert ver
        await c.send(f"<iq type='get' id='v2'><query xmlns='{NS_ROSTER}' ver='{ver}'/></iq>")
        empty = await read_until(c, lambda e: e.get("id") == "v2", "roster result")
        assert empty.get("type") == "result" and len(empty) == 0
        await c.send("<iq type='get' id='up' to='localhost'><query xmlns='jabber:iq:last'/></iq>")
        up = await read_until(c, lambda e: e.get("id") == "up", "last activity")
        assert int(up.find("{jabber:iq:last}query").get("seconds")) >= 0
        await c.close()

    run_async(scenario())

"""Privacy lists as data (XEP-0016 §2.1, §2.2; XEP-0191 §3, §4): items, JID matching, the
first item that applies, blocking on the default list, the store on a real Redis and each
node's copy kept fresh through pub/sub."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from lxml import etree

from core.storage import keys
from core.storage.privacy import (
    EMPTY,
    AccountLists,
    CompiledList,
    InvalidItem,
    PrivacyCache,
    PrivacyItem,
    PrivacyLists,
    PrivacyStore,
    check_orders,
    jid_matches,
    stanza_kind,
)
from core.xmpp.jid import parse_jid

NS = "jabber:iq:privacy"


def item(text: str) -> PrivacyItem:
    return PrivacyItem.from_element(etree.fromstring(f"<item xmlns='{NS}' {text}"))


def stanza(text: str) -> etree._Element:
    return etree.fromstring(f"<w xmlns='jabber:client'>{text}</w>")[0]


def test_item_round_trip() -> None:
    """An item reads from XML, writes back the same, and survives JSON."""
    it = item(
        "type='jid' value='Tybalt@Example.com' action='deny' order='3'><message/><iq/></item>"
    )
    assert it == PrivacyItem("deny", 3, "jid", "tybalt@example.com", frozenset({"message", "iq"}))
    assert PrivacyItem.from_json(it.to_json()) == it
    out = it.to_element()
    assert out.get("value") == "tybalt@example.com" and out.get("order") == "3"
    assert [etree.QName(c).localname for c in out] == ["message", "iq"]
    fall = item("action='allow' order='9'/>")
    assert fall.type is None and fall.to_element().get("type") is None


@pytest.mark.parametrize(
    "text",
    [
        "action='block' order='1'/>",
        "action='deny'/>",
        "action='deny' order='-1'/>",
        "action='deny' order='4294967296'/>",
        "action='deny' order='x'/>",
        "type='room' value='x' action='deny' order='1'/>",
        "type='jid' action='deny' order='1'/>",
        "type='jid' value='a@b@c' action='deny' order='1'/>",
        "type='subscription' value='pending' action='deny' order='1'/>",
        "action='deny' order='1'><presence/></item>",
    ],
)
def test_invalid_items(text: str) -> None:
    """§2.1: action, order, type, value and child elements are checked."""
    with pytest.raises(InvalidItem):
        item(text)


def test_orders_are_unique() -> None:
    """§2.1: two items with one order are refused."""
    with pytest.raises(InvalidItem):
        check_orders([PrivacyItem("deny", 1), PrivacyItem("allow", 1)])
    check_orders([PrivacyItem("deny", 1), PrivacyItem("allow", 2)])


@pytest.mark.parametrize(
    ("rule", "peer", "matches"),
    [
        ("juliet@capulet.lit/balcony", "juliet@capulet.lit/balcony", True),
        ("juliet@capulet.lit/balcony", "juliet@capulet.lit/chamber", False),
        ("juliet@capulet.lit/balcony", "juliet@capulet.lit", False),
        ("juliet@capulet.lit", "juliet@capulet.lit/chamber", True),
        ("juliet@capulet.lit", "juliet@capulet.lit", True),
        ("juliet@capulet.lit", "nurse@capulet.lit", False),
        ("capulet.lit/balcony", "juliet@capulet.lit/balcony", True),
        ("capulet.lit/balcony", "capulet.lit/balcony", True),
        ("capulet.lit/balcony", "juliet@capulet.lit/chamber", False),
        ("capulet.lit", "capulet.lit", True),
        ("capulet.lit", "juliet@capulet.lit/balcony", True),
        ("capulet.lit", "rooms.capulet.lit", True),
        ("capulet.lit", "x@rooms.capulet.lit/y", True),
        ("capulet.lit", "montague.lit", False),
        ("capulet.lit", "notcapulet.lit", False),
    ],
)
def test_jid_matching(rule: str, peer: str, matches: bool) -> None:
    """§2.1 / XEP-0191 §4: full, bare, domain/resource and domain items."""
    assert jid_matches(parse_jid(rule), parse_jid(peer)) is matches


def test_first_match_in_order_with_kinds() -> None:
    """§2.2 rules 5-7: ascending order, first applicable item wins, fall-through allows;
    child elements narrow an item to some kinds of stanza."""
    lst = CompiledList(
        "l",
        [
            PrivacyItem("allow", 20, "jid", "friend@x.lit"),
            PrivacyItem("deny", 10, "jid", "x.lit", frozenset({"message"})),
            PrivacyItem("deny", 30, "subscription", "none", frozenset({"presence-out"})),
            PrivacyItem("deny", 40, "group", "Enemies"),
        ],
    )
    friend = parse_jid("friend@x.lit/r")
    assert lst.denies("message", friend)  # order 10 comes before the allow at 20
    assert not lst.denies("iq", friend)
    assert lst.denies("presence-out", parse_jid("stranger@y.lit"), None)
    assert not lst.denies("presence-out", parse_jid("pal@y.lit"), ("both", frozenset()))
    assert lst.denies(None, parse_jid("foe@y.lit"), ("both", frozenset({"Enemies"})))
    assert not lst.denies(None, parse_jid("pal@y.lit"), ("both", frozenset({"Friends"})))
    assert lst.needs_roster


def test_stanza_kinds() -> None:
    """Presence notifications are presence-in/out; subscriptions and probes are neither."""
    assert stanza_kind(stanza("<message/>"), True) == "message"
    assert stanza_kind(stanza("<message/>"), False) is None
    assert stanza_kind(stanza("<iq type='get'/>"), True) == "iq"
    assert stanza_kind(stanza("<presence/>"), True) == "presence-in"
    assert stanza_kind(stanza("<presence type='unavailable'/>"), False) == "presence-out"
    assert stanza_kind(stanza("<presence type='subscribe'/>"), True) is None
    assert stanza_kind(stanza("<presence type='probe'/>"), False) is None


def test_effective_list() -> None:
    """§2.2 rules 1-3: the active list, else the default list, else none."""
    lists = AccountLists.of(
        PrivacyLists({"a": (PrivacyItem("deny", 1),), "d": (PrivacyItem("allow", 1),)}, "d")
    )
    assert lists.effective("a") is lists.compiled["a"]
    assert lists.effective(None) is lists.compiled["d"]
    assert lists.effective("gone") is lists.compiled["d"]
    assert EMPTY.effective(None) is None and EMPTY.empty


def test_blocking_creates_and_prepends() -> None:
    """XEP-0191 §3: the first block creates a default list; later ones go at its head
    without changing the order of the other items."""
    lists = PrivacyLists().blocking(["a@x.lit", "b@x.lit", "a@x.lit"])
    assert lists.default == "blocklist"
    assert lists.blocklist() == ["a@x.lit", "b@x.lit"]
    mine = PrivacyLists(
        {"mine": (PrivacyItem("allow", 5, "jid", "c@x.lit"), PrivacyItem("deny", 9))},
        "mine",
    )
    room = mine.blocking(["d@x.lit"])
    assert [(i.order, i.value) for i in room.lists["mine"]] == [
        (0, "d@x.lit"),
        (5, "c@x.lit"),
        (9, None),
    ]
    tight = room.blocking(["e@x.lit", "f@x.lit"])
    assert [(i.order, i.value) for i in tight.lists["mine"]] == [
        (0, "e@x.lit"),
        (1, "f@x.lit"),
        (2, "d@x.lit"),
        (3, "c@x.lit"),
        (4, None),
    ]
    assert tight.blocking(["e@x.lit"]) == tight
    taken = PrivacyLists({"blocklist": (PrivacyItem("allow", 1),)}).blocking(["a@x.lit"])
    assert taken.default == "blocklist-2"


def test_unblocking() -> None:
    """Unblocking removes only blocklist entries; a default list left empty goes away."""
    lists = PrivacyLists(
        {
            "mine": (
                PrivacyItem("deny", 1, "jid", "a@x.lit"),
                PrivacyItem("deny", 2, "jid", "b@x.lit", frozenset({"message"})),
                PrivacyItem("deny", 3, "jid", "c@x.lit"),
            )
        },
        "mine",
    )
    assert lists.blocklist() == ["a@x.lit", "c@x.lit"]
    one = lists.unblocking(["c@x.lit"])
    assert one.blocklist() == ["a@x.lit"] and len(one.lists["mine"]) == 2
    everything = lists.unblocking(None)
    assert everything.blocklist() == [] and len(everything.lists["mine"]) == 1
    only = PrivacyLists().blocking(["a@x.lit"]).unblocking(None)
    assert only == PrivacyLists()


def test_store_round_trip(redis_client: Any, run_async: Any) -> None:
    """The store writes both keys in one transaction and reads back what it wrote."""
    store = PrivacyStore(redis_client)
    bare = "alice@localhost"

    async def go() -> None:
        assert (await store.load(bare)).empty
        lists = PrivacyLists().blocking(["bob@localhost"]).with_list("x", [PrivacyItem("deny", 1)])
        before, after = await store.update(bare, lambda _: lists)
        assert before.empty and after == lists
        assert await store.load(bare) == lists
        assert await redis_client.get(keys.privacy_default(bare)) == b"blocklist"
        await store.update(bare, lambda current: current.without_list("blocklist"))
        loaded = await store.load(bare)
        assert loaded.default is None and list(loaded.lists) == ["x"]
        assert not await redis_client.exists(keys.privacy_default(bare))

    run_async(go())


def test_store_retries_after_a_concurrent_write(
    redis_url: str, redis_client: Any, run_async: Any
) -> None:
    """An optimistic transaction: another writer landing between the read and the write makes
    the change run again on the fresh lists, so neither write is lost."""
    store = PrivacyStore(redis_client)
    bare = "alice@localhost"
    seen: list[list[str]] = []
    other = redis.Redis.from_url(redis_url)

    def change(current: PrivacyLists) -> PrivacyLists:
        seen.append(current.blocklist())
        if len(seen) == 1:
            # Another client writes the watched keys while this change is being computed.
            lists, default = PrivacyLists().blocking(["x@y.lit"]).to_redis()
            other.hset(keys.privacy(bare), mapping=lists)
            other.set(keys.privacy_default(bare), default or b"")
        return current.blocking(["mine@y.lit"])

    try:
        run_async(store.update(bare, change))
    finally:
        other.close()
    assert seen == [[], ["x@y.lit"]]
    assert run_async(store.load(bare)).blocklist() == ["mine@y.lit", "x@y.lit"]


def test_cache_is_invalidated_by_other_nodes(redis_client: Any, run_async: Any) -> None:
    """A change announced by another node drops this node's copy; the next use reloads it,
    and an online account is reloaded at once."""

    async def go() -> None:
        store = PrivacyStore(redis_client)
        online = {"alice@localhost"}
        reloaded: list[str] = []
        here = PrivacyCache(store, redis_client, "here", is_online=online.__contains__)
        there = PrivacyCache(store, redis_client, "there", is_online=lambda _: False)
        here.start(reload=reloaded.append)
        try:
            await here.wait_subscribed()
            assert await here.get("alice@localhost") is EMPTY
            assert here.peek("alice@localhost") is EMPTY
            _, data = await store.update("alice@localhost", lambda c: c.blocking(["b@x.lit"]))
            await there.changed("alice@localhost", data)
            for _ in range(200):
                if here.peek("alice@localhost") is None:
                    break
                await asyncio.sleep(0.01)
            assert here.peek("alice@localhost") is None
            assert reloaded == ["alice@localhost"]
            assert (await here.get("alice@localhost")).data.blocklist() == ["b@x.lit"]
            # Its own announcements do not drop what it just wrote.
            await here.changed("alice@localhost", data)
            await asyncio.sleep(0.05)
            assert here.peek("alice@localhost") is not None
        finally:
            await here.stop()

    run_async(go())


def test_cache_keeps_online_accounts_and_bounds_the_rest(redis_client: Any, run_async: Any) -> None:
    """Online accounts stay; others are kept up to a bound, least recently used first out."""

    async def go() -> None:
        online: set[str] = {"on@localhost"}
        cache = PrivacyCache(
            PrivacyStore(redis_client),
            redis_client,
            "n",
            is_online=online.__contains__,
            recent_size=2,
        )
        for bare in ("on@localhost", "a@localhost", "b@localhost", "c@localhost"):
            await cache.get(bare)
        assert set(cache.online) == {"on@localhost"}
        assert list(cache.recent) == ["b@localhost", "c@localhost"]
        online.discard("on@localhost")
        cache.went_offline("on@localhost")
        assert list(cache.recent) == ["c@localhost", "on@localhost"]

    run_async(go())

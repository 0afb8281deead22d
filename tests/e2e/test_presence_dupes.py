"""Initial presence of contacts that come online together (RFC 6121 §4.2.2, §4.3.2), against a
real core and Redis: each session gets each available contact's presence once, none is lost.

When two contacts with a mutual subscription send initial presence at the same moment, the
presence of each can reach the other two ways: the broadcast of its initial presence (§4.2.2)
and the answer to the other's probe (§4.3.2). The RFC asks that the contact get the user's
current presence; it does not strictly forbid a repeated, identical available presence, but a
repeat is wasted traffic (with 50-contact rosters it was a third of all presence delivered)
and neither Prosody nor ejabberd sends one. So the test asks for exactly one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable

import redis.asyncio
from lxml import etree

from core.storage.accounts import AccountStore
from core.storage.roster import RosterItem, RosterStore
from core.xmpp.ns import NS_CLIENT, NS_DELAY, NS_PING, qn
from tests.harness import CoreProcess, RawClient

PASSWORD = "e2e-presence-dupes-3"
ACCOUNTS = 24  # every one a 'both' contact of every other: 552 presences per round
ROUNDS = 3
TIMEOUT = 8.0  # for everyone to see everyone, per round
QUIET = 0.25  # after that, how long nothing must arrive (late duplicates)
QN_PRESENCE = qn(NS_CLIENT, "presence")
QN_IQ = qn(NS_CLIENT, "iq")


def provision(core: CoreProcess, names: list[str]) -> list[str]:
    """Accounts ``names``, each with every other as a 'both' contact, written to Redis before
    any of them logs in (as core/storage/roster.py keeps rosters)."""
    bares = [f"{n}@{core.domain}" for n in names]

    async def write() -> None:
        client = redis.asyncio.Redis.from_url(core.redis_url)
        try:
            accounts, rosters = AccountStore(client), RosterStore(client)
            for name, bare in zip(names, bares, strict=True):
                await accounts.create(name, core.domain, PASSWORD)
                items: dict[str, RosterItem | None] = {
                    c: RosterItem(c, subscription="both") for c in bares if c != bare
                }
                await rosters.write(bare, version="dupes-1", items=items)
        finally:
            await client.aclose()

    asyncio.run(write())
    return bares


class Watcher:
    """One logged-in raw client, the presence it got from others since the last reset, and
    the ids of the IQ results it got."""

    def __init__(self, client: RawClient, bare: str) -> None:
        self.client = client
        self.bare = bare
        self.full = f"{bare}/r"
        self.available: Counter[str] = Counter()
        self.unavailable: Counter[str] = Counter()
        self.last: dict[str, str] = {}  # full JID -> the type of its latest presence
        self.results: set[str] = set()
        self.presences: list[etree._Element] = []  # from others, in order
        self.changed = asyncio.Event()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            el = await self.client.next_element(timeout=60)
            if el.tag == QN_IQ and el.get("type") == "result":
                self.results.add(el.get("id", ""))
            elif el.tag == QN_PRESENCE and el.get("from", "").partition("/")[0] != self.bare:
                # (its own presence comes back too, §4.2.2: not counted)
                self.presences.append(el)
                ptype = el.get("type")
                self.last[el.get("from", "")] = ptype or "available"
                if ptype is None:
                    self.available[el.get("from", "")] += 1
                elif ptype == "unavailable":
                    self.unavailable[el.get("from", "")] += 1
            self.changed.set()

    def reset(self) -> None:
        self.available.clear()
        self.unavailable.clear()
        self.last.clear()


async def wait_all(watchers: list[Watcher], done: Callable[[Watcher], bool], what: str) -> None:
    """Wait until ``done(w)`` holds for every watcher (bounded), then until nothing more
    arrives for ``QUIET`` seconds (bounded too), so that late duplicates are counted."""
    deadline = time.monotonic() + TIMEOUT
    for w in watchers:
        while True:
            w.changed.clear()
            if done(w):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{w.bare}: {what} incomplete: {[etree.tostring(e) for e in w.presences]}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.changed.wait(), remaining)
    quiet_until = time.monotonic() + 4 * QUIET
    while time.monotonic() < quiet_until:
        for w in watchers:
            w.changed.clear()
        await asyncio.sleep(QUIET)
        if not any(w.changed.is_set() for w in watchers):
            return


async def go_unavailable(watchers: list[Watcher], tag: str) -> None:
    """All of ``watchers`` send unavailable presence at once, then a ping: its result means
    the core has finished with the presence (a stream's stanzas are handled in order)."""
    await asyncio.gather(
        *(
            w.client.send(
                "<presence type='unavailable'/>"
                f"<iq type='get' id='{tag}' to='localhost'><ping xmlns='{NS_PING}'/></iq>"
            )
            for w in watchers
        )
    )
    await wait_all(watchers, lambda w: tag in w.results, f"{tag} ping result")


def test_contacts_online_together_get_each_presence_once(core: CoreProcess) -> None:
    """Accounts with mutual subscriptions that send initial presence at once each get every
    contact's available presence exactly once, none missing (RFC 6121 §4.2.2, §4.3.2), and
    the unavailable presence of those who leave (§4.5.2), round after round."""
    names = [f"dup{i}" for i in range(ACCOUNTS)]
    provision(core, names)

    async def scenario() -> None:
        clients = [RawClient(core.c2s_port) for _ in names]
        await asyncio.gather(
            *(c.login(n, PASSWORD, resource="r") for c, n in zip(clients, names, strict=True))
        )
        watchers = [Watcher(c, f"{n}@{core.domain}") for c, n in zip(clients, names, strict=True)]
        everyone = {w.full for w in watchers}
        try:
            for rnd in range(ROUNDS):
                for w in watchers:
                    w.reset()
                # Every client's initial presence in one go: the core reads them together.
                await asyncio.gather(*(w.client.send("<presence/>") for w in watchers))
                await wait_all(
                    watchers,
                    lambda w: set(w.available) >= everyone - {w.full},
                    f"round {rnd}: available presence",
                )
                for w in watchers:
                    twice = {f: n for f, n in w.available.items() if n != 1}
                    assert not twice, f"round {rnd}: {w.bare} got the same presence {twice}"
                    # None missing, and none lost to a stale answer: a probe that found a
                    # contact offline is answered with its last unavailable presence
                    # (§4.3.2), which must not arrive after its initial presence.
                    assert set(w.available) == everyone - {w.full}
                    assert set(w.last.values()) == {"available"}, (rnd, w.bare, w.last)
                # Half of them leave together; the others see each of them go (§4.5.2).
                leaving = [w for i, w in enumerate(watchers) if (i + rnd) % 2 == 0]
                staying = [w for w in watchers if w not in leaving]
                gone = {w.full for w in leaving}
                for w in staying:
                    w.unavailable.clear()  # (last unavailable presence answering probes)
                await go_unavailable(leaving, f"left{rnd}")
                await wait_all(
                    staying,
                    lambda w, gone=gone: set(w.unavailable) >= gone,
                    f"round {rnd}: unavailable presence",
                )
                for w in staying:
                    assert w.unavailable == Counter(gone), (rnd, w.bare, dict(w.unavailable))
                    assert set(w.available.values()) == {1}, (rnd, w.bare, dict(w.available))
                await go_unavailable(staying, f"rest{rnd}")
        finally:
            for w in watchers:
                w.reader.cancel()
            await asyncio.gather(*(w.reader for w in watchers), return_exceptions=True)
            await asyncio.gather(*(c.close() for c in clients))

    asyncio.run(scenario())


def test_probes_of_offline_contacts_read_ahead(core: CoreProcess) -> None:
    """Initial presence probes contacts with no session (RFC 6121 §4.3.2): one that went
    offline answers once with its last unavailable presence, stamped (XEP-0203); one never
    online says nothing; a contact without the account in its roster, or with no account,
    answers 'unsubscribed', which the prober's roster takes in (§3.2.3)."""
    me, gone, never, ghost, oneway = (
        f"{n}@{core.domain}"
        for n in ("ahead", "ahead-gone", "ahead-never", "ahead-ghost", "ahead-1way")
    )

    async def write() -> None:
        client = redis.asyncio.Redis.from_url(core.redis_url)
        try:
            accounts, rosters = AccountStore(client), RosterStore(client)
            for bare in (me, gone, never, oneway):
                await accounts.create(bare.partition("@")[0], core.domain, PASSWORD)
            items: dict[str, RosterItem | None] = {
                c: RosterItem(c, subscription="both") for c in (gone, never, ghost, oneway)
            }
            await rosters.write(me, version="ahead-1", items=items)
            for c in (gone, never):
                await rosters.write(
                    c, version="ahead-1", items={me: RosterItem(me, subscription="both")}
                )
        finally:
            await client.aclose()

    asyncio.run(write())

    async def scenario() -> None:
        leaver = RawClient(core.c2s_port)
        await leaver.login("ahead-gone", PASSWORD, resource="r")
        left = Watcher(leaver, gone)
        try:
            await leaver.send(
                "<presence/><presence type='unavailable'><status>bye</status></presence>"
                f"<iq type='get' id='bye' to='localhost'><ping xmlns='{NS_PING}'/></iq>"
            )
            await wait_all([left], lambda w: "bye" in w.results, "ping result")
        finally:
            left.reader.cancel()
            await asyncio.gather(left.reader, return_exceptions=True)
            await leaver.close()
        client = RawClient(core.c2s_port)
        await client.login("ahead", PASSWORD, resource="r")
        w = Watcher(client, me)
        try:
            await client.send("<presence/>")
            await wait_all(
                [w],
                lambda w: {e.get("from") for e in w.presences} >= {f"{gone}/r", ghost, oneway},
                "answers to the probes",
            )
        finally:
            w.reader.cancel()
            await asyncio.gather(w.reader, return_exceptions=True)
            await client.close()
        got = {(e.get("from"), e.get("type")): e for e in w.presences}
        assert len(got) == len(w.presences), [etree.tostring(e) for e in w.presences]
        last = got[(f"{gone}/r", "unavailable")]
        assert last.findtext(qn(NS_CLIENT, "status")) == "bye"
        assert last.find(qn(NS_DELAY, "delay")) is not None
        assert set(got) == {
            (f"{gone}/r", "unavailable"),
            (ghost, "unsubscribed"),
            (oneway, "unsubscribed"),
        }, sorted(got)

    asyncio.run(scenario())


def test_resources_online_together_see_each_other_once(core: CoreProcess) -> None:
    """Resources of one account that send initial presence at once each get every other
    resource's presence exactly once (RFC 6121 §4.2.2), while the account's contacts are
    probed (which makes the core wait on Redis in between)."""
    resources = [f"res{i}" for i in range(8)]
    me = f"multi@{core.domain}"
    contacts = [f"multi-c{i}@{core.domain}" for i in range(10)]

    async def write() -> None:
        client = redis.asyncio.Redis.from_url(core.redis_url)
        try:
            accounts, rosters = AccountStore(client), RosterStore(client)
            for bare in (me, *contacts):
                await accounts.create(bare.partition("@")[0], core.domain, PASSWORD)
            items: dict[str, RosterItem | None] = {
                c: RosterItem(c, subscription="both") for c in contacts
            }
            await rosters.write(me, version="multi-1", items=items)
        finally:
            await client.aclose()

    asyncio.run(write())

    async def scenario() -> None:
        clients = [RawClient(core.c2s_port) for _ in resources]
        await asyncio.gather(
            *(
                c.login("multi", PASSWORD, resource=r)
                for c, r in zip(clients, resources, strict=True)
            )
        )
        fulls = {f"{me}/{r}" for r in resources}
        seen: list[Counter[str]] = [Counter() for _ in clients]
        changed = asyncio.Event()

        async def read(i: int) -> None:
            while True:
                el = await clients[i].next_element(timeout=60)
                if el.tag == QN_PRESENCE and el.get("type") is None and el.get("from") in fulls:
                    seen[i][el.get("from")] += 1
                    changed.set()

        readers = [asyncio.ensure_future(read(i)) for i in range(len(clients))]
        try:
            await asyncio.gather(*(c.send("<presence/>") for c in clients))
            deadline = time.monotonic() + TIMEOUT
            while not all(set(s) == fulls for s in seen):
                assert time.monotonic() < deadline, seen
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), deadline - time.monotonic())
            await asyncio.sleep(4 * QUIET)
            for r, s in zip(resources, seen, strict=True):
                # Its own presence comes back once too (§4.2.2: the sending resource included).
                assert s == Counter(fulls), (r, dict(s))
        finally:
            for t in readers:
                t.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await asyncio.gather(*(c.close() for c in clients))

    asyncio.run(scenario())

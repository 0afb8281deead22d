"""The cost and the correctness of the groupchat path (XEP-0045 §7.4) on a real Redis: a room
keeps no more history than its own length (§7.2.15, §10.2 muc#maxhistoryfetch), a message
to a room that keeps none costs no Redis command and one that is kept one write, and an
instance that keeps rooms in memory still sees what other instances change (announcements
on pub/sub, revalidation, conditional writes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from lxml import etree

from components.muc import service as service_module
from components.muc.store import RoomStore, history_key
from tests.unit.test_muc_transcript import (
    CRONE,
    HAG,
    ROOM,
    SERVICE,
    WITCH,
    Muc,
    Run,
    by_recipient,
    muc,
)

__all__ = ["muc"]

Element = etree._Element
Watch = Callable[..., None]
BODY = "{jabber:client}body"
# Commands the tests themselves send while measuring.
MEASURING = {"cmdstat_config|resetstat", "cmdstat_info", "cmdstat_config"}


def say(frm: str, text: str, ident: str = "") -> str:
    id_attr = f" id='{ident}'" if ident else ""
    return (
        f"<message from='{frm}' to='{ROOM}' type='groupchat'{id_attr}><body>{text}</body></message>"
    )


def room_with_history(muc: Muc, run_async: Run, length: int) -> None:
    """CRONE's room keeping ``length`` messages of history, with HAG in it."""
    run_async(muc.create(CRONE, "firstwitch", **{"muc#maxhistoryfetch": str(length)}))
    run_async(muc.join(HAG, "thirdwitch"))


def stored_history(client: redis.asyncio.Redis, run_async: Run) -> list[bytes]:
    return run_async(client.lrange(history_key(ROOM), 0, -1))


def history_bodies(out: list[Any], to: str) -> list[str]:
    """The bodies of the history messages (with a delay stamp) sent to ``to`` on entry."""
    return [
        m.findtext(BODY)
        for m in by_recipient(out).get(to, [])
        if m.find("{urn:xmpp:delay}delay") is not None
    ]


async def commands_during(client: redis.asyncio.Redis, action: Any) -> dict[str, int]:
    """The Redis commands (name -> calls) that ``action`` made, from Redis' own statistics."""
    await client.config_resetstat()
    await action
    stats = await client.info("commandstats")
    return {k: int(v["calls"]) for k, v in stats.items() if k not in MEASURING}


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait (bounded) for something that happens on another connection."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


@pytest.fixture
def watch(run_async: Run) -> Iterator[Callable[..., None]]:
    """``watch(*mucs)``: those instances follow the announcements (until the test ends)."""
    started: list[Muc] = []

    async def start(mucs: tuple[Muc, ...]) -> None:
        for m in mucs:
            m.service.start_watching()
            started.append(m)
        await asyncio.gather(*(m.service.wait_watching(5.0) for m in mucs))

    yield lambda *mucs: run_async(start(mucs))

    async def stop() -> None:
        await asyncio.gather(*(m.service.stop_watching() for m in started))

    run_async(stop())


# History bounded by the room's own length ---------------------------------------------------


def test_a_room_with_no_history_stores_none(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run
) -> None:
    """History length 0: messages are reflected but nothing is kept, in memory or in Redis
    (not even up to the service's maximum), and a newcomer gets no history, also from
    another instance."""
    room_with_history(muc, run_async, 0)
    for n in range(3):
        out = run_async(muc.send(say(HAG, f"m{n}")))
        assert sorted(by_recipient(out)) == sorted([CRONE, HAG])
    assert run_async(redis_client.exists(history_key(ROOM))) == 0
    assert muc.service.rooms[ROOM].history == []
    assert history_bodies(run_async(muc.join(WITCH, "secondwitch")), WITCH) == []
    other = Muc(redis_client)
    out = run_async(other.join("stranger@shakespeare.lit/x", "stranger"))
    assert history_bodies(out, "stranger@shakespeare.lit/x") == []


def test_history_follows_the_rooms_length(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run
) -> None:
    """A room keeps its last N messages; a shorter length set later drops the oldest ones
    from Redis and memory, and 0 drops them all."""
    room_with_history(muc, run_async, 2)
    for n in range(3):
        run_async(muc.send(say(HAG, f"m{n}")))
    stored = stored_history(redis_client, run_async)
    assert len(stored) == 2 and b">m1<" in stored[0] and b">m2<" in stored[1]
    assert history_bodies(run_async(muc.join(WITCH, "secondwitch")), WITCH) == ["m1", "m2"]
    out = run_async(
        muc.configure(CRONE, "<field var='muc#maxhistoryfetch'><value>1</value></field>")
    )
    assert out[-1].get("type") == "result"
    stored = stored_history(redis_client, run_async)
    assert len(stored) == 1 and b">m2<" in stored[0]
    assert [h.xml.count(">m2<") for h in muc.service.rooms[ROOM].history] == [1]
    run_async(muc.configure(CRONE, "<field var='muc#maxhistoryfetch'><value>0</value></field>"))
    assert run_async(redis_client.exists(history_key(ROOM))) == 0
    assert muc.service.rooms[ROOM].history == []


def test_a_list_stored_beyond_the_length_is_trimmed_on_the_next_write(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run
) -> None:
    """History a room of length 0 stored before the length bounded it is neither served nor
    kept once the room is written again."""
    room_with_history(muc, run_async, 0)
    run_async(redis_client.rpush(history_key(ROOM), b'{"t": 1.0, "x": "<message/>"}'))
    out = run_async(Muc(redis_client).join(WITCH, "secondwitch"))
    assert history_bodies(out, WITCH) == []
    assert run_async(redis_client.exists(history_key(ROOM))) == 0


# Redis work per groupchat message -----------------------------------------------------------


def test_groupchat_without_history_costs_no_redis_command(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run, watch: Watch
) -> None:
    """While changes made elsewhere are announced, a message to a room that keeps no history
    is reflected to everyone from memory: Redis sees no command at all."""
    watch(muc)
    room_with_history(muc, run_async, 0)
    run_async(muc.join(WITCH, "secondwitch"))
    sent: list[Element] = []

    async def talk() -> None:
        for n in range(5):
            sent.extend(await muc.send(say(HAG, f"m{n}", f"id{n}")))

    assert run_async(commands_during(redis_client, talk())) == {}
    assert len(sent) == 15
    for to, got in by_recipient(sent).items():
        assert [m.get("id") for m in got] == [f"id{n}" for n in range(5)], to
        assert all(m.get("from") == f"{ROOM}/thirdwitch" for m in got)


def test_groupchat_with_history_costs_one_write_made_before_the_reflection(
    redis_url: str, redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run, watch: Watch
) -> None:
    """A message kept in history costs one conditional write (no version check first), and
    it is in the stored history before anyone receives it."""
    watch(muc)
    room_with_history(muc, run_async, 5)
    stored_when_sent: list[int] = []
    peek = redis.Redis.from_url(redis_url)
    peek.ping()  # connected before the measurement
    sink = muc.service.send

    def send(el: Element) -> None:
        stored_when_sent.append(int(peek.llen(history_key(ROOM))))
        sink(el)

    muc.service.send = send
    try:
        calls = run_async(commands_during(redis_client, muc.send(say(HAG, "kept"))))
    finally:
        peek.close()
    # One script call; the rest are the commands it runs inside Redis (the version check
    # among them) and the two looks taken above.
    inside = {"cmdstat_hget": 1, "cmdstat_rpush": 1, "cmdstat_ltrim": 1, "cmdstat_hset": 1}
    assert calls == {"cmdstat_evalsha": 1, **inside, "cmdstat_llen": 2}, calls
    assert stored_when_sent == [1, 1]
    assert len(stored_history(redis_client, run_async)) == 1


# Several instances -------------------------------------------------------------------------


def test_a_change_made_elsewhere_is_announced(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run, watch: Watch
) -> None:
    """Another instance admits an occupant (the room moved there and back): the
    announcement drops this instance's copy, so its next message reaches the newcomer."""
    other = Muc(redis_client)
    watch(muc, other)
    room_with_history(muc, run_async, 0)
    run_async(other.join(WITCH, "secondwitch"))
    run_async(until(lambda: ROOM not in muc.service.rooms))
    out = run_async(muc.send(say(HAG, "hello")))
    assert sorted(by_recipient(out)) == sorted([CRONE, HAG, WITCH])


def test_a_missed_announcement_is_caught_by_revalidation(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run, watch: Watch
) -> None:
    """Should an announcement be missed, the copy is checked against Redis again after
    REVALIDATE seconds."""
    clock = [1000.0]
    muc.service.monotonic = lambda: clock[0]
    other = Muc(redis_client)
    # The other instance's announcements look like this instance's own: ignored.
    other.service.store.writer = muc.service.store.writer
    watch(muc, other)
    room_with_history(muc, run_async, 0)
    run_async(other.join(WITCH, "secondwitch"))
    clock[0] += service_module.REVALIDATE + 0.01
    out = run_async(muc.send(say(HAG, "hello")))
    assert sorted(by_recipient(out)) == sorted([CRONE, HAG, WITCH])


def test_an_out_of_date_copy_never_overwrites(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run, watch: Watch
) -> None:
    """With an announcement missed and the copy still taken as fresh, a change this instance
    makes fails the version check and is made again on the current room: nothing the other
    instance wrote is lost and everyone hears of the change."""
    muc.service.monotonic = lambda: 1000.0
    other = Muc(redis_client)
    other.service.store.writer = muc.service.store.writer
    watch(muc, other)
    room_with_history(muc, run_async, 0)
    run_async(other.join(WITCH, "secondwitch"))
    out = run_async(
        muc.send(f"<presence from='{HAG}' to='{ROOM}/thirdwitch'><show>away</show></presence>")
    )
    assert sorted(by_recipient(out)) == sorted([CRONE, HAG, WITCH])
    stored = run_async(RoomStore(redis_client, SERVICE).load(ROOM, 100))
    assert sorted(stored.occupants) == ["firstwitch", "secondwitch", "thirdwitch"]
    assert "away" in stored.occupants["thirdwitch"].sessions[HAG]


def test_a_lost_subscription_falls_back_to_version_checks(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run, watch: Watch
) -> None:
    """When the announcement connection drops, what was announced meanwhile is lost: every
    copy is checked against Redis until the listener is back and the copy confirmed, after
    which messages cost nothing again."""
    other = Muc(redis_client)
    watch(muc, other)
    room_with_history(muc, run_async, 0)
    run_async(muc.send(say(HAG, "warm")))
    run_async(redis_client.client_kill_filter(_type="pubsub"))
    run_async(until(lambda: not muc.service.announced))
    run_async(other.join(WITCH, "secondwitch"))  # announced to nobody here
    run_async(muc.service.wait_watching(5.0))
    out = run_async(muc.send(say(HAG, "after")))
    assert sorted(by_recipient(out)) == sorted([CRONE, HAG, WITCH])
    assert run_async(commands_during(redis_client, muc.send(say(HAG, "free")))) == {}

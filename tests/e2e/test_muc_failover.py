"""End to end: two ``switchboard muc`` instances share the rooms (``instances = "shard"``) and
survive the loss of one. 20 slixmpp occupants in 10 rooms keep talking while one instance is
killed with SIGKILL: every room still fans out to every occupant, nobody rejoins or sees a
kick, and the history is intact. A graceful restart (SIGTERM) hands rooms over the same way.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from core.component_routes import rendezvous
from tests.e2e.test_muc import (
    SERVICE,
    MucProcess,
    clients,
    create_room,
    groupchat_from,
    muc_core,
    wait_instances,
)

ROOMS = [f"room{i}@{SERVICE}" for i in range(10)]
USERS = (*(f"user{i:02d}" for i in range(20)), "observer")


def _members(i: int) -> tuple[int, int]:
    return 2 * i, 2 * i + 1


async def _talk(occupants: list[Any], round_: str) -> None:
    """Each occupant says one line in its room; every occupant of the room receives both."""
    for i, room in enumerate(ROOMS):
        for n in _members(i):
            occupants[n].send_message(mto=room, mbody=f"{round_} from {n}", mtype="groupchat")
    waits = []
    for i, room in enumerate(ROOMS):
        for reader in _members(i):
            for writer in _members(i):
                waits.append(groupchat_from(occupants[reader], room, f"{round_} from {writer}", 10))
    await asyncio.gather(*waits)


def _no_removal(occupants: list[Any]) -> None:
    """Nobody saw an occupant leave or be removed (no unavailable presence at all)."""
    for client in occupants:
        while not client.room_presences.empty():
            p = client.room_presences.get_nowait()
            assert p["type"] != "unavailable", f"{client.boundjid} saw {p}"


@pytest.fixture
def core(redis_server: str, tmp_path: Path) -> Any:
    proc = muc_core(redis_server, tmp_path, USERS)
    try:
        yield proc
    finally:
        proc.stop()


def test_rooms_survive_the_loss_of_an_instance(core: Any) -> None:
    """SIGKILL one of two instances mid-conversation: its rooms carry on on the other."""
    owners = {room: rendezvous(room, ["m1", "m2"]) for room in ROOMS}
    assert set(owners.values()) == {"m1", "m2"}, owners
    m1 = MucProcess(core, "m1").start()
    m2 = MucProcess(core, "m2").start()

    async def run() -> None:
        await wait_instances(core, {"m1", "m2"})
        async with clients(core, *USERS) as everyone:
            occupants, observer = everyone[:20], everyone[20]
            for i, room in enumerate(ROOMS):
                first, second = _members(i)
                await create_room(occupants[first], room, f"nick{first}")
                await (
                    occupants[second]
                    .plugin["xep_0045"]
                    .join_muc_wait(room, f"nick{second}", timeout=10)
                )
            await _talk(occupants, "before")
            for client in occupants:
                while not client.room_presences.empty():
                    client.room_presences.get_nowait()

            m1.stop(signal.SIGKILL)
            await wait_instances(core, {"m2"})

            await _talk(occupants, "after")
            _no_removal(occupants)
            # History: everything said before and after the loss, in order.
            for i, room in enumerate(ROOMS):
                _, _, present, history = await observer.plugin["xep_0045"].join_muc_wait(
                    room, "observer", timeout=10
                )
                a, b = _members(i)
                assert [m["body"] for m in history] == [
                    f"before from {a}",
                    f"before from {b}",
                    f"after from {a}",
                    f"after from {b}",
                ]
                assert sorted(p["from"].resource for p in present) == sorted(
                    [f"nick{a}", f"nick{b}", "observer"]
                )

    try:
        asyncio.run(run())
    finally:
        m1.stop(signal.SIGKILL)
        m2.stop()
    assert "Traceback" not in m2.log()


def test_graceful_restart_hands_rooms_over_and_back(core: Any) -> None:
    """SIGTERM stops an instance cleanly; its rooms carry on elsewhere, and move back when it
    returns, with what happened meanwhile."""
    m1 = MucProcess(core, "m1").start()
    m2 = MucProcess(core, "m2").start()
    rooms = ROOMS[:4]

    async def run() -> None:
        await wait_instances(core, {"m1", "m2"})
        async with clients(core, *USERS[:8]) as occupants:
            for i, room in enumerate(rooms):
                first, second = _members(i)
                await create_room(occupants[first], room, f"nick{first}")
                await (
                    occupants[second]
                    .plugin["xep_0045"]
                    .join_muc_wait(room, f"nick{second}", timeout=10)
                )

            async def say(text: str) -> None:
                for i, room in enumerate(rooms):
                    occupants[_members(i)[0]].send_message(mto=room, mbody=text, mtype="groupchat")
                await asyncio.gather(
                    *[
                        groupchat_from(occupants[n], room, text, 10)
                        for i, room in enumerate(rooms)
                        for n in _members(i)
                    ]
                )

            await say("one")
            assert m1.stop(signal.SIGTERM) == 0
            await wait_instances(core, {"m2"})
            await say("two")
            m1.start()
            await wait_instances(core, {"m1", "m2"})
            await say("three")
            _no_removal(occupants)

    try:
        asyncio.run(run())
    finally:
        m1.stop()
        m2.stop()


def test_a_room_that_moves_away_and_back_is_current(core: Any) -> None:
    """A room served by m1 moves to m3 when m3 joins, gains an occupant there, and comes
    back to m1 when m3 stops: m1, which kept the room in memory all along, serves the
    current room. The room keeps no history, so m1 reflects messages without writing to
    Redis (nothing would catch an out-of-date copy on write): the newcomer must still hear
    m1's next message."""
    room = next(
        r
        for r in (f"roam{i}@{SERVICE}" for i in range(1000))
        if rendezvous(r, ["m1", "m3"]) == "m3"
    )
    m1 = MucProcess(core, "m1").start()
    m3 = MucProcess(core, "m3")

    async def run() -> None:
        await wait_instances(core, {"m1"})
        async with clients(core, "user00", "user01", "user02", "observer") as (a, b, c, obs):
            await create_room(a, room, "a", **{"muc#maxhistoryfetch": "0"})
            await b.plugin["xep_0045"].join_muc_wait(room, "b", timeout=10)
            a.send_message(mto=room, mbody="on m1", mtype="groupchat")
            await groupchat_from(b, room, "on m1", 10)

            m3.start()
            await wait_instances(core, {"m1", "m3"})
            await c.plugin["xep_0045"].join_muc_wait(room, "c", timeout=10)
            b.send_message(mto=room, mbody="on m3", mtype="groupchat")
            await groupchat_from(c, room, "on m3", 10)
            assert m3.stop(signal.SIGTERM) == 0
            await wait_instances(core, {"m1"})

            a.send_message(mto=room, mbody="back on m1", mtype="groupchat")
            await asyncio.gather(*(groupchat_from(x, room, "back on m1", 10) for x in (a, b, c)))
            _, _, present, history = await obs.plugin["xep_0045"].join_muc_wait(
                room, "obs", timeout=10
            )
            assert history == []
            assert sorted(p["from"].resource for p in present) == ["a", "b", "c", "obs"]

    try:
        asyncio.run(run())
    finally:
        m3.stop()
        m1.stop()
    assert "Traceback" not in m1.log()

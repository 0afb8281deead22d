"""Rooms in Redis (components/muc/store.py) and what makes instances interchangeable: a room
another instance served is loaded and carried on, concurrent writers cannot overwrite each
other, and an unreadable room is removed with status 333. Also the MUC settings."""

from __future__ import annotations

import pytest
import redis.asyncio

from components.muc.model import Room
from components.muc.settings import settings_from_config
from components.muc.store import RoomStore, StaleRoom, occupants_key, room_key
from core.runtime.config import ConfigError, load_config
from tests.unit.test_muc_transcript import ROOM, SERVICE, Muc, Run, by_recipient, muc, statuses

__all__ = ["muc"]

CRONE = "crone1@shakespeare.lit/desktop"
WITCH = "wiccarocks@shakespeare.lit/laptop"
HAG = "hag66@shakespeare.lit/pda"


def _populated(muc: Muc, run_async: Run) -> None:
    run_async(muc.create(CRONE, "firstwitch", **{"muc#roomconfig_roomname": "Cave"}))
    run_async(muc.join(HAG, "thirdwitch", extra=""))
    run_async(
        muc.send(f"<presence from='{HAG}' to='{ROOM}/thirdwitch'><show>away</show></presence>")
    )
    run_async(
        muc.send(
            f"<message from='{CRONE}' to='{ROOM}' type='groupchat'><subject>Spells</subject>"
            "</message>"
        )
    )
    run_async(
        muc.send(
            f"<message from='{CRONE}' to='{ROOM}' type='groupchat' id='m1'><body>one</body>"
            "</message>"
        )
    )
    run_async(
        muc.send(
            f"<iq type='set' id='a' from='{CRONE}' to='{ROOM}'>"
            "<query xmlns='http://jabber.org/protocol/muc#admin'>"
            "<item affiliation='member' jid='wiccarocks@shakespeare.lit' nick='secondwitch'/>"
            "</query></iq>"
        )
    )


def test_room_round_trips_through_redis(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run
) -> None:
    """Everything an instance needs is stored: configuration, affiliations, occupants with
    role and presence, subject, history, lock and occupant-id secret."""
    _populated(muc, run_async)
    mine = muc.service.rooms[ROOM]
    loaded = run_async(RoomStore(redis_client, SERVICE).load(ROOM, 100))
    assert isinstance(loaded, Room)
    assert loaded.config == mine.config and loaded.config.name == "Cave"
    assert loaded.affiliations == mine.affiliations
    assert {n: (o.bare, o.role, o.sessions) for n, o in loaded.occupants.items()} == {
        n: (o.bare, o.role, o.sessions) for n, o in mine.occupants.items()
    }
    assert "away" in loaded.occupants["thirdwitch"].sessions[HAG]
    assert loaded.subject is not None and loaded.subject.text == "Spells"
    assert [h.xml for h in loaded.history] == [h.xml for h in mine.history]
    assert (loaded.locked, loaded.secret, loaded.version) == (False, "room-secret", mine.version)
    assert loaded.occupant_of(HAG) is loaded.occupants["thirdwitch"]


def test_another_instance_carries_the_room_on(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run
) -> None:
    """Failover: a second instance that never saw the room fans out to every occupant,
    keeps nicks and roles, and sends the full history to a newcomer, without anyone
    rejoining."""
    _populated(muc, run_async)
    other = Muc(redis_client)
    out = run_async(
        other.send(
            f"<message from='{HAG}' to='{ROOM}' type='groupchat' id='m2'><body>two</body></message>"
        )
    )
    assert sorted(by_recipient(out)) == sorted([CRONE, HAG])
    assert all(m.get("from") == f"{ROOM}/thirdwitch" for m in out)
    out = run_async(other.join(WITCH, "secondwitch"))
    mine = by_recipient(out)[WITCH]
    bodies = [m.findtext("{jabber:client}body") for m in mine if m.get("id") in ("m1", "m2")]
    assert bodies == ["one", "two"]
    assert mine[-1].findtext("{jabber:client}subject") == "Spells"
    # The occupant ids are the same on every instance.
    first = run_async(
        muc.send(f"<message from='{HAG}' to='{ROOM}' type='groupchat'><body>3</body></message>")
    )
    second = run_async(
        other.send(f"<message from='{HAG}' to='{ROOM}' type='groupchat'><body>4</body></message>")
    )
    oid = "{urn:xmpp:occupant-id:0}occupant-id"
    assert first[0].find(oid).get("id") == second[0].find(oid).get("id")  # type: ignore[union-attr]


def test_an_instance_notices_changes_made_elsewhere(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run
) -> None:
    """A room that moved away and back is reloaded: the first instance sees the occupant
    that joined through the second one."""
    _populated(muc, run_async)
    other = Muc(redis_client)
    run_async(other.join(WITCH, "secondwitch"))
    out = run_async(
        muc.send(f"<message from='{CRONE}' to='{ROOM}' type='groupchat'><body>x</body></message>")
    )
    assert sorted(by_recipient(out)) == sorted([CRONE, HAG, WITCH])


def test_a_stale_write_is_refused(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run
) -> None:
    """Writes are conditional on the version loaded: a writer with an old copy gets
    StaleRoom and writes nothing."""
    _populated(muc, run_async)
    store = RoomStore(redis_client, SERVICE)
    old = run_async(store.load(ROOM, 100))
    run_async(Muc(redis_client).join(WITCH, "secondwitch"))
    old.config.name = "stale"
    old.touch()
    with pytest.raises(StaleRoom):
        run_async(store.save(old, 100))
    assert run_async(store.load(ROOM, 100)).config.name == "Cave"


def test_an_unreadable_room_is_removed_with_status_333(
    redis_client: redis.asyncio.Redis, muc: Muc, run_async: Run
) -> None:
    """Only when a room's state cannot be read back do its occupants get 333, and the room
    is removed so it can be created afresh."""
    _populated(muc, run_async)
    run_async(redis_client.hset(room_key(ROOM), "config", b"{not json"))
    other = Muc(redis_client)
    out = run_async(other.join(WITCH, "secondwitch"))
    lost = [p for p in out if p.get("type") == "unavailable"]
    assert sorted(p.get("to") for p in lost) == sorted([CRONE, HAG])
    assert all(statuses(p) == {"110", "333"} for p in lost)
    # The join then created a new room; the unreadable state is kept aside.
    assert "201" in statuses(out[-2])
    assert run_async(redis_client.hlen(occupants_key(ROOM))) == 1
    kept = run_async(redis_client.keys(b"muc:room:{" + ROOM.encode() + b"}:corrupt:*"))
    assert len(kept) == 1


def test_settings_come_from_the_config_and_environment() -> None:
    """[muc] keys, overridden by SWITCHBOARD_MUC_* variables, set the service limits; bad
    values are reported by the config loader with the key's name."""
    config = load_config(
        None,
        env={
            "SWITCHBOARD_DOMAIN": "example.com",
            "SWITCHBOARD_MUC_MAX_OCCUPANTS": "500",
            "SWITCHBOARD_MUC_CREATORS": "local",
        },
    )
    s = settings_from_config(config)
    assert (s.max_occupants, s.creators, s.server_domain) == (500, "local", "example.com")
    with pytest.raises(ConfigError, match="SWITCHBOARD_MUC_MAX_HISTORY"):
        load_config(None, env={"SWITCHBOARD_MUC_MAX_HISTORY": "lots"})
    with pytest.raises(ConfigError, match=r"muc\.creators"):
        load_config(None, env={"SWITCHBOARD_MUC_CREATORS": "admins"})


def test_forgetting_rooms_while_redis_answers_is_harmless(
    muc: Muc, run_async: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link going down empties the room cache at any await; a stanza whose room check
    was under way then carries on with its copy (still the stored version)."""
    _populated(muc, run_async)
    version = muc.service.store.version

    async def version_then_forget(jid: str) -> str | None:
        v = await version(jid)
        muc.service.forget_all()  # as the link-down hook does, meanwhile
        return v

    monkeypatch.setattr(muc.service.store, "version", version_then_forget)
    out = run_async(
        muc.send(f"<message from='{CRONE}' to='{ROOM}' type='groupchat'><body>x</body></message>")
    )
    assert sorted(by_recipient(out)) == sorted([CRONE, HAG])

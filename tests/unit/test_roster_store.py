"""The roster store's contract against a real Redis (storage/roster.py)."""

from __future__ import annotations

from typing import Any

from core.storage import keys
from core.storage.accounts import AccountStore
from core.storage.roster import RosterItem, RosterStore, next_version

A = "alice@localhost"


def test_write_and_load(redis_client: Any, run_async: Any) -> None:
    """Items, pending requests and the version come back as written; None deletes."""

    async def scenario() -> None:
        store = RosterStore(redis_client)
        empty = await store.load(A)
        assert (empty.items, empty.version, empty.pending) == ({}, "", {})
        bob = RosterItem("bob@x", "Bob", ("Friends", "Work"), "to", ask=False, approved=True)
        await store.write(
            A,
            version="e-1",
            items={"bob@x": bob, "carol@x": RosterItem("carol@x", ask=True)},
            pending={"dave@x": b"<presence type='subscribe'/>"},
        )
        loaded = await store.load(A)
        assert loaded.items == {"bob@x": bob, "carol@x": RosterItem("carol@x", ask=True)}
        assert loaded.version == "e-1"
        assert loaded.pending == {"dave@x": b"<presence type='subscribe'/>"}
        await store.write(A, version="e-2", items={"carol@x": None}, pending={"dave@x": None})
        loaded = await store.load(A)
        assert list(loaded.items) == ["bob@x"] and loaded.pending == {}
        assert await store.count(A) == 1
        await store.write(A)  # nothing to do is fine

    run_async(scenario())


def test_items_survive_odd_json(redis_client: Any, run_async: Any) -> None:
    """An item with an unknown subscription value reads as 'none' rather than failing."""

    async def scenario() -> None:
        await redis_client.hset(keys.roster(A), "bob@x", b'{"subscription":"sideways"}')
        loaded = await RosterStore(redis_client).load(A)
        assert loaded.items["bob@x"] == RosterItem("bob@x")

    run_async(scenario())


def test_versions() -> None:
    """Versions count up within an epoch; a roster without one starts a fresh epoch."""
    first = next_version("")
    epoch, _, n = first.rpartition("-")
    assert n == "1" and epoch
    assert next_version(first) == f"{epoch}-2"
    assert next_version("garbage").endswith("-1")


def test_deleting_the_account_deletes_the_roster(redis_client: Any, run_async: Any) -> None:
    """The roster keys are per-account keys: deleting the account removes them."""

    async def scenario() -> None:
        accounts = AccountStore(redis_client)
        await accounts.create("alice", "localhost", "secret")
        await RosterStore(redis_client).write(
            A, version="e-1", items={"b@x": RosterItem("b@x")}, pending={"c@x": b"<p/>"}
        )
        await redis_client.rpush(keys.offline(A), b"<message/>")
        await redis_client.hset(keys.last_activity(A), "time", "1")
        assert await accounts.delete("alice", "localhost")
        for key in (
            keys.roster(A),
            keys.roster_version(A),
            keys.roster_pending(A),
            keys.offline(A),
            keys.last_activity(A),
        ):
            assert not await redis_client.exists(key)

    run_async(scenario())

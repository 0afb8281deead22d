"""AccountStore against a real Redis: SCRAM credentials only, prepared names, atomic writes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio

from core.storage import keys
from core.storage.accounts import (
    AccountExists,
    AccountStore,
    InvalidPassword,
    InvalidUsername,
    NoSuchAccount,
)
from core.xmpp.sasl import derive_scram_credentials, verify_password

Run = Callable[[Awaitable[Any]], Any]
DOMAIN = "example.com"


@pytest.fixture
def store(redis_client: redis.asyncio.Redis) -> AccountStore:
    return AccountStore(redis_client)


def test_create_stores_both_hashes_and_no_password(
    store: AccountStore, redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """Creating an account stores SHA-1 and SHA-256 credentials, never the password."""
    run_async(store.create("alice", DOMAIN, "correct horse"))
    stored = run_async(redis_client.hgetall(keys.account("alice@example.com")))
    assert {
        f"{h}:{f}".encode()
        for h in ("sha1", "sha256")
        for f in ("salt", "iterations", "stored_key", "server_key")
    } <= set(stored)
    assert all(b"correct horse" not in value for value in stored.values())
    assert stored[b"sha256:iterations"] == b"4096"
    assert run_async(store.exists("alice", DOMAIN)) is True
    assert run_async(store.list(DOMAIN)) == ["alice"]


def test_credentials_verify_the_password(store: AccountStore, run_async: Run) -> None:
    """The stored credentials check the right password and refuse a wrong one, per hash."""
    run_async(store.create("alice", DOMAIN, "correct horse"))
    for hash_name in ("sha1", "sha256"):
        creds = run_async(store.scram_credentials("alice", DOMAIN, hash_name))
        assert creds is not None
        assert creds.iterations == 4096
        assert verify_password("correct horse", hash_name, creds)
        assert not verify_password("wrong", hash_name, creds)
        expected = derive_scram_credentials("correct horse", hash_name, salt=creds.salt)
        assert creds == expected


def test_iterations_are_configurable(redis_client: redis.asyncio.Redis, run_async: Run) -> None:
    """The iteration count given to the store is the one used and stored."""
    store = AccountStore(redis_client, iterations=5000)
    run_async(store.create("bob", DOMAIN, "pw"))
    creds = run_async(store.scram_credentials("bob", DOMAIN, "sha1"))
    assert creds is not None and creds.iterations == 5000


def test_usernames_are_prepared(store: AccountStore, run_async: Run) -> None:
    """Names are case-folded (UsernameCaseMapped), so Alice and alice are one account."""
    run_async(store.create("Alice", "Example.COM", "pw"))
    assert run_async(store.exists("ALICE", DOMAIN))
    assert run_async(store.list("EXAMPLE.com")) == ["alice"]
    with pytest.raises(AccountExists):
        run_async(store.create("alice", DOMAIN, "pw"))


def test_duplicate_refused(store: AccountStore, run_async: Run) -> None:
    """Creating an existing account raises AccountExists and keeps the old password."""
    run_async(store.create("alice", DOMAIN, "first"))
    with pytest.raises(AccountExists, match=r"alice@example\.com"):
        run_async(store.create("alice", DOMAIN, "second"))
    creds = run_async(store.scram_credentials("alice", DOMAIN, "sha256"))
    assert verify_password("first", "sha256", creds)


def test_concurrent_creates_yield_one_account(store: AccountStore, run_async: Run) -> None:
    """Two simultaneous creates of one name: exactly one wins, the other gets AccountExists."""

    async def race() -> list[BaseException | None]:
        return await asyncio.gather(
            store.create("carol", DOMAIN, "one"),
            store.create("carol", DOMAIN, "two"),
            return_exceptions=True,
        )

    results = run_async(race())
    assert results.count(None) == 1
    assert sum(isinstance(r, AccountExists) for r in results) == 1


@pytest.mark.parametrize("name", ["", "al ice", "a@b", "a/b", "x" * 1024])
def test_invalid_usernames(store: AccountStore, run_async: Run, name: str) -> None:
    """Names that cannot be a localpart raise InvalidUsername with a readable message."""
    with pytest.raises(InvalidUsername, match="invalid username"):
        run_async(store.create(name, DOMAIN, "pw"))
    assert run_async(store.exists(name, DOMAIN)) is False
    assert run_async(store.scram_credentials(name, DOMAIN, "sha1")) is None


@pytest.mark.parametrize("password", ["", "\u0007bell"])
def test_invalid_passwords(store: AccountStore, run_async: Run, password: str) -> None:
    """Empty passwords and ones OpaqueString refuses are rejected; nothing is stored."""
    with pytest.raises(InvalidPassword):
        run_async(store.create("alice", DOMAIN, password))
    assert run_async(store.exists("alice", DOMAIN)) is False
    assert run_async(store.list(DOMAIN)) == []


def test_set_password(store: AccountStore, run_async: Run) -> None:
    """A new password replaces the credentials for both hashes."""
    run_async(store.create("alice", DOMAIN, "old"))
    run_async(store.set_password("alice", DOMAIN, "new"))
    for hash_name in ("sha1", "sha256"):
        creds = run_async(store.scram_credentials("alice", DOMAIN, hash_name))
        assert verify_password("new", hash_name, creds)
        assert not verify_password("old", hash_name, creds)


def test_set_password_unknown_account(store: AccountStore, run_async: Run) -> None:
    """Setting the password of a missing account raises NoSuchAccount and creates nothing."""
    with pytest.raises(NoSuchAccount, match=r"nobody@example\.com"):
        run_async(store.set_password("nobody", DOMAIN, "pw"))
    assert run_async(store.exists("nobody", DOMAIN)) is False


def test_delete(store: AccountStore, run_async: Run) -> None:
    """Deleting removes the credentials and the index entry; a second delete says False."""
    run_async(store.create("alice", DOMAIN, "pw"))
    run_async(store.create("bob", DOMAIN, "pw"))
    assert run_async(store.delete("Alice", DOMAIN)) is True
    assert run_async(store.exists("alice", DOMAIN)) is False
    assert run_async(store.scram_credentials("alice", DOMAIN, "sha256")) is None
    assert run_async(store.list(DOMAIN)) == ["bob"]
    assert run_async(store.delete("alice", DOMAIN)) is False


def test_list_is_sorted_and_per_domain(store: AccountStore, run_async: Run) -> None:
    """list() returns one domain's localparts, sorted."""
    for name in ("zoe", "adam", "mia"):
        run_async(store.create(name, DOMAIN, "pw"))
    run_async(store.create("other", "other.example", "pw"))
    assert run_async(store.list(DOMAIN)) == ["adam", "mia", "zoe"]
    assert run_async(store.list("other.example")) == ["other"]
    assert run_async(store.list("empty.example")) == []


def test_unknown_account_and_hash(store: AccountStore, run_async: Run) -> None:
    """Lookups of missing accounts give None/False; an unknown hash name is a caller bug."""
    assert run_async(store.scram_credentials("ghost", DOMAIN, "sha256")) is None
    assert run_async(store.exists("ghost", DOMAIN)) is False
    with pytest.raises(ValueError, match="unknown hash"):
        run_async(store.scram_credentials("ghost", DOMAIN, "md5"))

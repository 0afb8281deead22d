"""The per-account locks of core/storage/locks.py that the roster and privacy services share."""

from __future__ import annotations

import asyncio

from core.storage.locks import AccountLocks


def test_changes_of_one_account_run_one_at_a_time() -> None:
    """A second change of the same account waits until the first one is done."""

    async def run() -> list[str]:
        locks = AccountLocks()
        order: list[str] = []
        release = asyncio.Event()

        async def first() -> None:
            async with locks.hold("alice@localhost"):
                order.append("first in")
                await release.wait()
                order.append("first out")

        async def second() -> None:
            async with locks.hold("alice@localhost"):
                order.append("second in")

        a = asyncio.ensure_future(first())
        await asyncio.sleep(0)
        b = asyncio.ensure_future(second())
        await asyncio.sleep(0)
        assert order == ["first in"]
        release.set()
        await asyncio.gather(a, b)
        return order

    assert asyncio.run(run()) == ["first in", "first out", "second in"]


def test_other_accounts_do_not_wait() -> None:
    """A change of another account goes ahead while one account's lock is held."""

    async def run() -> None:
        locks = AccountLocks()
        async with locks.hold("alice@localhost"):
            async with asyncio.timeout(1):
                async with locks.hold("bob@localhost"):
                    assert len(locks) == 2

    asyncio.run(run())


def test_a_lock_is_forgotten_when_nobody_needs_it() -> None:
    """Memory follows the accounts being changed: no lock is left after the changes, even
    after one that failed."""

    async def run() -> int:
        locks = AccountLocks()
        async with locks.hold("alice@localhost"):
            pass
        try:
            async with locks.hold("bob@localhost"):
                raise ValueError("a failed change")
        except ValueError:
            pass
        return len(locks)

    assert asyncio.run(run()) == 0

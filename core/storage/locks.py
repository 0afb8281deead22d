"""Per-account locks of one node: the changes of an account's stored data (its roster, its
privacy lists) run one at a time, each reading, writing to Redis and telling the sessions
before the next one reads (RFC 6121 §2.1.6: pushes in the order of the changes).

A lock exists only while a change holds it or waits for it, so memory follows the accounts
being changed, not every account ever changed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class AccountLocks:
    """One ``asyncio.Lock`` per account (bare JID), forgotten when nobody needs it."""

    def __init__(self) -> None:
        # bare JID -> (the lock, [how many changes hold it or wait for it])
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, bare: str) -> AsyncIterator[None]:
        """Wait for the account's lock and hold it for the ``async with`` body."""
        entry = self._locks.get(bare)
        if entry is None:
            entry = self._locks[bare] = (asyncio.Lock(), [0])
        entry[1][0] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1][0] -= 1
            if entry[1][0] == 0:
                self._locks.pop(bare, None)

    def __len__(self) -> int:
        """How many accounts have a lock now."""
        return len(self._locks)

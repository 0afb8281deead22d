"""Offline messages in Redis (XEP-0160): one list per account, oldest first.

Each entry is a serialized message stanza that already carries its XEP-0203 delay stamp. A
message is appended only while the list is shorter than the cap, in one server-side step, so
two senders racing for the last slot cannot both get it. Taking the messages reads and deletes
the list in one transaction: a message is handed out once.
"""

from __future__ import annotations

import redis.asyncio
from redis.asyncio.client import Pipeline

from core.storage import keys
from core.storage.batch import Batch

# KEYS[1] the list, ARGV[1] the stanza, ARGV[2] the cap: append unless full; 1 if appended.
_PUSH_CAPPED = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""


class OfflineStore:
    """Store messages for an account with no available resource, and hand them out later."""

    def __init__(self, redis: redis.asyncio.Redis) -> None:
        self._redis = redis
        self._push = redis.register_script(_PUSH_CAPPED)

    async def push(self, bare: str, stanza: bytes, cap: int) -> bool:
        """Append ``stanza`` unless ``cap`` messages are already stored; False when full."""
        return bool(await self._push(keys=[keys.offline(bare)], args=[stanza, cap]))

    async def take(self, bare: str) -> list[bytes]:
        """Every stored message, oldest first, removed from storage in the same step."""
        key = keys.offline(bare)

        def queue(pipe: Pipeline) -> None:
            pipe.lrange(key, 0, -1)
            pipe.delete(key)

        # A batch is one MULTI/EXEC, shared with the other batches of this turn: a burst of
        # initial presences takes everyone's messages in one round trip.
        batch = Batch(self._redis)
        part = batch.add(queue)
        await batch.run()
        return list(part.replies[0])

    async def count(self, bare: str) -> int:
        return int(await self._redis.llen(keys.offline(bare)))

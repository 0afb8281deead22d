"""The last unavailable presence of each account, in Redis (XEP-0012, RFC 6121 §4.3.2).

One hash per account (``keys.last_activity``): ``time``, when the account's last resource went
unavailable (seconds since the epoch), and ``presence``, that unavailable presence serialized.
Last Activity answers with the time and the status; a presence probe to an account with no
available resource is answered with the presence, stamped with the time (XEP-0203).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio
from redis.asyncio.client import Pipeline

from core.storage import keys


@dataclass(frozen=True, slots=True)
class LastPresence:
    time: float
    presence: bytes | None


class LastActivityStore:
    """Record and read when an account last went unavailable."""

    def __init__(self, redis: redis.asyncio.Redis) -> None:
        self._redis = redis

    async def record(self, bare: str, when: float, presence: bytes) -> None:
        await self._redis.hset(
            keys.last_activity(bare), mapping={"time": repr(when), "presence": presence}
        )

    async def get(self, bare: str) -> LastPresence | None:
        return parse_last(await self._redis.hgetall(keys.last_activity(bare)))

    @staticmethod
    def queue_get(pipe: Pipeline, bare: str) -> None:
        """Queue the read of ``get`` on a pipeline (``core.storage.batch``); its one reply
        goes to ``parse_last``."""
        pipe.hgetall(keys.last_activity(bare))


def parse_last(raw: dict[bytes, bytes] | None) -> LastPresence | None:
    """The record from a last-activity hash as HGETALL returns it; None when there is none
    (or it is unreadable)."""
    if not raw or b"time" not in raw:
        return None
    try:
        when = float(raw[b"time"])
    except ValueError:
        return None
    return LastPresence(when, raw.get(b"presence"))

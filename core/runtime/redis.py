"""The Redis connection every process shares: ``redis.asyncio`` returning bytes.

Values stay bytes (``decode_responses=False``): stores decode what they know to be text, and
binary values (salts, keys, serialized stanzas) pass through untouched.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio
import redis.exceptions

log = logging.getLogger(__name__)

# Failing fast matters more than patience here: callers decide whether to retry.
CONNECT_TIMEOUT = 5.0
# Connections one process may open. redis-py's asyncio pool allows 100 by default and raises
# past that instead of waiting, which turned a burst of logins into temporary-auth-failure
# answers. (Its blocking pool waits instead, but then a pub/sub listener cancelled at
# shutdown can hang while it closes.)
MAX_CONNECTIONS = 1024


class RedisUnavailable(ConnectionError):
    """Redis did not answer PING in time."""


def connect(url: str) -> redis.asyncio.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``); connects lazily.

    Raises ValueError for a URL redis-py cannot use.
    """
    return redis.asyncio.Redis.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        decode_responses=False,
        socket_connect_timeout=CONNECT_TIMEOUT,
        **_NO_CLIENT_SETINFO,
    )


def _no_client_setinfo() -> dict[str, None]:
    """Keyword arguments that turn off CLIENT SETINFO on each new connection.

    redis-py names itself to the server on every connection it opens, and finds its own
    version from the installed package's metadata each time: 0.85 of the 1.26 ms of CPU a
    new connection cost (measured with 300 at once), and a burst opens hundreds of them.
    Newer redis-py takes ``driver_info=None`` for this, older ``lib_name``/``lib_version``."""
    params = inspect.signature(redis.asyncio.Redis.__init__).parameters
    if "driver_info" in params:
        return {"driver_info": None}
    return {"lib_name": None, "lib_version": None}


_NO_CLIENT_SETINFO = _no_client_setinfo()


def redact_url(url: str) -> str:
    """The URL without its password, for log lines and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


async def wait_ready(client: redis.asyncio.Redis, timeout: float) -> None:
    """Wait until Redis answers PING, retrying with backoff; raise RedisUnavailable after
    ``timeout`` seconds. Containers start in any order, so the first attempts may fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    last: Exception | None = None
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            async with asyncio.timeout(remaining):
                await client.ping()
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            last = exc
        except TimeoutError as exc:
            last = exc
            break
        log.debug("Redis not ready yet: %s", last)
        await asyncio.sleep(min(delay, max(deadline - loop.time(), 0)))
        delay = min(delay * 2, 1.0)
    reason = f": {last}" if last is not None and str(last) else ""
    raise RedisUnavailable(f"Redis did not answer within {timeout:g} s{reason}")

"""Shared fixtures: one real Redis for the whole test session (no mock Redis, DESIGN.md), and
an event loop per test for async code without pytest-asyncio.

No Twisted reactor is installed here: tests that need the asyncio reactor install it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio

from core.runtime.redis_server import EmbeddedRedis

T = TypeVar("T")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server on a free 127.0.0.1 port for the whole session; yields its URL."""
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")))
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session Redis, emptied before the test."""
    client = redis.Redis.from_url(redis_server)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server


@pytest.fixture
def run_async() -> Iterator[Callable[[Awaitable[T]], T]]:
    """Run a coroutine to completion on this test's own event loop: ``run_async(coro)``.

    One loop for the whole test, so clients made in one call can be used in the next.
    """
    with asyncio.Runner() as runner:

        def run(awaitable: Awaitable[T]) -> T:
            async def wrapper() -> T:
                return await awaitable

            return runner.run(wrapper())

        yield run


@pytest.fixture
def redis_client(
    redis_url: str, run_async: Callable[[Awaitable[Any]], Any]
) -> Iterator[redis.asyncio.Redis]:
    """A ``redis.asyncio`` client (bytes responses) on the emptied session Redis; use it from
    ``run_async`` so its connections live on the loop that closes them."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        # A test that used asyncio.run() left connections bound to a closed loop; they cannot
        # be closed cleanly any more, and that must not fail the test.
        with contextlib.suppress(RuntimeError):
            run_async(client.aclose())

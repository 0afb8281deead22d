"""Live sessions in Redis (core/sessions.py; DESIGN "Redis: the shared state"): each session is
recorded with the id of the node holding it, each node keeps a liveness key whose TTL its
heartbeat refreshes, and a starting node removes what dead nodes left behind.

Against the session Redis (no mock). Expiry is not waited for: a liveness key that has expired
is a missing key, so the tests delete it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio

from core.sessions import TTL, SessionRegistry
from core.storage import keys

Run = Callable[[Awaitable[Any]], Any]


def test_heartbeat_keeps_the_node_alive_with_a_ttl(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """start() registers the node with a liveness key that expires within TTL seconds unless
    the heartbeat refreshes it; a session is recorded with the node id."""

    async def scenario() -> None:
        node = SessionRegistry(redis_client, "node-a")
        await node.start()
        assert await redis_client.smembers(keys.nodes()) == {b"node-a"}
        ttl = await redis_client.ttl(keys.node_alive("node-a"))
        assert 0 < ttl <= TTL
        # A heartbeat after the key had almost run out gives it the full TTL again.
        await redis_client.expire(keys.node_alive("node-a"), 1)
        await node.heartbeat()
        assert await redis_client.ttl(keys.node_alive("node-a")) > 1
        await node.add("alice@localhost", "phone")
        assert await redis_client.hgetall(keys.session("alice@localhost")) == {b"phone": b"node-a"}
        assert await node.nodes_of("alice@localhost") == {"phone": "node-a"}

    run_async(scenario())


def test_start_removes_only_the_sessions_of_dead_nodes(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """A node whose liveness key expired (it crashed) loses its session records when another
    node starts; a live node keeps its own, even for the same account."""

    async def scenario() -> None:
        dead = SessionRegistry(redis_client, "node-dead")
        live = SessionRegistry(redis_client, "node-live")
        await dead.start()
        await live.start()
        await dead.add("alice@localhost", "phone")
        await dead.add("bob@localhost", "desk")
        await live.add("alice@localhost", "laptop")
        await redis_client.delete(keys.node_alive("node-dead"))

        await SessionRegistry(redis_client, "node-new").start()

        assert await live.nodes_of("alice@localhost") == {"laptop": "node-live"}
        assert await live.nodes_of("bob@localhost") == {}
        assert await redis_client.smembers(keys.nodes()) == {b"node-live", b"node-new"}
        assert not await redis_client.exists(keys.node_sessions("node-dead"))

    run_async(scenario())


def test_session_taken_over_by_another_node_is_kept(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """Cleaning after a dead node removes a full JID only while that node still owns it: a
    session of the same full JID bound since on another node stays."""

    async def scenario() -> None:
        dead = SessionRegistry(redis_client, "node-dead")
        other = SessionRegistry(redis_client, "node-other")
        await dead.start()
        await other.start()
        await dead.add("carol@localhost", "phone")
        await other.add("carol@localhost", "phone")  # the client reconnected elsewhere
        await redis_client.delete(keys.node_alive("node-dead"))

        await SessionRegistry(redis_client, "node-new").start()

        assert await other.nodes_of("carol@localhost") == {"phone": "node-other"}

    run_async(scenario())


def test_restart_and_stop_clear_the_nodes_own_records(
    redis_client: redis.asyncio.Redis, run_async: Run
) -> None:
    """A node restarting under the same id drops the records of its previous run (its sessions
    died with it), and stop() removes the node and its sessions altogether."""

    async def scenario() -> None:
        first_run = SessionRegistry(redis_client, "node-a")
        await first_run.start()
        await first_run.add("dave@localhost", "phone")

        second_run = SessionRegistry(redis_client, "node-a")
        await second_run.start()
        assert await second_run.nodes_of("dave@localhost") == {}
        assert await redis_client.exists(keys.node_alive("node-a"))

        await second_run.add("dave@localhost", "tablet")
        await second_run.stop()
        assert await second_run.nodes_of("dave@localhost") == {}
        assert await redis_client.smembers(keys.nodes()) == set()
        assert not await redis_client.exists(keys.node_alive("node-a"))

    run_async(scenario())

"""Live sessions in Redis: which node holds which full JID (DESIGN "Redis: the shared state").

Each node refreshes ``node_alive(node)`` with a TTL; a node that stops refreshing is dead, and
its entries are removed by the next node that starts (or by itself when it restarts).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from core.storage import keys
from core.storage.batch import Batch

log = logging.getLogger(__name__)

HEARTBEAT = 10.0  # seconds between refreshes
TTL = 30  # seconds a node's liveness lasts without a refresh


class SessionRegistry:
    """Registers this node's bound sessions and cleans up after dead nodes."""

    def __init__(self, redis: aioredis.Redis, node_id: str) -> None:
        self.redis = redis
        self.node_id = node_id

    async def start(self) -> None:
        """Clean entries left by this node's last run and by dead nodes; mark this node alive."""
        nodes = await self.redis.smembers(keys.nodes())
        for raw in nodes:
            node = raw.decode()
            if node == self.node_id or not await self.redis.exists(keys.node_alive(node)):
                await self._forget_node(node)
        await self.heartbeat()

    async def heartbeat(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(keys.nodes(), self.node_id)
        pipe.set(keys.node_alive(self.node_id), b"1", ex=TTL)
        await pipe.execute()

    async def add(self, bare: str, resource: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self.queue_add(pipe, bare, resource)
        await pipe.execute()

    def queue_add(self, pipe: Pipeline, bare: str, resource: str) -> None:
        """Queue the writes of ``add`` on a pipeline (``core.storage.batch``)."""
        pipe.hset(keys.session(bare), resource, self.node_id)
        pipe.sadd(keys.node_sessions(self.node_id), f"{bare}/{resource}")

    async def remove(self, bare: str, resource: str) -> None:
        def queue(pipe: Pipeline) -> None:
            pipe.hdel(keys.session(bare), resource)
            pipe.srem(keys.node_sessions(self.node_id), f"{bare}/{resource}")

        # Batched: under a burst of closing sessions, their removals share one pipeline.
        batch = Batch(self.redis)
        batch.add(queue)
        await batch.run()

    async def nodes_of(self, bare: str) -> dict[str, str]:
        """resource → node id for every registered session of ``bare``."""
        raw = await self.redis.hgetall(keys.session(bare))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def stop(self) -> None:
        await self._forget_node(self.node_id)

    async def _forget_node(self, node: str) -> None:
        fulls = await self.redis.smembers(keys.node_sessions(node))
        for raw in fulls:
            bare, _, resource = raw.decode().partition("/")
            owner = await self.redis.hget(keys.session(bare), resource)
            if owner is not None and owner.decode() == node:
                await self.redis.hdel(keys.session(bare), resource)
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(keys.node_sessions(node), keys.node_alive(node))
        pipe.srem(keys.nodes(), node)
        await pipe.execute()
        if fulls:
            log.info("removed %d stale session entries of node %s", len(fulls), node)

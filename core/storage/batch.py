"""Several stores' commands in one Redis round trip, and several batches in one pipeline.

A login needs data from several stores at once: the account's credentials and failure counts,
then the session registry, the roster, the privacy lists, the vCard photo hash. Each store
knows its own keys and how to read its replies; a ``Batch`` lets each of them queue commands
and get back only its own replies, so that one step of a login costs one round trip instead of
one per store.

Batches started in the same turn of the event loop also share one pipeline: under a burst of
logins, fifty logins' reads go to Redis as one MULTI/EXEC. What a pipeline costs in the client
(checking out a connection, the write, reading the replies) is then paid once per turn, not
once per login, which is where a busy node's CPU went. At most two pipelines are out at once:
what comes meanwhile waits for one of them and goes with the rest, so the busier the node,
the larger and fewer its pipelines.

Every pipeline is one MULTI/EXEC transaction: each store sees its keys as of one instant, as
its own ``load`` (also a transaction) would. A command that fails fails only the batch that
queued it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

import redis.asyncio
from redis.asyncio.client import Pipeline

Queue = Callable[[Pipeline], None]
Done = Callable[[list[Any]], None]

# Batches sent in one pipeline at most; more wait for the next turn.
MAX_BATCHES_PER_PIPELINE = 256
# Pipelines out at once; batches started meanwhile wait and go together when one returns.
# Under load this makes pipelines larger (fewer, so less client CPU per batch); when idle a
# batch goes at once.
MAX_PIPELINES_IN_FLIGHT = 2


class Part:
    """One reader's share of a batch: after ``Batch.run``, ``replies`` holds the replies to
    the commands its ``queue`` added, in order."""

    __slots__ = ("done", "queue", "replies")

    def __init__(self, queue: Queue, done: Done | None) -> None:
        self.queue = queue
        self.done = done
        self.replies: list[Any] = []


class Batch:
    """Commands queued by several readers, sent together; each reader gets the replies to
    the commands its ``queue`` added, in order: in its ``done`` callback, or from the
    ``Part`` that ``add`` returns."""

    def __init__(self, redis: redis.asyncio.Redis) -> None:
        self._redis = redis
        self._parts: list[Part] = []
        self._keys: dict[object, Part] = {}

    def add(self, queue: Queue, done: Done | None = None, *, key: object = None) -> Part:
        """Queue commands (``queue(pipe)``); ``done(replies)`` runs once they are answered.
        A second ``add`` with the same ``key`` (other than None) queues nothing and returns
        the first one's part."""
        if key is not None:
            found = self._keys.get(key)
            if found is not None:
                return found
        part = Part(queue, done)
        if key is not None:
            self._keys[key] = part
        self._parts.append(part)
        return part

    def __len__(self) -> int:
        return len(self._parts)

    async def run(self) -> None:
        """Send everything queued (nothing when nothing was) and hand out the replies; raises
        the first error among this batch's replies, or the pipeline's own error."""
        if not self._parts:
            return
        await _sender_of(self._redis).send(self)

    def queue_on(self, pipe: Pipeline) -> list[tuple[int, int, Part]]:
        """Put the commands on ``pipe``; (start, end, part) of each part's replies."""
        spans = []
        for part in self._parts:
            start = len(pipe)
            part.queue(pipe)
            spans.append((start, len(pipe), part))
        return spans


class _Sender:
    """Sends the batches of one turn of the event loop as one pipeline."""

    def __init__(self, redis: redis.asyncio.Redis) -> None:
        self._redis = redis
        self._waiting: list[tuple[Batch, asyncio.Future[None]]] = []
        self._scheduled = False
        self._running: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def send(self, batch: Batch) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A client used from a new loop (the old one stopped): what was left is gone.
            self._loop, self._waiting, self._scheduled = loop, [], False
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((batch, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        while self._waiting and len(self._running) < MAX_PIPELINES_IN_FLIGHT:
            chunk = self._waiting[:MAX_BATCHES_PER_PIPELINE]
            del self._waiting[:MAX_BATCHES_PER_PIPELINE]
            task = asyncio.ensure_future(self._execute(chunk))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[None]) -> None:
        self._running.discard(task)
        # What arrived while the pipelines were out goes now, together.
        if self._waiting and not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    async def _execute(self, chunk: list[tuple[Batch, asyncio.Future[None]]]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        spans = [batch.queue_on(pipe) for batch, _ in chunk]
        try:
            async with pipe:
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, future in chunk:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), parts in zip(chunk, spans, strict=True):
            if future.done():
                continue  # its caller went away (cancelled)
            try:
                for start, end, part in parts:
                    part.replies = mine = replies[start:end]
                    for reply in mine:
                        if isinstance(reply, Exception):
                            raise reply
                    if part.done is not None:
                        part.done(mine)
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)


_senders: weakref.WeakKeyDictionary[redis.asyncio.Redis, _Sender] = weakref.WeakKeyDictionary()


def _sender_of(client: redis.asyncio.Redis) -> _Sender:
    sender = _senders.get(client)
    if sender is None:
        sender = _senders[client] = _Sender(client)
    return sender

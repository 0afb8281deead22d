"""core.storage.batch against a real Redis: batches of one turn share one pipeline, each
reader gets its own replies, and a failing command fails only the batch that queued it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio

from core.runtime.redis import connect
from core.storage.batch import Batch

Run = Callable[[Awaitable[Any]], Any]


def count_pipelines(client: Any) -> list[Any]:
    """The pipelines ``client`` makes from now on, as a list that grows."""
    made: list[Any] = []
    pipeline = client.pipeline

    def counted(*args: Any, **kwargs: Any) -> Any:
        made.append(pipeline(*args, **kwargs))
        return made[-1]

    client.pipeline = counted
    return made


def test_each_reader_gets_its_own_replies(redis_url: str, run_async: Run) -> None:
    """Two readers on one batch: each done() receives the replies to its own commands."""

    async def scenario() -> tuple[list[Any], list[Any]]:
        client = connect(redis_url)
        await client.set(b"a", b"1")
        await client.hset(b"h", mapping={b"x": b"2", b"y": b"3"})
        got: dict[str, list[Any]] = {}
        batch = Batch(client)
        batch.add(lambda p: p.get(b"a"), lambda r: got.__setitem__("first", r))
        batch.add(
            lambda p: (p.hget(b"h", b"x"), p.hget(b"h", b"y")),
            lambda r: got.__setitem__("second", r),
        )
        await batch.run()
        await client.aclose()
        return got["first"], got["second"]

    assert run_async(scenario()) == ([b"1"], [b"2", b"3"])


def test_same_key_is_queued_once(redis_url: str, run_async: Run) -> None:
    """A second add() with the same key is ignored: a load asked twice is sent once."""

    async def scenario() -> list[list[Any]]:
        client = connect(redis_url)
        calls: list[list[Any]] = []
        batch = Batch(client)
        for _ in range(2):
            batch.add(lambda p: p.incr(b"n"), calls.append, key=("n",))
        await batch.run()
        await client.aclose()
        return calls

    assert run_async(scenario()) == [[1]]


def test_batches_of_one_turn_share_one_pipeline(redis_url: str, run_async: Run) -> None:
    """Fifty batches started together reach Redis as one pipeline, and every batch sees its
    own value."""

    async def scenario() -> tuple[int, list[Any]]:
        client = connect(redis_url)
        made = count_pipelines(client)
        results: list[Any] = [None] * 50

        async def one(i: int) -> None:
            batch = Batch(client)
            batch.add(lambda p: p.set(f"k{i}", i), None)
            batch.add(lambda p: p.get(f"k{i}"), lambda r: results.__setitem__(i, r[0]))
            await batch.run()

        await asyncio.gather(*(one(i) for i in range(50)))
        await client.aclose()
        return len(made), results

    pipelines, results = run_async(scenario())
    assert pipelines == 1
    assert results == [str(i).encode() for i in range(50)]


def test_batches_wait_while_pipelines_are_out(redis_url: str, run_async: Run) -> None:
    """Batches started on twenty successive turns go in fewer pipelines than turns: while
    MAX_PIPELINES_IN_FLIGHT are out, new batches wait and go together; all get their replies."""

    async def scenario() -> tuple[int, list[Any]]:
        client = connect(redis_url)
        made = count_pipelines(client)
        results: list[Any] = [None] * 100

        async def one(i: int) -> None:
            batch = Batch(client)
            batch.add(lambda p: p.incr(f"n{i}"), lambda r: results.__setitem__(i, r[0]))
            await batch.run()

        tasks = []
        for turn in range(20):
            tasks += [asyncio.ensure_future(one(turn * 5 + k)) for k in range(5)]
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        await client.aclose()
        return len(made), results

    pipelines, results = run_async(scenario())
    assert results == [1] * 100
    assert pipelines < 20


def test_a_failing_command_fails_only_its_batch(redis_url: str, run_async: Run) -> None:
    """A command that errors (WRONGTYPE) raises in its own batch; a batch sent in the same
    pipeline still gets its replies."""

    async def scenario() -> tuple[str, Any]:
        client = connect(redis_url)
        await client.set(b"str", b"x")
        got: dict[str, Any] = {}
        bad, good = Batch(client), Batch(client)
        bad.add(lambda p: p.hgetall(b"str"), lambda r: got.__setitem__("bad", r))
        good.add(lambda p: p.get(b"str"), lambda r: got.__setitem__("good", r[0]))
        outcome = await asyncio.gather(bad.run(), good.run(), return_exceptions=True)
        await client.aclose()
        assert "bad" not in got
        return type(outcome[0]).__name__, got["good"]

    error, good = run_async(scenario())
    assert error == "ResponseError"
    assert good == b"x"


def test_an_empty_batch_sends_nothing(redis_url: str, run_async: Run) -> None:
    """run() on a batch with nothing queued returns without a round trip."""

    async def scenario() -> int:
        client = connect(redis_url)
        admin = redis.asyncio.Redis.from_url(redis_url)
        await admin.config_resetstat()
        await Batch(client).run()
        stats = await admin.info("commandstats")
        await client.aclose()
        await admin.aclose()
        return len([k for k in stats if k not in ("cmdstat_config", "cmdstat_info")])

    assert run_async(scenario()) == 0


def test_connections_do_not_name_the_client(redis_url: str, run_async: Run) -> None:
    """connect() turns off CLIENT SETINFO (costly per new connection): a new connection
    sends the two CLIENT SETINFO commands of redis-py's default no more."""
    import redis.asyncio

    async def client_calls(make: Callable[[str], Any]) -> int:
        admin = redis.asyncio.Redis.from_url(redis_url, driver_info=None)
        await admin.config_resetstat()
        client = make(redis_url)
        await client.ping()
        stats = await admin.info("commandstats")
        await client.aclose()
        await admin.aclose()
        return int(stats.get("cmdstat_client", {}).get("calls", 0))

    ours = run_async(client_calls(connect))
    default = run_async(client_calls(redis.asyncio.Redis.from_url))
    # redis-py's default sends CLIENT SETINFO twice (library name and version).
    assert default - ours == 2, (default, ours)

"""Measuring a run: CPU of the processes involved, and counting what arrives on a stream.

The counters run for every chunk a client receives, so they use ``bytes.count``/``find`` only:
a marker cut in two by a chunk boundary is found in the seam between the previous chunk's
tail and the new chunk's head (``seam_count``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import proc
from bench.client import Connection

MESSAGE_END = b"</message>"
PRESENCE_START = b"<presence"
UNAVAILABLE = (b"type='unavailable'", b'type="unavailable"')
ERROR_MARKS = (b"type='error'", b'type="error"')


@dataclass
class Meter:
    """CPU seconds of the server, its helpers and the generator over one interval. With
    ``names`` (pid -> name, e.g. core, muc, redis) the result also splits the CPU by process."""

    server: list[int]
    aux: list[int]
    names: dict[int, str] = field(default_factory=dict)
    started: float = 0.0
    cpu0: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    per0: dict[int, float] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)

    def _now(self) -> tuple[float, float, float, float]:
        return (
            proc.threads_cpu(self.server),
            proc.threads_cpu(self.aux),
            proc.own_cpu_seconds(),
            proc.machine_busy_seconds(),
        )

    def _per_process(self) -> dict[int, float]:
        return {pid: proc.threads_cpu([pid]) for pid in self.names}

    def start(self) -> None:
        self.per0 = self._per_process()
        self.cpu0 = self._now()
        self.started = time.monotonic()

    def stop(self, wall: float | None = None) -> dict[str, Any]:
        """Close the interval; ``wall`` overrides its length (when CPU was read later)."""
        cpu1 = self._now()
        per1 = self._per_process()
        elapsed = wall if wall is not None else time.monotonic() - self.started
        server, aux, gen, busy = (b - a for a, b in zip(self.cpu0, cpu1, strict=True))
        self.result = {
            "wall_s": round(elapsed, 3),
            "gen_cpu_s": round(gen, 2),
            "gen_cpu_pct": round(100 * gen / elapsed, 1) if elapsed > 0 else 0.0,
            # CPU that neither the server, its helpers nor the generator used: other work on
            # the machine, which competes with the run and makes its figures less reliable.
            "others_cpu_s": round(max(0.0, busy - server - aux - gen), 2),
        }
        if self.server:
            self.result["server_cpu_s"] = round(server, 2)
            self.result["server_cpu_pct"] = round(100 * server / elapsed, 1) if elapsed else 0.0
        if self.aux:
            self.result["aux_cpu_s"] = round(aux, 2)
        if self.names:
            self.result["cpu_s_by_process"] = {
                self.names[pid]: round(per1[pid] - self.per0.get(pid, 0.0), 2) for pid in per1
            }
        return self.result


async def settle(pids: list[int], *, quiet: float = 0.2, limit: float = 3.0) -> None:
    """Wait until the server stops using CPU (at most ``limit`` seconds), so that work it
    still does for the interval (closing sessions, flushing) is counted in it."""
    if not pids:
        return
    end = time.monotonic() + limit
    last = proc.threads_cpu(pids)
    while time.monotonic() < end:
        await asyncio.sleep(quiet)
        now = proc.threads_cpu(pids)
        if now - last < 0.02:
            return
        last = now


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, nearest rank; 0 when there are none."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def seam_count(tail: bytes, data: bytes, marker: bytes) -> int:
    """Occurrences of ``marker`` in ``data``, plus the one that may straddle the end of the
    previous chunk (whose last bytes are ``tail``) and the start of this one."""
    k = len(marker) - 1
    return data.count(marker) + (tail[-k:] + data[:k]).count(marker)


# Bytes kept from the end of each chunk: the longest marker minus one.
TAIL = 17


class MessageCounter:
    """Counts complete messages in a stream's chunks and answers each with a new one."""

    __slots__ = ("batch", "errors", "received", "reply", "running", "tail", "transport")

    def __init__(self, conn: Connection, reply: bytes, batch: bool) -> None:
        self.transport = conn.transport
        self.reply = reply
        self.batch = batch
        self.received = 0
        self.errors = 0
        self.tail = b""
        self.running = True

    def __call__(self, data: bytes) -> None:
        n = seam_count(self.tail, data, MESSAGE_END)
        self.tail = data[-9:] if len(data) >= 9 else (self.tail + data)[-9:]
        if b"error" in data:
            self.errors += data.count(ERROR_MARKS[0]) + data.count(ERROR_MARKS[1])
        if n:
            self.received += n
            if self.running:
                write = self.transport.write  # type: ignore[union-attr]
                if self.batch:
                    write(self.reply * n)
                else:
                    # One write per message: each leaves in its own segment (asyncio sets
                    # TCP_NODELAY), as from a client that sends one message at a time.
                    for _ in range(n):
                        write(self.reply)


class Stamps:
    """Reads the send times out of received message bodies (``<body>t<ns></body>``)."""

    __slots__ = ("buf", "errors", "latencies", "since")

    def __init__(self, latencies: list[int], since: list[int]) -> None:
        self.buf = b""
        self.latencies = latencies
        self.since = since  # [ns]: sends before this are warm-up and not recorded
        self.errors = 0

    def __call__(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buf = self.buf + data if self.buf else data
        pos = 0
        keep_from = max(0, len(buf) - 6)
        since = self.since[0]
        while True:
            i = buf.find(b"<body>t", pos)
            if i < 0:
                break
            j = buf.find(b"</body>", i)
            if j < 0:
                keep_from = i
                break
            sent = int(buf[i + 7 : j])
            if sent >= since:
                self.latencies.append(now - sent)
            pos = j + 7
            keep_from = pos
        if b"error" in data:
            self.errors += data.count(ERROR_MARKS[0]) + data.count(ERROR_MARKS[1])
        self.buf = buf[keep_from:]


class PresenceCounter:
    """Counts presence stanzas, and among them those that are not ``unavailable``."""

    __slots__ = ("tail", "total")

    def __init__(self, total: list[int]) -> None:
        self.tail = b""
        self.total = total  # [all stanzas, available ones], shared by all streams

    def __call__(self, data: bytes) -> None:
        tail = self.tail
        n = seam_count(tail, data, PRESENCE_START)
        gone = seam_count(tail, data, UNAVAILABLE[0]) + seam_count(tail, data, UNAVAILABLE[1])
        self.tail = data[-TAIL:] if len(data) >= TAIL else (tail + data)[-TAIL:]
        self.total[0] += n
        self.total[1] += n - gone


class GroupchatCounter:
    """Counts the groupchat messages a room delivers to one occupant (every ``</message>``)
    and, for a sender, its own messages coming back: XEP-0045 §7.4 reflects each message to
    its sender too, which marks it done. Each one done is answered with a new one, so the
    sender keeps a constant window of messages in flight.

    ``mine`` is a marker found only in this occupant's own messages (the start of their
    body); empty for an occupant that only listens."""

    __slots__ = (
        "errors",
        "mine",
        "received",
        "reflected",
        "reply",
        "running",
        "sent",
        "tail",
        "transport",
    )

    def __init__(self, conn: Connection, reply: bytes, mine: bytes) -> None:
        if len(mine) > TAIL + 1:
            raise ValueError("the marker is longer than the kept tail can join")
        self.transport = conn.transport
        self.reply = reply
        self.mine = mine
        self.received = 0
        self.reflected = 0
        self.sent = 0
        self.errors = 0
        self.tail = b""
        self.running = True

    def send(self, n: int) -> None:
        """Send ``n`` messages, one write each (each leaves in its own segment, as from a
        client that sends one message at a time)."""
        write = self.transport.write  # type: ignore[union-attr]
        for _ in range(n):
            write(self.reply)
        self.sent += n

    def __call__(self, data: bytes) -> None:
        tail = self.tail
        n = seam_count(tail, data, MESSAGE_END)
        own = seam_count(tail, data, self.mine) if self.mine else 0
        self.tail = data[-TAIL:] if len(data) >= TAIL else (tail + data)[-TAIL:]
        # Errors are rare: look for them, across the seam too, only when the word is there.
        if b"error" in data or b"error" in tail[-TAIL:] + data[:TAIL]:
            self.errors += seam_count(tail, data, ERROR_MARKS[0])
            self.errors += seam_count(tail, data, ERROR_MARKS[1])
        self.received += n
        if own:
            self.reflected += own
            if self.running:
                self.send(own)

"""How much the Twisted reactor costs per relayed message: asyncio (selector loop), asyncio on
uvloop, and epoll, measured on the same minimal relay.

    python -m bench.reactors [--pairs 250] [--window 2] [--duration 5]

The relay is what the core does around a message, without XMPP: read from one connection,
find the end of each message (``bytes.count``) and write it to the paired connection through
``transport.write``. The core itself needs the asyncio reactor (redis.asyncio runs on the
asyncio loop), so this tells whether another reactor would be worth a bridge to Redis at all.
Each reactor runs in its own process pinned to one CPU, the client on the other; the figure is
relayed messages per CPU-second of the relay process. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench import proc
from bench.servers import free_port

REACTORS = ("asyncio", "uvloop", "epoll")
MESSAGE = (
    b"<message to='u1@localhost' type='chat'><body>Hello! This chat message is a benchmark "
    b"payload of a typical length for a short line.</body></message>"
)


def serve(reactor_name: str, port: int) -> None:
    """Run the relay on ``reactor_name`` until killed. Each connection first sends its pair
    number and a newline; then bytes from one side of a pair go to the other."""
    if reactor_name == "epoll":
        from twisted.internet import epollreactor

        epollreactor.install()
    else:
        from bench.launch_core import install

        install(reactor_name)
    from twisted.internet import protocol, reactor

    waiting: dict[bytes, Any] = {}

    class Relay(protocol.Protocol):
        def connectionMade(self) -> None:
            self.peer: Any = None
            self.head = b""

        def dataReceived(self, data: bytes) -> None:
            if self.peer is not None:
                self.peer.transport.write(data)
                return
            self.head += data
            if b"\n" not in self.head:
                return
            key, _, rest = self.head.partition(b"\n")
            other = waiting.pop(key, None)
            if other is None:
                waiting[key] = self
            else:
                self.peer, other.peer = other, self
                self.transport.write(b"ok\n")
                other.transport.write(b"ok\n")
            if rest and self.peer is not None:
                self.peer.transport.write(rest)

    factory = protocol.Factory.forProtocol(Relay)
    reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


class _Client(asyncio.Protocol):
    def __init__(self, key: bytes, ready: asyncio.Future[None]) -> None:
        self.key = key
        self.ready = ready
        self.received = 0
        self.tail = b""
        self.running = True
        self.transport: Any = None
        self.started = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.key + b"\n")

    def data_received(self, data: bytes) -> None:
        if not self.started:
            if b"ok\n" in data:
                self.started = True
                if not self.ready.done():
                    self.ready.set_result(None)
                data = data.split(b"ok\n", 1)[1]
            else:
                return
        end = b"</message>"
        n = data.count(end) + (self.tail + data[:9]).count(end)
        self.tail = data[-9:]
        self.received += n
        if self.running:
            for _ in range(n):
                self.transport.write(MESSAGE)


async def drive(port: int, pairs: int, window: int, duration: float, pid: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    clients = []
    for i in range(pairs):
        for _side in range(2):
            ready = loop.create_future()
            _t, c = await loop.create_connection(
                lambda i=i, ready=ready: _Client(str(i).encode(), ready), "127.0.0.1", port
            )
            clients.append(c)
    await asyncio.wait_for(asyncio.gather(*(c.ready for c in clients)), 30)
    for c in clients:
        for _ in range(window):
            c.transport.write(MESSAGE)
    await asyncio.sleep(1.0)
    before = sum(c.received for c in clients)
    cpu0, t0 = proc.cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(duration)
    relayed = sum(c.received for c in clients) - before
    cpu, wall = proc.cpu_seconds(pid) - cpu0, time.monotonic() - t0
    for c in clients:
        c.running = False
        c.transport.close()
    return {
        "msgs_per_s": round(relayed / wall),
        "relay_cpu_pct": round(100 * cpu / wall, 1),
        "msgs_per_relay_cpu_s": round(relayed / cpu) if cpu else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reactors", description=__doc__.split("\n")[0])
    p.add_argument("--serve", choices=REACTORS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--reactors", default=",".join(REACTORS))
    p.add_argument("--pairs", type=int, default=250)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    if a.serve:
        serve(a.serve, a.port)
        return 0
    if not 0 < a.duration <= 60 or not 1 <= a.rounds <= 10:
        raise SystemExit("duration must be in (0, 60] and rounds in 1..10")
    proc.raise_fd_limit()
    two = (os.cpu_count() or 1) >= 2
    if two:
        proc.pin(0, {1})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for rnd in range(a.rounds):
        for name in a.reactors.split(","):
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "bench.reactors", "--serve", name, "--port", str(port)],
                cwd=root,
            )
            try:
                if two:
                    proc.pin(server.pid, {0})
                deadline = time.monotonic() + 10
                result: dict[str, Any] = {}
                while time.monotonic() < deadline:
                    try:
                        result = asyncio.run(drive(port, a.pairs, a.window, a.duration, server.pid))
                        break
                    except OSError:
                        time.sleep(0.1)
                print(json.dumps({"reactor": name, "round": rnd + 1, **result}), flush=True)
            finally:
                server.terminate()
                server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The load generator: scenarios against one XMPP server, each printing one JSON line.

    python -m bench.loadgen SCENARIO --port 5222 [--server-pid PID] [options]

Scenarios (RFC 6120 negotiation, RFC 6121 messages and presence):

``login``     N full logins (connect, optional STARTTLS, SASL, restart, bind, close) at
              concurrency C → logins/s and p50/p99 latency of one login.
``idle``      N sessions bound and available, held → server RSS per session.
``messages``  P pairs exchange chat messages, each client keeping a window of W messages in
              flight, for T seconds → delivered messages/s.
``latency``   P pairs, messages sent at a fixed total rate R for T seconds, each carrying its
              send time → p50/p99 end-to-end latency.
``presence``  U users whose rosters hold K contacts each (provisioned beforehand, mutual
              subscriptions) fetch their roster and send initial presence → presence
              stanzas delivered/s (each user gets K contacts' presence plus its own).
``muc``       R rooms of K occupants (XEP-0045); S senders per room keep W groupchat
              messages in flight for T seconds → fan-out deliveries/s (bench/scenario_muc.py).

With ``--server-pid`` (and ``--aux-pid`` for helpers such as Redis) the line also carries the
CPU seconds the server spent during the measured interval, next to the generator's own, so
that it says which side was the bottleneck; a server of several processes gives one
``--server-pid NAME=PID`` each, and the line names them and splits the CPU by process.
Every loop is bounded in count and in time, and the generator only connects where it is
told (the benchmark uses loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench import proc
from bench.client import (
    MECHANISMS,
    PRESENCE,
    ROSTER_GET,
    Connection,
    NegotiationError,
    client_tls_context,
    connect,
)
from bench.measure import (
    MessageCounter,
    Meter,
    PresenceCounter,
    Stamps,
    percentile,
    settle,
)

BODY = "Hello! This chat message is a benchmark payload of a typical length for a short line."


# Logging in ------------------------------------------------------------------------------


@dataclass
class Target:
    """Where and as whom the generator logs in."""

    host: str
    port: int
    domain: str
    password: str
    mechanism: str
    tls: bool
    timeout: float

    def user(self, prefix: str, index: int) -> str:
        return f"{prefix}{index}"


async def login_one(t: Target, username: str, resource: str) -> Connection:
    """Connect and negotiate up to a bound resource."""
    conn = await connect(t.host, t.port, t.timeout)
    try:
        await conn.login(
            domain=t.domain,
            username=username,
            password=t.password,
            resource=resource,
            mechanism=t.mechanism,
            tls=client_tls_context() if t.tls else None,
            timeout=t.timeout,
        )
    except BaseException:
        conn.close()
        raise
    return conn


async def login_many(
    t: Target,
    usernames: list[str],
    concurrency: int,
    *,
    resource: str = "bench",
    keep: bool = True,
    errors: list[str] | None = None,
) -> tuple[list[Connection | None], list[float]]:
    """Log ``usernames`` in with at most ``concurrency`` negotiations at once.

    Returns the connections (None where a login failed; all None when ``keep`` is false,
    the streams then being closed right after binding) and each login's latency in seconds.
    """
    conns: list[Connection | None] = [None] * len(usernames)
    latencies: list[float] = []
    queue = iter(range(len(usernames)))

    async def worker() -> None:
        for i in queue:
            t0 = time.perf_counter()
            try:
                conn = await login_one(t, usernames[i], resource)
            except (OSError, NegotiationError, TimeoutError) as exc:
                if errors is not None:
                    errors.append(f"{usernames[i]}: {exc}"[:300])
                continue
            latencies.append(time.perf_counter() - t0)
            if keep:
                conns[i] = conn
            else:
                conn.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(usernames))))))
    return conns, latencies


async def barrier(conns: list[Connection], domain: str, timeout: float) -> None:
    """Ping the server on every stream: afterwards all earlier stanzas have been processed."""
    await asyncio.gather(*(c.ping(domain, timeout) for c in conns))


async def become_available(conns: list[Connection], t: Target, concurrency: int) -> None:
    """Initial presence (RFC 6121 §4.2) from every stream, ``concurrency`` streams at a time,
    each group confirmed by a ping: setting up a scenario must not be a presence storm (the
    presence scenario is the one that measures that)."""
    for i in range(0, len(conns), max(1, concurrency)):
        group = conns[i : i + max(1, concurrency)]
        for c in group:
            c.write(PRESENCE)
        await barrier(group, t.domain, t.timeout)


def close_all(conns: Sequence[Connection | None]) -> None:
    for c in conns:
        if c is not None:
            c.close()


def _alive(conns: list[Connection | None]) -> list[Connection]:
    return [c for c in conns if c is not None]


# Scenarios -------------------------------------------------------------------------------


async def scenario_login(a: argparse.Namespace, t: Target, meter: Meter) -> dict[str, Any]:
    span = a.pool - a.first
    names = [t.user(a.user_prefix, a.first + i % span) for i in range(a.n)]
    errors: list[str] = []
    meter.start()
    t0 = time.monotonic()
    _conns, lat = await login_many(t, names, a.concurrency, keep=False, errors=errors)
    wall = time.monotonic() - t0
    await settle(meter.server)
    m = meter.stop(wall)
    lat.sort()
    return {
        "logins": len(lat),
        "errors": len(errors),
        "first_errors": errors[:3],
        "logins_per_s": round(len(lat) / wall, 1) if wall else 0.0,
        "p50_ms": round(1000 * percentile(lat, 0.5), 2),
        "p99_ms": round(1000 * percentile(lat, 0.99), 2),
        **m,
    }


def idle_warmup(pool: int) -> int:
    """Sessions logged in before the baseline of the idle scenario."""
    return min(20, pool // 10)


async def scenario_idle(a: argparse.Namespace, t: Target, meter: Meter) -> dict[str, Any]:
    if not meter.server:
        raise SystemExit("idle needs --server-pid to read the server's memory")
    warm = idle_warmup(a.pool)
    names = [t.user(a.user_prefix, a.first + i) for i in range(warm + a.n)]
    errors: list[str] = []
    # A few sessions first, so one-time costs (code paths loaded, caches) fall before the
    # baseline rather than on the sessions measured.
    first, _ = await login_many(t, names[:warm], a.concurrency, errors=errors)
    first_ok = _alive(first)
    await become_available(first_ok, t, a.concurrency)
    await settle(meter.server + meter.aux)
    server = meter.server[0]
    rss0 = proc.rss_kib(server)
    aux0 = sum(proc.rss_kib(p) for p in meter.aux)
    meter.start()
    rest, _lat = await login_many(t, names[warm:], a.concurrency, errors=errors)
    rest_ok = _alive(rest)
    await become_available(rest_ok, t, a.concurrency)
    await settle(meter.server + meter.aux)
    m = meter.stop()
    rss1 = proc.rss_kib(server)
    aux1 = sum(proc.rss_kib(p) for p in meter.aux)
    held = len(rest_ok)
    out: dict[str, Any] = {
        "sessions": held,
        "errors": len(errors),
        "first_errors": errors[:3],
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "rss_per_session_kib": round((rss1 - rss0) / held, 2) if held else None,
        "logins_per_s": round(held / m["wall_s"], 1) if m["wall_s"] else 0.0,
        **m,
    }
    if meter.aux:
        out["aux_rss_per_session_kib"] = round((aux1 - aux0) / held, 2) if held else None
    close_all(first_ok + rest_ok)
    return out


async def _pairs(
    a: argparse.Namespace, t: Target, errors: list[str]
) -> tuple[list[Connection], list[bytes]]:
    """Log in 2P clients, make them available and pair client 2k with 2k+1; returns the
    connections and, per connection, the bare JID of its partner."""
    names = [t.user(a.user_prefix, a.first + i) for i in range(2 * a.pairs)]
    conns, _ = await login_many(t, names, a.concurrency, errors=errors)
    if any(c is None for c in conns):
        close_all(conns)
        raise SystemExit(f"login failed: {errors[:3]}")
    ok = _alive(conns)
    await become_available(ok, t, a.concurrency)
    partners = []
    for i in range(len(ok)):
        partner = names[i ^ 1]
        partners.append(f"{partner}@{t.domain}".encode())
    return ok, partners


def _message(to: bytes, body: str) -> bytes:
    return b"<message to='" + to + b"' type='chat'><body>" + body.encode() + b"</body></message>"


async def scenario_messages(a: argparse.Namespace, t: Target, meter: Meter) -> dict[str, Any]:
    errors: list[str] = []
    conns, partners = await _pairs(a, t, errors)
    counters = []
    for conn, partner in zip(conns, partners, strict=True):
        counter = MessageCounter(conn, _message(partner, BODY), a.batch)
        conn.on_data = counter
        counters.append(counter)
    server = meter.server[0] if meter.server else None
    for counter in counters:
        for _ in range(a.window):
            counter.transport.write(counter.reply)  # type: ignore[union-attr]
    await asyncio.sleep(a.warmup)
    rss0 = proc.rss_kib(server) if server else None
    before = sum(c.received for c in counters)
    meter.start()
    await asyncio.sleep(a.duration)
    delivered = sum(c.received for c in counters) - before
    m = meter.stop()
    rss1 = proc.rss_kib(server) if server else None
    for c in counters:
        c.running = False
    close_all(conns)
    out: dict[str, Any] = {
        "pairs": a.pairs,
        "window": a.window,
        "delivered": delivered,
        "msgs_per_s": round(delivered / m["wall_s"], 1),
        "errors": sum(c.errors for c in counters),
        **m,
    }
    if m.get("server_cpu_s"):
        out["msgs_per_server_cpu_s"] = round(delivered / m["server_cpu_s"], 1)
    if rss0 is not None:
        out["rss_start_kib"], out["rss_end_kib"] = rss0, rss1
    return out


async def scenario_latency(a: argparse.Namespace, t: Target, meter: Meter) -> dict[str, Any]:
    errors: list[str] = []
    conns, partners = await _pairs(a, t, errors)
    latencies: list[int] = []
    since = [1 << 62]
    stamps = []
    for conn in conns:
        s = Stamps(latencies, since)
        conn.on_data = s
        stamps.append(s)
    heads = [b"<message to='" + p + b"' type='chat'><body>t" for p in partners]
    tail = b"</body></message>"
    interval = 1.0 / a.rate
    total = int(a.rate * (a.warmup + a.duration))
    start = time.monotonic()
    measure_at = start + a.warmup
    server = meter.server[0] if meter.server else None
    rss0 = None
    sent = measured_sent = late = 0
    i = 0
    while i < total:
        now = time.monotonic()
        if since[0] > 1 << 61 and now >= measure_at:
            since[0] = time.monotonic_ns()
            rss0 = proc.rss_kib(server) if server else None
            meter.start()
            measured_sent = 0
        due = start + i * interval
        # Send everything that is due; a message more than 5 ms late means the generator
        # fell behind its schedule and is counted as such (the latency is measured from
        # the actual send, so such lateness is not hidden in the figures, only reported).
        while i < total and due <= now:
            if now - due > 0.005:
                late += 1
            k = i % len(conns)
            conns[k].write(heads[k] + str(time.monotonic_ns()).encode() + tail)
            i += 1
            sent += 1
            measured_sent += 1
            due = start + i * interval
        if i < total:
            # Event loop timers have millisecond resolution (epoll, libuv): a shorter sleep
            # would spin. Messages that fall due meanwhile leave together at the next tick.
            await asyncio.sleep(max(0.001, due - time.monotonic()))
    m = meter.stop()
    # Let the last messages arrive (bounded).
    deadline = time.monotonic() + 2.0
    while len(latencies) < measured_sent and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    rss1 = proc.rss_kib(server) if server else None
    close_all(conns)
    lat = sorted(x / 1e6 for x in latencies)
    out: dict[str, Any] = {
        "pairs": a.pairs,
        "rate": a.rate,
        "sent": measured_sent,
        "received": len(lat),
        "late_sends": late,
        "errors": sum(s.errors for s in stamps),
        "p50_ms": round(percentile(lat, 0.5), 3),
        "p90_ms": round(percentile(lat, 0.9), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "p999_ms": round(percentile(lat, 0.999), 3),
        "max_ms": round(lat[-1], 3) if lat else 0.0,
        **m,
    }
    if rss0 is not None:
        out["rss_start_kib"], out["rss_end_kib"] = rss0, rss1
    return out


async def scenario_presence(a: argparse.Namespace, t: Target, meter: Meter) -> dict[str, Any]:
    names = [t.user(a.user_prefix, a.first + i) for i in range(a.n)]
    errors: list[str] = []
    conns, _ = await login_many(t, names, a.concurrency, errors=errors)
    ok = _alive(conns)
    total = [0, 0]
    counters = []
    for conn in ok:
        c = PresenceCounter(total)
        conn.on_data = c
        counters.append(c)
    # Each user receives the presence of its contacts (they are all online) and its own
    # (RFC 6121 §4.2.2, §4.2.3: broadcast to contacts and to the user's own resources;
    # contacts that came online earlier answer the probe through their server).
    expected = len(ok) * (a.contacts + 1)
    meter.start()
    t0 = time.monotonic()
    for conn in ok:
        conn.write(ROSTER_GET + PRESENCE)
    deadline = t0 + a.duration
    last_change, seen = t0, 0
    while total[1] < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        if total[0] != seen:
            seen, last_change = total[0], time.monotonic()
        elif time.monotonic() - last_change > 3.0:
            break  # nothing more is coming
    wall = (last_change if total[1] < expected else time.monotonic()) - t0
    await settle(meter.server)
    m = meter.stop(wall)
    close_all(ok)
    return {
        "users": len(ok),
        "contacts": a.contacts,
        "errors": len(errors),
        "first_errors": errors[:3],
        "expected_available": expected,
        "available": total[1],
        "delivered": total[0],
        "complete": total[1] >= expected,
        "presence_per_s": round(total[0] / wall, 1) if wall > 0 else 0.0,
        # The useful work: every user seeing every contact online, whatever else was sent
        # (a server may also answer probes of offline contacts with unavailable presence).
        "available_per_s": round(min(total[1], expected) / wall, 1) if wall > 0 else 0.0,
        **m,
    }


async def scenario_muc(a: argparse.Namespace, t: Target, meter: Meter) -> dict[str, Any]:
    # Imported here: the scenario's module builds on this one's login helpers.
    from bench.scenario_muc import run_muc

    return await run_muc(a, t, meter)


SCENARIOS: dict[str, Callable[..., Any]] = {
    "login": scenario_login,
    "idle": scenario_idle,
    "messages": scenario_messages,
    "latency": scenario_latency,
    "presence": scenario_presence,
    "muc": scenario_muc,
}


def named_pid(text: str) -> tuple[str, int]:
    """``NAME=PID`` or ``PID`` (nameless) of a process to measure."""
    name, _, pid = text.rpartition("=")
    try:
        value = int(pid)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PID or NAME=PID, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    return name, value


# Command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5222)
    p.add_argument("--domain", default="localhost")
    p.add_argument("--password", default="bench-password")
    p.add_argument("--user-prefix", default="u", help="accounts are PREFIX0, PREFIX1, ...")
    p.add_argument("--first", type=int, default=0, help="index of the first account used")
    p.add_argument("--pool", type=int, default=1000, help="accounts PREFIX0..PREFIX<pool-1>")
    p.add_argument("--mech", choices=MECHANISMS, default="SCRAM-SHA-1")
    p.add_argument("--tls", action="store_true", help="STARTTLS before authenticating")
    p.add_argument("-n", "--n", type=int, default=1000, help="logins, sessions or users")
    p.add_argument("-c", "--concurrency", type=int, default=50, help="logins at once")
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--window", type=int, default=10, help="messages in flight per client")
    p.add_argument(
        "--batch", action="store_true", help="messages: answer n messages with one write"
    )
    p.add_argument("--rate", type=float, default=1000.0, help="latency: messages/s in total")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (bound)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--contacts", type=int, default=50, help="presence: roster size")
    p.add_argument("--rooms", type=int, default=10, help="muc: rooms")
    p.add_argument("--occupants", type=int, default=20, help="muc: occupants per room")
    p.add_argument(
        "--senders", type=int, default=0, help="muc: senders per room (0: every occupant)"
    )
    p.add_argument("--muc-domain", default="", help="muc: the service (conference.DOMAIN)")
    p.add_argument("--room-prefix", default="", help="muc: room names (random per run)")
    p.add_argument("--timeout", type=float, default=30.0, help="per negotiation step")
    p.add_argument(
        "--server-pid", type=named_pid, action="append", default=[], metavar="[NAME=]PID"
    )
    p.add_argument("--aux-pid", type=named_pid, action="append", default=[], metavar="[NAME=]PID")
    p.add_argument("--label", default="", help="copied into the output (server name)")
    p.add_argument("--cpu", type=int, action="append", default=[], help="pin to this CPU")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    return p


def check_args(a: argparse.Namespace) -> None:
    """Bounds that keep every run finite and within the provisioned accounts."""
    if a.host not in ("127.0.0.1", "::1", "localhost") and not a.host.startswith("127."):
        raise SystemExit("the generator only targets loopback addresses")
    needed = {
        "login": min(a.n, a.pool - a.first),
        "idle": idle_warmup(a.pool) + a.n,
        "messages": 2 * a.pairs,
        "latency": 2 * a.pairs,
        "presence": a.n,
        "muc": a.rooms * a.occupants,
    }[a.scenario]
    if a.first < 0 or a.first + needed > a.pool or needed < 1:
        raise SystemExit(
            f"{a.scenario} needs accounts {a.user_prefix}{a.first}.."
            f"{a.user_prefix}{a.first + needed - 1}; --pool is {a.pool}"
        )
    if not 0 < a.duration <= 3600 or a.warmup < 0 or a.rate <= 0 or a.window < 1:
        raise SystemExit("duration must be in (0, 3600], warmup >= 0, rate > 0, window >= 1")
    if a.scenario == "muc" and (a.rooms < 1 or a.occupants < 2 or a.senders < 0):
        raise SystemExit("muc needs rooms >= 1, occupants >= 2 and senders >= 0")


async def run(a: argparse.Namespace) -> dict[str, Any]:
    t = Target(a.host, a.port, a.domain, a.password, a.mech, a.tls, a.timeout)
    named = {pid: name for name, pid in a.server_pid + a.aux_pid if name}
    meter = Meter(
        server=[pid for _, pid in a.server_pid], aux=[pid for _, pid in a.aux_pid], names=named
    )
    body = await SCENARIOS[a.scenario](a, t, meter)
    head: dict[str, Any] = {"scenario": a.scenario, "server": a.label}
    if named:
        # Which processes the CPU figures count: server_cpu_s sums the first, aux_cpu_s
        # the second.
        head["server_processes"] = [name or str(pid) for name, pid in a.server_pid]
        head["aux_processes"] = [name or str(pid) for name, pid in a.aux_pid]
    if a.scenario in ("login", "idle", "presence"):
        head.update(n=a.n, concurrency=a.concurrency, tls=a.tls, mech=a.mech)
    return {**head, **body}


def event_loop(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The generator's event loop: uvloop when asked for or, with "auto", when installed
    (its C transports make each received chunk cheaper, which keeps the generator from
    being the bottleneck); else asyncio's own."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("uvloop is not installed: pip install uvloop") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", None


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    check_args(a)
    proc.raise_fd_limit()
    if a.cpu:
        proc.pin(0, set(a.cpu))
    loop_name, factory = event_loop(a.loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(run(a))
    result["gen_loop"] = loop_name
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

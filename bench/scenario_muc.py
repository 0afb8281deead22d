"""The ``muc`` scenario of the load generator: groupchat fan-out in multi-user chat rooms
(XEP-0045).

R rooms of K occupants each, at the server's MUC service (``conference.<domain>``). Every
occupant logs in (RFC 6120), sends initial presence (RFC 6121 §4.2) and enters its room
(XEP-0045 §7.2.1) asking for no discussion history (§7.2.15); it has entered once its own
presence with status 110 (§7.2.3) and the subject (§7.2.16) have arrived. The first occupant
of each room creates it (§10.1.1) and accepts the default configuration, which unlocks it
(an instant room, §10.1.2). A disco#info round trip to the room from every occupant then
makes sure the room has sent everything of the set-up before the measurement starts.

Then S senders per room each keep W groupchat messages in flight (§7.4): the room sends every
message to every occupant, the sender included, and the sender's own copy coming back marks
the message done and sends the next one. Every message delivered to every occupant is
counted → fan-out deliveries/s (and messages sent/s). When the measured interval ends the
senders stop and the generator waits (bounded) for the messages still in flight: by then
every message sent must have reached all K occupants of its room, which the output checks
(``lost``).

Bodies start with a marker of their sender (``k<index>``), which is how a sender finds its
own messages among the others with ``bytes.count``; no XML is parsed on the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from typing import Any

from bench.client import (
    Connection,
    NegotiationError,
    disco_info,
    groupchat_message,
    muc_instant_room,
    muc_join,
)
from bench.loadgen import BODY, Target, become_available, close_all, login_many
from bench.measure import GroupchatCounter, Meter, percentile

# The occupant's own presence (XEP-0045 §7.2.3: status 110), or the room's refusal (§7.2.5+).
SELF_OR_ERROR = (b"code='110'", b'code="110"', b"type='error'", b'type="error"')
ERROR_TYPE = (b"type='error'", b'type="error"')
RESULT_TYPE = (b"type='result'", b'type="result"')
# Seconds to wait, after the senders stop, for the messages still in flight.
DRAIN_LIMIT = 15.0


def room_names(prefix: str, rooms: int, service: str) -> list[str]:
    """The bare JIDs of the rooms (XEP-0045 §4.2: ``room@service``)."""
    return [f"{prefix}{r}@{service}" for r in range(rooms)]


def occupant_room(index: int, occupants: int) -> int:
    """The room of occupant ``index``: the first K occupants fill room 0, and so on."""
    return index // occupants


def marker(index: int) -> bytes:
    """What only occupant ``index``'s messages hold: the start of their body, after the
    ``>`` that ends the body's start tag whatever attributes a server writes on it."""
    return b">k%05d " % index


def body(index: int) -> str:
    return f"k{index:05d} {BODY}"


def is_sender(index: int, occupants: int, senders: int) -> bool:
    """The first ``senders`` occupants of each room send; 0 means all of them."""
    return senders <= 0 or index % occupants < senders


def default_prefix() -> str:
    """Room names of their own per run: rooms left over by an earlier run (with occupants
    that are gone) never take part in this one."""
    return f"bench{secrets.token_hex(3)}-"


async def enter_room(conn: Connection, room: str, nick: str, timeout: float) -> float:
    """Enter ``room`` as ``nick``; waits for the own presence (110) and the subject, which
    the room sends last (§7.2.16). Returns the seconds it took."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    conn.write(muc_join(room, nick))
    presence = await conn.expect(b"presence", deadline=deadline, containing=SELF_OR_ERROR)
    if any(e in presence for e in ERROR_TYPE):
        raise NegotiationError(f"{nick} could not enter {room}: {presence[:300]!r}")
    await conn.expect(b"message", deadline=deadline, containing=(b"<subject",))
    return time.perf_counter() - t0


async def room_request(conn: Connection, request: bytes, what: str, timeout: float) -> None:
    """Send an IQ and wait for its result (any other answer is an error)."""
    conn.write(request)
    reply = await conn.expect(b"iq", deadline=time.monotonic() + timeout)
    if not any(r in reply for r in RESULT_TYPE):
        raise NegotiationError(f"{what} failed: {reply[:300]!r}")


async def set_up_rooms(
    conns: list[Connection], nicks: list[str], rooms: list[str], a: argparse.Namespace
) -> list[float]:
    """Create the rooms (their first occupant enters and makes each an instant room), then
    have every other occupant enter, at most ``a.concurrency`` at a time. Returns the
    latency of every entry."""
    gate = asyncio.Semaphore(max(1, a.concurrency))
    latencies: list[float] = []

    async def enter(i: int) -> None:
        room = rooms[occupant_room(i, a.occupants)]
        async with gate:
            latencies.append(await enter_room(conns[i], room, nicks[i], a.timeout))
            if i % a.occupants == 0:
                await room_request(
                    conns[i], muc_instant_room(room), f"configuring {room}", a.timeout
                )

    await asyncio.gather(*(enter(i) for i in range(0, len(conns), a.occupants)))
    await asyncio.gather(*(enter(i) for i in range(len(conns)) if i % a.occupants))
    # Every occupant asks its room once: the answer comes after everything the room sent it
    # during the set-up (the presence of those who entered later, any status message).
    await asyncio.gather(
        *(
            room_request(
                c, disco_info(rooms[occupant_room(i, a.occupants)], "sync"), "sync", a.timeout
            )
            for i, c in enumerate(conns)
        )
    )
    return latencies


async def run_muc(a: argparse.Namespace, t: Target, meter: Meter) -> dict[str, Any]:
    service = a.muc_domain or f"conference.{t.domain}"
    rooms = room_names(a.room_prefix or default_prefix(), a.rooms, service)
    total = a.rooms * a.occupants
    names = [t.user(a.user_prefix, a.first + i) for i in range(total)]
    errors: list[str] = []
    conns_or_none, _ = await login_many(t, names, a.concurrency, errors=errors)
    if any(c is None for c in conns_or_none):
        close_all(conns_or_none)
        raise SystemExit(f"login failed: {errors[:3]}")
    conns = [c for c in conns_or_none if c is not None]
    await become_available(conns, t, a.concurrency)
    t0 = time.monotonic()
    try:
        joins = await set_up_rooms(conns, names, rooms, a)
    except (NegotiationError, TimeoutError) as exc:
        close_all(conns)
        raise SystemExit(f"entering the rooms failed: {exc}") from None
    join_wall = time.monotonic() - t0
    # Nothing is in flight now: the set-up ended with a round trip to the room on every
    # stream, and nobody sends until every counter is in place.
    counters = []
    for i, conn in enumerate(conns):
        room = rooms[occupant_room(i, a.occupants)]
        sends = is_sender(i, a.occupants, a.senders)
        counter = GroupchatCounter(
            conn, groupchat_message(room, body(i)), marker(i) if sends else b""
        )
        conn.buf.clear()
        conn.on_data = counter
        counters.append(counter)
    senders = [c for c in counters if c.mine]
    for c in senders:
        c.send(a.window)
    await asyncio.sleep(a.warmup)
    received0 = sum(c.received for c in counters)
    sent0 = sum(c.sent for c in counters)
    meter.start()
    await asyncio.sleep(a.duration)
    received1 = sum(c.received for c in counters)
    sent1 = sum(c.sent for c in counters)
    m = meter.stop()
    # The senders stop; what is in flight must still reach every occupant (bounded wait).
    for c in counters:
        c.running = False
    sent_all = sum(c.sent for c in counters)
    expected_all = sent_all * a.occupants
    deadline = time.monotonic() + DRAIN_LIMIT
    while sum(c.received for c in counters) < expected_all and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    received_all = sum(c.received for c in counters)
    close_all(conns)
    deliveries, sent = received1 - received0, sent1 - sent0
    joins.sort()
    out: dict[str, Any] = {
        "rooms": a.rooms,
        "occupants": a.occupants,
        "senders": len(senders),
        "window": a.window,
        "join_s": round(join_wall, 2),
        "join_p50_ms": round(1000 * percentile(joins, 0.5), 1),
        "join_p99_ms": round(1000 * percentile(joins, 0.99), 1),
        "sent": sent,
        "deliveries": deliveries,
        "msgs_per_s": round(sent / m["wall_s"], 1),
        "deliveries_per_s": round(deliveries / m["wall_s"], 1),
        # Within the interval, deliveries = sent * K up to the messages in flight at its
        # start and end: at most senders * window messages, each to K occupants.
        "tail_gap": sent * a.occupants - deliveries,
        "tail_bound": len(senders) * a.window * a.occupants,
        "sent_all": sent_all,
        "delivered_all": received_all,
        "lost": expected_all - received_all,
        "errors": sum(c.errors for c in counters),
        **m,
    }
    out["complete"] = out["lost"] == 0 and out["errors"] == 0
    if m.get("server_cpu_s"):
        out["deliveries_per_server_cpu_s"] = round(deliveries / m["server_cpu_s"], 1)
        cpu_all = m["server_cpu_s"] + m.get("aux_cpu_s", 0.0)
        out["deliveries_per_cpu_s_with_aux"] = round(deliveries / cpu_all, 1)
    return out

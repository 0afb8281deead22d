"""The load generator's counting, percentiles and provisioning helpers (bench/measure.py,
bench/loadgen.py, bench/servers.py, bench/compare.py); no servers are started here."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest

from bench import compare, loadgen, measure, servers


class _Sink:
    """Stands in for a transport: collects what a counter writes back."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)


class _Conn:
    def __init__(self) -> None:
        self.transport = _Sink()


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 3, 7, 10, 64, 10_000])
def test_counter_counts_messages_split_anywhere(size: int) -> None:
    """Every complete message is counted once, however the stream is cut into chunks,
    and each is answered with one reply."""
    msg = b"<message from='a@l/r' type='chat'><body>hi</body></message>"
    conn = _Conn()
    counter = measure.MessageCounter(conn, b"R", batch=False)  # type: ignore[arg-type]
    for chunk in _chunks(msg * 25, size):
        counter(chunk)
    assert counter.received == 25
    assert b"".join(conn.transport.data) == b"R" * 25
    assert counter.errors == 0


def test_counter_batches_replies_and_counts_errors() -> None:
    """With batch, n messages get one write; error bounces are counted as errors."""
    conn = _Conn()
    counter = measure.MessageCounter(conn, b"R", batch=True)  # type: ignore[arg-type]
    counter(b"<message type='chat'/></message><message type=\"error\"></message>")
    assert conn.transport.data == [b"RR"]
    assert counter.errors == 1


def test_counter_stops_answering_when_not_running() -> None:
    """After the measured interval no new messages are sent."""
    conn = _Conn()
    counter = measure.MessageCounter(conn, b"R", batch=False)  # type: ignore[arg-type]
    counter.running = False
    counter(b"<message></message>")
    assert counter.received == 1 and conn.transport.data == []


@pytest.mark.parametrize("size", [1, 5, 9, 17, 1000])
def test_presence_counter_separates_unavailable(size: int) -> None:
    """Presence stanzas are counted, and those of type unavailable are told apart."""
    data = (
        b"<presence from='a'/><presence type='unavailable' from='b'/>"
        b'<presence from="c"><show>away</show></presence><presence type="unavailable"/>'
        b"<iq type='result' id='roster'/>"
    ) * 3
    total = [0, 0]
    counter = measure.PresenceCounter(total)
    for chunk in _chunks(data, size):
        counter(chunk)
    assert total == [12, 6]


@pytest.mark.parametrize("size", [1, 4, 13, 10_000])
def test_stamps_read_send_times_from_bodies(size: int) -> None:
    """Latency is read from each message body's send time, across chunk boundaries, and
    messages sent before the measured interval are left out."""
    latencies: list[int] = []
    stamps = measure.Stamps(latencies, [100])
    data = b"".join(
        b"<message from='a' type='chat'><body>t%d</body></message>" % t for t in (50, 100, 200)
    )
    for chunk in _chunks(data, size):
        stamps(chunk)
    assert len(latencies) == 2
    assert all(x > 0 for x in latencies)


def test_seam_count_finds_a_marker_across_chunks() -> None:
    """A marker split across two chunks is counted exactly once."""
    assert measure.seam_count(b"xx</mes", b"sage>yy", b"</message>") == 1
    assert measure.seam_count(b"</message>", b"zz", b"</message>") == 0
    assert measure.seam_count(b"", b"</message></message>", b"</message>") == 2


def test_percentile_is_nearest_rank() -> None:
    """p50 and p99 of 1..100 are 50 and 99; no values give 0."""
    values = [float(i) for i in range(1, 101)]
    assert measure.percentile(values, 0.5) == 50.0
    assert measure.percentile(values, 0.99) == 99.0
    assert measure.percentile([], 0.99) == 0.0


def _args(*argv: str) -> argparse.Namespace:
    return loadgen.build_parser().parse_args(list(argv))


def test_check_args_refuses_more_accounts_than_provisioned() -> None:
    """A run that would need accounts beyond --pool is refused before it starts."""
    with pytest.raises(SystemExit):
        loadgen.check_args(_args("messages", "--pairs", "600", "--pool", "1000"))
    with pytest.raises(SystemExit):
        loadgen.check_args(_args("idle", "-n", "1000", "--pool", "1000"))
    loadgen.check_args(_args("idle", "-n", "900", "--pool", "1000"))


def test_check_args_allows_loopback_only() -> None:
    """The generator never targets an address outside the loopback range."""
    with pytest.raises(SystemExit, match="loopback"):
        loadgen.check_args(_args("login", "--host", "10.0.0.1"))
    loadgen.check_args(_args("login", "--host", "127.0.0.2"))


def test_check_args_bounds_the_duration() -> None:
    """Runs are bounded in time."""
    with pytest.raises(SystemExit):
        loadgen.check_args(_args("messages", "--duration", "0"))
    with pytest.raises(SystemExit):
        loadgen.check_args(_args("messages", "--duration", "7200"))


def test_ring_contacts_are_mutual() -> None:
    """Every contact relation has its mirror, so subscriptions can be 'both'."""
    users, k = 120, 50
    rosters = {i: set(servers.ring_contacts(i, users, k)) for i in range(users)}
    for i, contacts in rosters.items():
        assert len(contacts) == k and i not in contacts
        assert all(i in rosters[c] for c in contacts)
    with pytest.raises(ValueError):
        servers.ring_contacts(0, 10, 10)


def test_prosody_roster_is_a_lua_table_of_mutual_items() -> None:
    """The roster file holds Prosody's metadata entry and one 'both' item per contact."""
    text = servers.prosody_roster("localhost", "r", [1, 2])
    assert text.startswith("return {")
    assert "[false] = { version = 1; pending = {} };" in text
    assert '["r1@localhost"] = { subscription = "both"; groups = {} };' in text
    assert text.rstrip().endswith("};")


def test_prosody_config_sets_what_the_comparison_needs(tmp_path: Any) -> None:
    """Loopback, the port, generational GC, plaintext auth allowed, no limits."""
    cfg = servers.PROSODY_CONFIG.format(
        dir=tmp_path, port=5999, domain="localhost", iterations=4096
    )
    for needle in (
        'interfaces = { "127.0.0.1" }',
        "c2s_ports = { 5999 }",
        'gc = { mode = "generational" }',
        "c2s_require_encryption = false",
        "allow_unencrypted_plain_auth = true",
        "limits = { }",
        '"limits"',
        'authentication = "internal_hashed"',
        "default_iteration_count = 4096",
        'VirtualHost "localhost"',
    ):
        assert needle in cfg, needle


def test_prosody_path_encoding() -> None:
    """Names are stored with every non-alphanumeric byte as %xx, like Prosody's datamanager."""
    assert servers._encode("localhost") == "localhost"
    assert servers._encode("bench.local") == "bench%2elocal"


def test_seeded_switchboard_accounts_authenticate(redis_url: str) -> None:
    """Accounts written by the benchmark's pipeline are the ones the account store reads."""
    import redis.asyncio

    from core.storage.accounts import AccountStore
    from core.xmpp import sasl

    accounts = servers.Accounts(plain=3, roster_users=0, contacts=0)

    async def go() -> tuple[bool, list[str]]:
        await servers.seed_switchboard(redis_url, accounts)
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            store = AccountStore(client)
            creds = await store.scram_credentials("u2", "localhost", "sha1")
            assert creds is not None
            ok = sasl.verify_password(servers.PASSWORD, "sha1", creds)
            return ok, await store.list("localhost")
        finally:
            await client.aclose()

    ok, names = asyncio.run(go())
    assert ok
    assert names == ["u0", "u1", "u2"]


def test_compare_table_shows_medians_and_ratio() -> None:
    """The table carries the median of each side and Switchboard/Prosody."""
    run = compare.Run("messages", ("messages",), (("msgs_per_s", "messages/s", True),))
    results = [
        {"run": "messages", "server": "prosody", "msgs_per_s": v, "server_cpu_s": 1.0}
        for v in (100.0, 300.0, 200.0)
    ] + [
        {"run": "messages", "server": "switchboard", "msgs_per_s": v, "server_cpu_s": 1.0}
        for v in (400.0, 500.0, 600.0)
    ]
    text = compare.table([run], results, ["prosody", "switchboard"])
    row = text.splitlines()[-1]
    assert row.startswith("| messages/s | 200 | 500 | 2.50 |")


def test_compare_plan_is_bounded() -> None:
    """Every scenario of the comparison has a bounded size and duration."""
    for quick in (True, False):
        for run in compare.plan(quick):
            a = loadgen.build_parser().parse_args([*run.args, "--pool", "100000"])
            loadgen.check_args(a)
            assert a.duration <= 60


def test_meter_reports_cpu_of_processes() -> None:
    """The meter reads CPU seconds of the given processes and of the generator itself."""
    import os

    meter = measure.Meter(server=[os.getpid()], aux=[])
    meter.start()
    sum(i * i for i in range(200_000))
    m = meter.stop()
    assert m["server_cpu_s"] >= 0 and m["gen_cpu_s"] >= 0 and m["wall_s"] > 0

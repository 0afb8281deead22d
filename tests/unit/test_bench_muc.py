"""The load generator's ``muc`` scenario (bench/scenario_muc.py) without servers: the
groupchat counter, the senders' markers, the XEP-0045 templates, entering rooms over an
in-memory transport, and the MUC settings the comparison gives both servers."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from typing import Any

import pytest
from lxml import etree

from bench import client, compare, loadgen, measure, scenario_muc, servers
from bench.client import Connection, NegotiationError
from tests.unit.test_bench_loadgen import _chunks, _Conn


def _reflected(index: int, style: str = "'") -> bytes:
    """Occupant ``index``'s message as a room delivers it, in Prosody's style (single
    quotes) or Switchboard's (double quotes, namespace declared on the stanza)."""
    body = scenario_muc.body(index).encode()
    if style == "'":
        return (
            b"<message type='groupchat' id='x1' to='u0@localhost/b' xml:lang='en' "
            b"from='r@conference.localhost/u%d'><body>%s</body>"
            b"<occupant-id xmlns='urn:xmpp:occupant-id:0' id='a/b='/></message>" % (index, body)
        )
    return (
        b'<message xmlns="jabber:client" type="groupchat" from="r@conference.localhost/u%d" '
        b'id="r-z" to="u0@localhost/b"><body>%s</body><occupant-id '
        b'xmlns="urn:xmpp:occupant-id:0" id="0Ib"/></message>' % (index, body)
    )


@pytest.mark.parametrize("size", [1, 3, 8, 10, 17, 100, 100_000])
def test_groupchat_counter_counts_deliveries_split_anywhere(size: int) -> None:
    """Every delivered message is counted once and every own message answered with one new
    message, however the stream is cut into chunks."""
    data = b"".join(_reflected(i, style) for i in (7, 3, 7, 70, 7) for style in ("'", '"'))
    conn = _Conn()
    counter = measure.GroupchatCounter(conn, b"R", scenario_muc.marker(7))  # type: ignore[arg-type]
    for chunk in _chunks(data, size):
        counter(chunk)
    assert counter.received == 10
    assert counter.reflected == 6
    assert conn.transport.data == [b"R"] * 6
    assert counter.sent == 6 and counter.errors == 0


def test_groupchat_counter_listener_never_sends() -> None:
    """An occupant that only listens counts deliveries and writes nothing."""
    conn = _Conn()
    counter = measure.GroupchatCounter(conn, b"R", b"")  # type: ignore[arg-type]
    counter(_reflected(0) + _reflected(1))
    assert counter.received == 2 and counter.reflected == 0 and conn.transport.data == []


def test_groupchat_counter_window_and_stop() -> None:
    """send(n) puts n messages in flight; once stopped, own messages are counted but no
    longer answered."""
    conn = _Conn()
    counter = measure.GroupchatCounter(conn, b"R", scenario_muc.marker(2))  # type: ignore[arg-type]
    counter.send(3)
    assert counter.sent == 3 and conn.transport.data == [b"R"] * 3
    counter.running = False
    counter(_reflected(2))
    assert counter.reflected == 1 and counter.received == 1 and counter.sent == 3


@pytest.mark.parametrize("cut", [1, 8, 12, 20])
def test_groupchat_counter_counts_errors_across_chunks(cut: int) -> None:
    """A bounced message is counted as an error even when the chunk boundary splits it."""
    data = _reflected(1) + b"<message type='error' from='r@c'><error/></message>"
    split = data.index(b"type='error'") + cut % 12
    conn = _Conn()
    counter = measure.GroupchatCounter(conn, b"R", b"")  # type: ignore[arg-type]
    counter(data[:split])
    counter(data[split:])
    assert counter.errors == 1 and counter.received == 2


def test_counter_refuses_a_marker_longer_than_its_tail() -> None:
    """A marker that the kept tail could not join across chunks is refused up front."""
    with pytest.raises(ValueError):
        measure.GroupchatCounter(_Conn(), b"R", b"x" * 40)  # type: ignore[arg-type]


def test_markers_are_found_only_in_their_senders_messages() -> None:
    """Each sender's marker is in its own messages and in nobody else's, with fixed-width
    indexes (1 is not a prefix of 10 or 12345)."""
    indexes = (0, 1, 10, 12, 123, 12345)
    for i in indexes:
        for j in indexes:
            for style in ("'", '"'):
                found = _reflected(j, style).count(scenario_muc.marker(i))
                assert found == (1 if i == j else 0), (i, j, style)


def test_rooms_are_filled_in_order_and_senders_chosen_per_room() -> None:
    """Occupant i is in room i // K; the first S of each room send (0: all of them)."""
    assert scenario_muc.room_names("b-", 2, "conference.localhost") == [
        "b-0@conference.localhost",
        "b-1@conference.localhost",
    ]
    assert [scenario_muc.occupant_room(i, 3) for i in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    assert [scenario_muc.is_sender(i, 3, 1) for i in range(6)] == [1, 0, 0, 1, 0, 0]
    assert all(scenario_muc.is_sender(i, 3, 0) for i in range(6))
    assert re.fullmatch(r"bench[0-9a-f]{6}-", scenario_muc.default_prefix())


def test_muc_templates_carry_the_xep_0045_payloads() -> None:
    """Join (no history), instant-room form, disco#info and groupchat message parse as XML
    with the right names, namespaces and attributes."""
    join = etree.fromstring(client.muc_join("r@c.l", "nick"))
    assert join.tag == "presence" and join.get("to") == "r@c.l/nick"
    history = join.find("{http://jabber.org/protocol/muc}x/{http://jabber.org/protocol/muc}history")
    assert history is not None and history.get("maxstanzas") == "0"
    iq = etree.fromstring(client.muc_instant_room("r@c.l"))
    assert iq.get("type") == "set" and iq.get("to") == "r@c.l"
    form = iq.find("{http://jabber.org/protocol/muc#owner}query/{jabber:x:data}x")
    assert form is not None and form.get("type") == "submit" and len(form) == 0
    info = etree.fromstring(client.disco_info("r@c.l", "sync"))
    assert info.get("id") == "sync" and info[0].tag.endswith("disco#info}query")
    msg = etree.fromstring(client.groupchat_message("r@c.l", scenario_muc.body(4)))
    assert msg.get("type") == "groupchat" and msg.findtext("body") == scenario_muc.body(4)


def test_expect_passes_over_elements_without_the_needle() -> None:
    """expect(containing=...) returns the first element holding a needle, waiting for it
    across chunks, and keeps what follows it."""
    others = b"<presence from='r/a'><x><item role='participant'/></x></presence>" * 3
    own = b'<presence from="r/me"><x><status code="110"/></x></presence>'
    rest = b"<message type='groupchat'><subject/></message>"

    async def go() -> tuple[bytes, bytes]:
        conn = Connection()
        loop = asyncio.get_running_loop()
        for i, part in enumerate(_chunks(others + own + rest, 11)):
            loop.call_later(0.001 * i, conn.data_received, part)
        el = await conn.expect(
            b"presence", deadline=loop.time() + 5, containing=scenario_muc.SELF_OR_ERROR
        )
        subject = await conn.expect(b"message", deadline=loop.time() + 5, containing=(b"<subj",))
        return el, subject

    el, subject = asyncio.run(go())
    assert el == own and subject == rest


class _Service(asyncio.Transport):
    """A scripted MUC service behind one client stream: answers a join with the occupant's
    own presence (110) and the subject, cut in two chunks, and every IQ with a result."""

    def __init__(self, conn: Connection, log: list[bytes], refuse: bool = False) -> None:
        super().__init__()
        self.conn = conn
        self.log = log
        self.refuse = refuse

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.log.append(data)
        loop = asyncio.get_running_loop()
        if data.startswith(b"<presence"):
            to = re.search(rb"to='([^']+)'", data).group(1)  # type: ignore[union-attr]
            if self.refuse:
                reply = b"<presence type='error' from='%s'><error/></presence>" % to
            else:
                reply = (
                    b"<presence from='%s'><x><status code='110'/></x></presence>"
                    b"<message type='groupchat'><subject/></message>" % to
                )
            loop.call_soon(self.conn.data_received, reply[:30])
            loop.call_soon(self.conn.data_received, reply[30:])
        elif data.startswith(b"<iq"):
            ident = re.search(rb"id='([^']+)'", data).group(1)  # type: ignore[union-attr]
            loop.call_soon(self.conn.data_received, b"<iq type='result' id='%s'/>" % ident)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _muc_args(rooms: int, occupants: int) -> argparse.Namespace:
    return argparse.Namespace(rooms=rooms, occupants=occupants, concurrency=4, timeout=5.0)


def test_set_up_rooms_creates_each_room_before_others_enter() -> None:
    """The first occupant of each room enters and makes it an instant room before anyone
    else enters; then everyone enters, and every occupant ends with a round trip to its
    room."""
    rooms = scenario_muc.room_names("t-", 2, "c.l")
    log: list[bytes] = []

    async def go() -> list[float]:
        conns = []
        for _ in range(6):
            conn = Connection()
            conn.connection_made(_Service(conn, log))
            conns.append(conn)
        nicks = [f"u{i}" for i in range(6)]
        return await scenario_muc.set_up_rooms(conns, nicks, rooms, _muc_args(2, 3))

    latencies = asyncio.run(go())
    assert len(latencies) == 6
    configs = [i for i, d in enumerate(log) if b"muc#owner" in d]
    joins = [i for i, d in enumerate(log) if d.startswith(b"<presence")]
    syncs = [i for i, d in enumerate(log) if b"id='sync'" in d]
    assert len(configs) == 2 and len(joins) == 6 and len(syncs) == 6
    # The owners u0 and u3 enter first; the others only after both rooms are configured.
    owner_joins = [i for i in joins if b"/u0'" in log[i] or b"/u3'" in log[i]]
    assert max(configs) < min(set(joins) - set(owner_joins))
    assert min(syncs) > max(joins)


def test_enter_room_reports_a_refusal() -> None:
    """A presence error from the room ends the entry with NegotiationError, not a hang."""

    async def go() -> None:
        conn = Connection()
        conn.connection_made(_Service(conn, [], refuse=True))
        await scenario_muc.enter_room(conn, "r@c.l", "n", 2.0)

    with pytest.raises(NegotiationError, match="could not enter"):
        asyncio.run(go())


def test_named_pids_and_muc_bounds() -> None:
    """--server-pid takes PID or NAME=PID; muc needs R*K provisioned accounts."""
    assert loadgen.named_pid("core=12") == ("core", 12)
    assert loadgen.named_pid("12") == ("", 12)
    for bad in ("core=x", "0", "a=-3"):
        with pytest.raises(argparse.ArgumentTypeError):
            loadgen.named_pid(bad)
    parse = loadgen.build_parser().parse_args
    loadgen.check_args(parse(["muc", "--rooms", "10", "--occupants", "20", "--pool", "200"]))
    with pytest.raises(SystemExit):
        loadgen.check_args(parse(["muc", "--rooms", "10", "--occupants", "20", "--pool", "199"]))
    with pytest.raises(SystemExit):
        loadgen.check_args(parse(["muc", "--occupants", "1"]))


def test_meter_splits_cpu_by_named_process() -> None:
    """With names the meter reports CPU per process next to the totals."""
    pid = os.getpid()
    meter = measure.Meter(server=[pid], aux=[], names={pid: "core"})
    meter.start()
    sum(i * i for i in range(100_000))
    m = meter.stop()
    assert set(m["cpu_s_by_process"]) == {"core"}
    assert m["cpu_s_by_process"]["core"] == m["server_cpu_s"]


def test_compare_runs_muc_with_the_services_and_shows_its_rows() -> None:
    """Only the muc run starts the MUC services; its table rows carry both medians."""
    runs = {r.key: r for r in compare.plan(quick=True)}
    assert runs["muc"].muc and not any(r.muc for k, r in runs.items() if k != "muc")
    results: list[dict[str, Any]] = [
        {"run": "muc", "server": "prosody", "deliveries_per_s": 300.0, "wall_s": 1.0},
        {
            "run": "muc",
            "server": "switchboard",
            "deliveries_per_s": 150.0,
            "server_cpu_s": 0.85,
            "server_cpu_pct": 85.0,
            "aux_cpu_s": 0.1,
            "wall_s": 1.0,
        },
    ]
    row = compare.table([runs["muc"]], results, ["prosody", "switchboard"]).splitlines()[2]
    assert row.startswith("| MUC deliveries/s (5 rooms of 10) | 300 | 150 | 0.50 |")
    # Redis shares the server's CPU: 85 % + 10 % is a saturated CPU.
    assert "server CPU (95 %)" in row


def test_prosody_muc_component_config() -> None:
    """Prosody's MUC component: local creators, no history, no room cap."""
    text = servers.PROSODY_MUC.format(muc_domain="conference.localhost")
    assert text.startswith('Component "conference.localhost" "muc"')
    for needle in (
        'restrict_room_creation = "local"',
        "muc_room_default_history_length = 0",
        "muc_room_cache_size = 100000",
    ):
        assert needle in text


def test_switchboard_env_links_the_muc_to_the_core(tmp_path: Any) -> None:
    """With muc the core listens for components and core and MUC share the domain and
    secret; without it the listener stays off."""
    sb = servers.Switchboard(tmp_path)
    sb.component_port = 5999
    env = sb.env(muc=True)
    assert env["SWITCHBOARD_COMPONENT_LISTENER_PORT"] == "5999"
    assert env["SWITCHBOARD_COMPONENTS_MUC_DOMAIN"] == servers.MUC_DOMAIN
    assert env["SWITCHBOARD_COMPONENTS_MUC_SECRET"] == sb.component_secret
    assert env["SWITCHBOARD_MUC_CREATORS"] == "local"
    assert env["SWITCHBOARD_MUC_DEFAULT_HISTORY"] == "0"
    plain = sb.env()
    assert plain["SWITCHBOARD_COMPONENT_LISTENER_PORT"] == "0"
    assert not any(k.startswith("SWITCHBOARD_COMPONENTS_") for k in plain)


def test_clear_muc_rooms_deletes_only_muc_keys(redis_url: str) -> None:
    """Rooms of an earlier run are removed from Redis; accounts stay."""
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        r.hset("muc:room:{a@c.l}", "v", "1")
        r.rpush("muc:history:{a@c.l}", "x")
        r.sadd("muc:rooms:{c.l}", "a@c.l")
        r.hset("account:{u0@localhost}", "created", "1")
        assert servers.clear_muc_rooms(redis_url) == 3
        assert r.keys("*") == [b"account:{u0@localhost}"]
    finally:
        r.close()

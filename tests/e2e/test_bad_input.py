"""Hostile and broken input on client streams (RFC 6120 §4.9.3, §11; DESIGN "The wire layer").

Raw sockets send what no client library would. Each test checks the stream error the RFC
names (or a clean close), that a witness client connected to the same server before the bad
input still works afterwards, and that the server is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from lxml import etree

from core.storage import keys
from core.storage.accounts import AccountExists
from core.xmpp.ns import NS_BIND, NS_CLIENT, NS_PING, NS_SASL, NS_STANZAS, NS_STREAMS, qn
from core.xmpp.parser import StreamOpen
from tests.harness import CoreProcess, RawClient, separate_db, stream_error_condition

PASSWORD = "bad-input-secret-9"
HEADER = (
    f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}' "
    "to='localhost' version='1.0'>"
)
PING = f"<ping xmlns='{NS_PING}'/>"
NEGOTIATION_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def slow_core(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    """A core that gives a stream NEGOTIATION_TIMEOUT seconds to reach a bound session."""
    env = {"SWITCHBOARD_C2S_NEGOTIATION_TIMEOUT": str(NEGOTIATION_TIMEOUT)}
    workdir = Path(tmp_path_factory.mktemp("slow"))
    proc = CoreProcess(separate_db(redis_server), workdir, env=env).start()
    try:
        yield proc
    finally:
        proc.stop()


def account(core: CoreProcess, name: str) -> str:
    with contextlib.suppress(AccountExists):
        core.add_user(name, PASSWORD)
    return name


async def bound(core: CoreProcess, user: str, resource: str = "raw") -> RawClient:
    c = RawClient(core.c2s_port)
    await c.login(await asyncio.to_thread(account, core, user), PASSWORD, resource=resource)
    return c


@contextlib.asynccontextmanager
async def witness(core: CoreProcess) -> AsyncIterator[RawClient]:
    """A bound client for the duration of the bad input; afterwards it must still be served,
    having received nothing in the meantime, and the server must still run."""
    w = await bound(core, "witness", resource=f"w{time.monotonic_ns()}")
    yield w
    # The answer must be the next thing it receives: nothing of the bad input reached it.
    await w.send(f"<iq type='get' id='alive' to='localhost'>{PING}</iq>")
    reply = await w.next_element()
    assert reply.get("id") == "alive" and reply.get("type") == "result", etree.tostring(reply)
    await w.close()
    assert core.alive


async def header_then(core: CoreProcess, data: bytes) -> tuple[object, str | None, RawClient]:
    """Open a plaintext stream, send ``data``; returns (first event, stream error, client)."""
    c = RawClient(core.c2s_port)
    await c.connect()
    await c.send(data)
    first = await c.next_event()
    condition = await c.stream_error()
    return first, condition, c


# Malformed and restricted XML -----------------------------------------------------------


def _billion_laughs() -> bytes:
    """The classic exponential entity expansion: 10^9 'lol's if anything expanded it."""
    entities = ["<!ENTITY lol0 'lol'>"]
    for i in range(1, 10):
        entities.append(f"<!ENTITY lol{i} '{f'&lol{i - 1};' * 10}'>")
    return (
        "<?xml version='1.0'?><!DOCTYPE lolz ["
        + "".join(entities)
        + "]>"
        + HEADER.split("?>", 1)[1]
        + "<message><body>&lol9;</body></message>"
    ).encode()


BEFORE_HEADER = {
    "junk": (b"hello server", "not-well-formed"),
    "doctype": (
        b"<?xml version='1.0'?><!DOCTYPE stream:stream>" + HEADER.split("?>", 1)[1].encode(),
        "restricted-xml",
    ),
    "billion-laughs": (_billion_laughs(), "restricted-xml"),
    "comment": (b"<!-- hi -->" + HEADER.encode(), "restricted-xml"),
    "pi": (
        b"<?xml version='1.0'?><?evil x?>" + HEADER.split("?>", 1)[1].encode(),
        "restricted-xml",
    ),
    "not-utf8": (HEADER.replace("localhost", "local\xffhost").encode("latin-1"), "not-well-formed"),
    "latin1-declared": (
        HEADER.replace("version='1.0'?>", "version='1.0' encoding='ISO-8859-1'?>", 1).encode(),
        "unsupported-encoding",
    ),
}


@pytest.mark.parametrize("case", list(BEFORE_HEADER))
def test_bad_prolog_or_header(core: CoreProcess, run_async: object, case: str) -> None:
    """Broken or restricted XML before or in the stream header: our header, then the stream
    error (RFC 6120 §4.9.1.2), then the close; nothing of it is expanded or echoed."""
    data, expected = BEFORE_HEADER[case]

    async def scenario() -> None:
        async with witness(core):
            first, condition, c = await header_then(core, data)
            assert isinstance(first, StreamOpen) and first.attrs.get("from") == "localhost"
            assert condition == expected
            assert await c.closed()

    run_async(scenario())


IN_STREAM = {
    "unclosed-tags": (b"<message><body>x</message>", "not-well-formed"),
    "broken-attribute": pytest.param(
        b"<message to='a'b'/>",
        "not-well-formed",
        # libxml2 2.14 under lxml 6 stops at "attributes construct error" without raising, so
        # the stream parser goes silent instead of failing (core/xmpp/parser.py).
        marks=pytest.mark.xfail(reason="lxml push parser halts silently", strict=True),
    ),
    "bare-ampersand": (b"<message><body>fish & chips</body></message>", "not-well-formed"),
    "entity-declaration": (b"<!ENTITY lol 'lol'>", "restricted-xml"),
    "doctype": (b"<!DOCTYPE message>", "restricted-xml"),
    "undeclared-entity": (b"<message><body>&lol9;</body></message>", "restricted-xml"),
    "comment": (b"<message><!-- note --><body>x</body></message>", "restricted-xml"),
    "pi": (b"<?evil run?><message/>", "restricted-xml"),
    "not-utf8": (b"<message><body>\xff\xfe\xfd</body></message>", "not-well-formed"),
    "overlong-utf8": (b"<message><body>\xc0\xaf</body></message>", "not-well-formed"),
    "truncated-utf8": (b"<message><body>\xe2\x82</body></message>", "not-well-formed"),
}


@pytest.mark.parametrize(
    ("data", "expected"),
    list(IN_STREAM.values()),
    ids=list(IN_STREAM),
)
def test_bad_xml_in_bound_stream(
    core: CoreProcess, run_async: object, data: bytes, expected: str, request: object
) -> None:
    """Broken or restricted XML from an authenticated, bound client ends its stream with the
    RFC 6120 §4.9.3 condition; nothing of it reaches anyone."""
    case = request.node.callspec.id  # type: ignore[attr-defined]

    async def scenario() -> None:
        async with witness(core):
            c = await bound(core, "offender", resource=case)
            await c.send(data)
            assert await c.stream_error(timeout=2) == expected
            assert await c.closed()

    run_async(scenario())
    assert f"stream error {expected}" in core.log()


# Resource exhaustion ----------------------------------------------------------------------


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def flood(c: RawClient, total: int) -> tuple[int, str | None]:
    """Send ``total`` bytes of one stanza's body, pausing after each MiB until the server has
    had a chance to refuse it; returns (bytes sent when it did, stream error condition)."""
    chunk = b"a" * 65536
    error = asyncio.ensure_future(c.stream_error(timeout=15))
    sent = 0
    assert c.writer is not None
    while sent < total and not error.done():
        try:
            c.writer.write(chunk)
            await c.writer.drain()
        except ConnectionError:
            break
        sent += len(chunk)
        if sent % MIB == 0:
            # A server that waited for the end of the stanza would say nothing here.
            await asyncio.wait([error], timeout=5)
    return sent, await error


MIB = 1024 * 1024


@pytest.mark.parametrize("stage", ["bound", "plaintext-header"])
def test_ten_megabyte_stanza(core: CoreProcess, run_async: object, stage: str) -> None:
    """A 10 MB stanza is refused with <policy-violation/> within its first MiB (the limit is
    256 KiB) and the connection is closed; the server's peak memory does not grow by anything
    like 10 MB, so it never buffered the stanza. Bound over TLS, or right after a plaintext
    header (where the close must not reset the connection before the error is read)."""
    assert core.proc is not None
    pid = core.proc.pid

    async def scenario() -> tuple[int, str | None]:
        async with witness(core) as w:
            before = _peak_rss_kib(pid)
            if stage == "bound":
                c = await bound(core, "flooder")
            else:
                c = RawClient(core.c2s_port)
                await c.connect()
                await c.open_stream()
            await c.send(f"<message to='{w.jid}' id='big'><body>")
            sent, condition = await flood(c, 10 * MIB)
            assert await c.closed()
            growth = _peak_rss_kib(pid) - before
            assert growth < 4096, f"peak RSS grew by {growth} KiB"
            return sent, condition

    sent, condition = run_async(scenario())
    assert condition == "policy-violation"
    assert sent <= MIB, f"{sent} bytes were sent before the server refused the stanza"


def test_header_one_byte_per_second(slow_core: CoreProcess, run_async: object) -> None:
    """A client that trickles its stream header is cut off with <connection-timeout/> once
    c2s.negotiation_timeout has passed, not kept open by each byte."""

    async def scenario() -> float:
        async with witness(slow_core):
            c = RawClient(slow_core.c2s_port)
            await c.connect()
            start = time.monotonic()
            error = asyncio.ensure_future(c.stream_error(timeout=NEGOTIATION_TIMEOUT + 4))
            for byte in HEADER.encode():
                if error.done():
                    break
                with contextlib.suppress(ConnectionError):
                    await c.send(bytes([byte]))
                await asyncio.wait([error], timeout=1.0)
            assert await error == "connection-timeout"
            elapsed = time.monotonic() - start
            assert await c.closed()
            return elapsed

    elapsed = run_async(scenario())
    assert NEGOTIATION_TIMEOUT - 0.5 <= elapsed <= NEGOTIATION_TIMEOUT + 2


def test_client_that_never_closes_is_dropped(slow_core: CoreProcess, run_async: object) -> None:
    """After a stream error the server waits for the client to close its side (RFC 6120 §4.4),
    but not for ever: a client that stops reading and never closes is dropped after a grace
    period (here the negotiation timeout), and its session ends."""

    async def scenario() -> float:
        async with witness(slow_core):
            c = await bound(slow_core, "deaf")
            name = c.sockname
            assert c.writer is not None
            c.writer.transport.pause_reading()
            await c.send(b"<message><body>x</message>")
            start = time.monotonic()
            line = await asyncio.to_thread(
                slow_core.wait_log, f"c2s {name} closed", NEGOTIATION_TIMEOUT + 3
            )
            assert "stream error not-well-formed" in line
            elapsed = time.monotonic() - start
            c.writer.transport.abort()
            return elapsed

    elapsed = run_async(scenario())
    assert NEGOTIATION_TIMEOUT - 0.5 <= elapsed <= NEGOTIATION_TIMEOUT + 2


# Connections that go away -------------------------------------------------------------------


def test_connection_dropped_mid_stanza(core: CoreProcess, run_async: object) -> None:
    """A client that drops its TCP connection in the middle of a stanza: the server logs it,
    the half stanza goes nowhere, the session is unbound and removed from Redis, and what is
    sent to its full JID afterwards follows RFC 6121 §8.5.3.2: a chat message is stored
    offline or refused with service-unavailable, an IQ gets service-unavailable."""
    client = redis.Redis.from_url(core.redis_url)

    async def scenario() -> None:
        async with witness(core) as w:
            c = await bound(core, "dropper", resource="gone")
            name = c.sockname
            assert client.hget(keys.session("dropper@localhost"), "gone") is not None
            await c.send(f"<message to='{w.jid}' id='half'><body>half a mess")
            assert c.writer is not None
            c.writer.transport.abort()
            line = await asyncio.to_thread(core.wait_log, f"c2s {name} closed")
            assert "(dropper@localhost/gone)" in line and "connection lost" in line
            await w.send(
                "<message to='dropper@localhost/gone' type='chat' id='late'><body>hi</body>"
                "</message>"
            )
            await w.send(f"<iq type='get' id='gone' to='dropper@localhost/gone'>{PING}</iq>")
            replies = [await w.next_element()]
            if replies[0].tag == qn(NS_CLIENT, "message"):
                replies.append(await w.next_element())
            for reply in replies:
                assert stream_error_condition(reply) is None, etree.tostring(reply)
                err = reply.find(qn(NS_CLIENT, "error"))
                assert reply.get("type") == "error" and err is not None, etree.tostring(reply)
                assert err.find(qn(NS_STANZAS, "service-unavailable")) is not None
            assert [(r.tag, r.get("id")) for r in replies][-1] == (qn(NS_CLIENT, "iq"), "gone")
            assert all(r.get("id") in ("late", "gone") for r in replies)
            await asyncio.to_thread(wait_unregistered, client, "dropper@localhost", "gone")

    try:
        run_async(scenario())
    finally:
        client.close()


def wait_unregistered(client: redis.Redis, bare: str, resource: str) -> None:
    deadline = time.monotonic() + 5
    while client.hget(keys.session(bare), resource) is not None:
        assert time.monotonic() < deadline, "the session is still registered in Redis"
        time.sleep(0.02)


def test_sasl_garbage_is_a_failure_not_a_crash(core: CoreProcess, run_async: object) -> None:
    """Data that is not base64 in <auth/> gets incorrect-encoding, an unknown mechanism
    invalid-mechanism; the stream stays open for a proper attempt."""
    user = account(core, "garbler")

    async def scenario() -> None:
        async with witness(core):
            c = RawClient(core.c2s_port)
            await c.connect()
            await c.open_stream()
            await c.starttls()
            for data, mech, expected in [
                ("!!!not base64!!!", "PLAIN", "incorrect-encoding"),
                ("=", "X-UNKNOWN", "invalid-mechanism"),
            ]:
                await c.send(f"<auth xmlns='{NS_SASL}' mechanism='{mech}'>{data}</auth>")
                failure = await c.next_element()
                assert failure.tag == qn(NS_SASL, "failure")
                assert failure.find(qn(NS_SASL, expected)) is not None
            result = await c.auth(user, PASSWORD)
            assert result.tag == qn(NS_SASL, "success")
            c.parser.reset()
            await c.open_stream()
            await c.send(f"<iq type='set' id='b'><bind xmlns='{NS_BIND}'/></iq>")
            assert (await c.next_element()).get("type") == "result"
            await c.close()

    run_async(scenario())


def test_no_unexpected_failures_logged(core: CoreProcess, slow_core: CoreProcess) -> None:
    """None of the bad input above made the server log an error or a traceback: each case
    was an anticipated refusal, not an accident."""
    for proc in (core, slow_core):
        assert proc.alive
        log = proc.log()
        assert " ERROR " not in log and "Traceback" not in log, log[-4000:]

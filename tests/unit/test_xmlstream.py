"""The shared half of the stream protocols (core/xmpp/xmlstream.py) over StringTransport: a
stream error after a header of our own (RFC 6120 §4.9.1.1, §4.9.1.2), one close only,
stanzas that take effect in the order they arrived while one of them waits (§10.1), and
writes held while a read is processed (WriteHold)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any

from lxml import etree
from twisted.internet.testing import StringTransport

from core.xmpp.errors import StreamError
from core.xmpp.parser import StreamOpen, StreamParser
from core.xmpp.xmlstream import OrderedXmlStream, WriteHold, peer_address

HEADER = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    b"to='localhost' version='1.0'>"
)


class Recorder(OrderedXmlStream):
    """A receiving stream that records each element's name; an element named ``wait``
    holds up the ones after it until ``release`` is set."""

    def __init__(self) -> None:
        self.parser = StreamParser()
        self.closed = False
        self._header_sent = False
        self._backlog: deque[Any] = deque()
        self._busy = False
        self.handled: list[str] = []
        self.release = asyncio.Event()
        self.tasks: list[asyncio.Future[None]] = []

    def log_label(self) -> str:
        return "test"

    def _send_error_header(self) -> None:
        self._header_sent = True
        self.transport.write(b"<stream:stream>")

    def dataReceived(self, data: bytes) -> None:
        for ev in self._events(data):
            if self._busy:
                self._backlog.append(ev)
                continue
            self._handle_event(ev)

    def _handle_event(self, ev: Any) -> None:
        if isinstance(ev, StreamOpen):
            return
        name = etree.QName(ev).localname
        self.handled.append(name)
        if name == "wait":
            self._run_async(self.release.wait(), ev)

    def _unexpected(self, ev: Any) -> None:
        raise AssertionError("no failure expected")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))


def connected() -> tuple[Recorder, StringTransport]:
    stream, transport = Recorder(), StringTransport()
    stream.makeConnection(transport)
    return stream, transport


def test_parser_error_sends_header_error_and_close() -> None:
    """Restricted XML before any header of ours: our header, the stream error, the close of
    the stream and of the connection, in that order."""
    stream, transport = connected()
    stream.dataReceived(b"<?xml version='1.0'?><!DOCTYPE x>")
    out = transport.value()
    assert out.startswith(b"<stream:stream>")
    assert b"restricted-xml" in out
    assert out.endswith(b"</stream:stream>")
    assert transport.disconnecting
    assert stream.close_reason == "stream error restricted-xml"


def test_stream_error_is_sent_once() -> None:
    """A second stream error, or input after the close, sends nothing more."""
    stream, transport = connected()
    stream.dataReceived(HEADER)
    stream.close_with(StreamError("policy-violation"))
    sent = transport.value()
    stream.close_with(StreamError("conflict"))
    stream.dataReceived(b"<message/>")
    assert transport.value() == sent
    assert sent.count(b"<stream:error") == 1
    assert stream.handled == []


def test_stanzas_wait_for_the_one_before_them() -> None:
    """While the processing of one stanza waits, the next ones are queued, then handled in
    order once it is done; reading resumes."""

    async def run() -> tuple[list[str], list[str], str]:
        stream, transport = connected()
        transport.producerState = "paused"
        stream.dataReceived(HEADER + b"<a/><wait/><b/><c/>")
        before = list(stream.handled)
        stream.release.set()
        await asyncio.gather(*stream.tasks)
        return before, stream.handled, transport.producerState

    before, after, state = asyncio.run(run())
    assert before == ["a", "wait"]
    assert after == ["a", "wait", "b", "c"]
    assert state == "producing"


def test_peer_address_names_host_and_port() -> None:
    """Log lines name a connection as host:port."""
    transport = StringTransport()
    assert peer_address(transport) == "192.168.1.1:54321"


class Conn:
    """A connection that records each write it is given."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.writes: list[bytes] = []


def record(conn: Conn, data: bytes) -> None:
    conn.writes.append(data)


def test_writes_outside_a_hold_go_at_once() -> None:
    """Without a hold, a write is made when it is asked for."""
    hold, a = WriteHold(), Conn("a")
    hold.write(a, b"<one/>", record)
    assert a.writes == [b"<one/>"]
    assert not hold.holding


def test_held_writes_leave_once_per_connection_in_order() -> None:
    """Inside a hold nothing is written; the release writes each connection's bytes joined,
    in the order they were given; nested holds release with the outermost."""
    hold, a, b = WriteHold(), Conn("a"), Conn("b")
    order: list[str] = []

    def send(conn: Conn, data: bytes) -> None:
        order.append(conn.name)
        record(conn, data)

    hold.hold()
    hold.write(a, b"<1/>", send)
    hold.hold()
    hold.write(b, b"<2/>", send)
    hold.write(a, b"<3/>", send)
    hold.release()
    assert a.writes == [] and b.writes == [] and hold.holding
    hold.write(a, b"<4/>", send)
    hold.release()
    assert a.writes == [b"<1/><3/><4/>"]
    assert b.writes == [b"<2/>"]
    assert order == ["a", "b"]
    assert not hold.holding
    hold.write(a, b"<5/>", send)
    assert a.writes[-1] == b"<5/>"


def test_flush_sends_one_connection_ahead() -> None:
    """flush() writes what is held for one connection now (before a write of another kind),
    and the release does not write it again."""
    hold, a, b = WriteHold(), Conn("a"), Conn("b")
    hold.hold()
    hold.write(a, b"<1/>", record)
    hold.write(b, b"<2/>", record)
    hold.flush(a)
    hold.flush(a)
    assert a.writes == [b"<1/>"] and b.writes == []
    hold.release()
    assert a.writes == [b"<1/>"] and b.writes == [b"<2/>"]


def test_a_failing_write_does_not_keep_the_others() -> None:
    """A write that raises at the release is logged; the other connections get their bytes
    and the hold ends."""
    hold, a, b = WriteHold(), Conn("a"), Conn("b")

    def broken(conn: Conn, data: bytes) -> None:
        raise OSError("gone")

    hold.hold()
    hold.write(a, b"<1/>", broken)
    hold.write(b, b"<2/>", record)
    hold.release()
    assert b.writes == [b"<2/>"]
    assert not hold.holding

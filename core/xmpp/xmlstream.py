"""What the server's XML stream protocols share (RFC 6120 §4, §10.1).

``XmlStream`` is one stream over one connection: the peer's address for the logs, the events
of a read, and a stream error followed by the close of the stream (§4.9.1.1). Client streams,
server-to-server streams and both ends of a component link (XEP-0114) build on it.

``OrderedXmlStream`` adds the in-order processing of a stream's stanzas (§10.1): while the
processing of one waits for I/O, the next ones wait in a backlog, and reading pauses when the
backlog grows (the subclass's ``dataReceived`` queues them there while ``_busy``).

``WriteHold`` (one per process, ``HELD``) gathers the writes to client connections made while
one read of a stream is processed, and sends each connection's share with one call at the end.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from twisted.internet import protocol

from core.xmpp.errors import StreamError
from core.xmpp.parser import Event, StreamParser
from core.xmpp.stream_header import STREAM_CLOSE

log = logging.getLogger(__name__)


def peer_address(transport: Any) -> str:
    """``host:port`` of the other end of ``transport``, as the logs name a connection."""
    addr = transport.getPeer()
    return f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}"


Write = Callable[[Any, bytes], None]


class WriteHold:
    """Writes held back while one read is processed, then one write per connection.

    One read of a component link carries a few hundred stanzas for a few dozen clients (a
    groupchat message goes to every occupant, XEP-0045 §7.4). Written one by one, each stanza
    is a ``send()`` system call, and on a loopback connection that call also runs the
    receiver's half of TCP: the largest cost of a delivery (bench/README.md). Held until the
    read is processed, a client's stanzas from that read leave in one call.

    Between ``hold()`` and ``release()`` (nested pairs count as one), ``write(transport, data,
    send)`` keeps ``data`` for ``transport``; outside them it calls ``send(transport, data)``
    at once. ``release()`` of the outermost pair sends what each transport was given, joined,
    in the order of the first write to each, with the ``send`` of that first write. The bytes
    of one connection keep their order as long as every write to it goes through here: a
    stream that writes some other way (its stream close) calls ``flush(transport)`` first.
    Holding never outlives the synchronous processing of one read: the reactor runs nothing
    else in between, so no latency is added."""

    __slots__ = ("_depth", "_held")

    def __init__(self) -> None:
        self._depth = 0
        # id(transport) -> (transport, send, chunks): by identity, whatever the transport's
        # class says of equality.
        self._held: dict[int, tuple[Any, Write, list[bytes]]] = {}

    @property
    def holding(self) -> bool:
        """Whether writes are being held."""
        return self._depth > 0

    def hold(self) -> None:
        """Hold writes from now until the matching ``release()``."""
        self._depth += 1

    def write(self, transport: Any, data: bytes, send: Write) -> None:
        """Write ``data`` to ``transport`` with ``send``: now, or at the release."""
        if not self._depth:
            send(transport, data)
            return
        entry = self._held.get(id(transport))
        if entry is None:
            self._held[id(transport)] = (transport, send, [data])
        else:
            entry[2].append(data)

    def flush(self, transport: Any) -> None:
        """Send at once what is held for ``transport``, before it is written to otherwise."""
        entry = self._held.pop(id(transport), None)
        if entry is not None:
            entry[1](transport, b"".join(entry[2]))

    def release(self) -> None:
        """End a ``hold()``; the outermost one sends everything held."""
        self._depth -= 1
        if self._depth > 0 or not self._held:
            return
        held, self._held = self._held, {}
        for transport, send, chunks in held.values():
            try:
                send(transport, chunks[0] if len(chunks) == 1 else b"".join(chunks))
            except Exception:
                # Not the fault of the stream that held: the others still get their bytes.
                log.exception("write to %r failed", transport)


# The process's hold: client streams write their stanzas through it (``write``), the streams
# that deliver many stanzas per read hold it around the processing of the read.
HELD = WriteHold()


class XmlStream(protocol.Protocol, metaclass=abc.ABCMeta):
    """The shared half of a stream protocol.

    A subclass creates ``parser``, keeps ``closed`` true once the stream is forgotten, names
    itself in ``log_label``, and sends its header in ``_send_error_header`` when it may send a
    stream error before its own header (the receiving side of a stream). ``close`` sends
    ``</stream:stream>`` and lets the connection go; a subclass may close more carefully."""

    transport: Any  # a TCP or TLS transport once connected (ITransport lacks what we use)
    parser: StreamParser
    closed: bool  # the connection is gone and the stream forgotten
    logger: logging.Logger = log  # each subclass logs under its own module's name
    close_reason = "connection lost"
    _closing = False  # our </stream:stream> went out
    # Whether our stream header went out; the initiating side sends it on connecting.
    _header_sent = True

    def log_label(self) -> str:
        """How the log lines of this stream begin, e.g. ``c2s 127.0.0.1:4242``."""
        return "stream"

    # Input -----------------------------------------------------------------------------

    def _events(self, data: bytes) -> list[Event]:
        """The events of one read: none while the stream closes, and none after a parser
        error, which is sent as a stream error (RFC 6120 §4.9.3, §11)."""
        if self._closing or self.closed:
            return []
        try:
            return self.parser.feed(data)
        except StreamError as e:
            self.close_with(e)
            return []

    # Closing ---------------------------------------------------------------------------

    def close_with(self, error: StreamError) -> None:
        """Send a stream error and close the stream (RFC 6120 §4.9.1.1)."""
        if self._closing or self.closed:
            return
        if not self._header_sent:
            # §4.9.1.2: a header first, even when the error is in the peer's header.
            self._send_error_header()
        self._error_sent(error)
        self.transport.write(error.to_bytes())
        self.close()

    def _send_error_header(self) -> None:
        """Send our stream header before a stream error when none went out yet: the receiving
        side overrides this; the initiating side sent its header on connecting."""

    def _error_sent(self, error: StreamError) -> None:
        """Log the stream error being sent and keep it as the reason of the close."""
        self.logger.info(
            "%s stream error %s%s",
            self.log_label(),
            error.condition,
            f" ({error.text})" if error.text else "",
        )
        self.close_reason = f"stream error {error.condition}"

    def close(self) -> None:
        """Close the stream (RFC 6120 §4.4), then the connection."""
        if self._closing or self.closed:
            return
        self._closing = True
        self.transport.write(STREAM_CLOSE)
        self.transport.loseConnection()


class OrderedXmlStream(XmlStream):
    """A stream whose events take effect in the order they arrived (RFC 6120 §10.1).

    The subclass initialises ``_backlog`` and ``_busy``, queues events in ``dataReceived``
    while ``_busy``, handles one event in ``_handle_event`` (a StreamError closes the stream;
    anything else unexpected goes to ``_unexpected``), and runs coroutines with ``_spawn``."""

    _backlog: deque[Any]
    _busy: bool

    @abc.abstractmethod
    def _handle_event(self, ev: Any) -> None:
        """Handle one event of the stream, in order."""

    @abc.abstractmethod
    def _unexpected(self, ev: Any) -> None:
        """Log a failure of our own (inside an ``except``) and answer what met it, if
        anything: ``ev`` is the event whose processing failed, when known."""

    @abc.abstractmethod
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the loop, as the owning process runs its tasks."""

    def _run_async(self, awaitable: Awaitable[Any], ev: Any = None) -> None:
        """Hold the next events back until ``awaitable`` (what ``ev`` started) is done."""
        self._busy = True

        async def run() -> None:
            try:
                await awaitable
            except StreamError as e:
                self.close_with(e)
            except Exception:
                self._unexpected(ev)
            finally:
                self._busy = False
                self._drain()

        self._spawn(run())

    def _drain(self) -> None:
        """Handle the events that waited, up to the next one that has to wait."""
        while self._backlog and not self._busy and not self._closing and not self.closed:
            self._handle_event(self._backlog.popleft())
        self._drained()

    def _drained(self) -> None:
        """The backlog is handled, or waits again: read again once it is empty."""
        if not self._backlog and not self.closed:
            with contextlib.suppress(Exception):
                self.transport.resumeProducing()

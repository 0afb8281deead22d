"""What the server's XML stream protocols share (RFC 6120 §4, §10.1).

``XmlStream`` is one stream over one connection: the peer's address for the logs, the events
of a read, and a stream error followed by the close of the stream (§4.9.1.1). Client streams,
server-to-server streams and both ends of a component link (XEP-0114) build on it.

``OrderedXmlStream`` adds the in-order processing of a stream's stanzas (§10.1): while the
processing of one waits for I/O, the next ones wait in a backlog, and reading pauses when the
backlog grows (the subclass's ``dataReceived`` queues them there while ``_busy``).
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Coroutine
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

"""What incoming and outgoing server-to-server streams share (RFC 6120 §4).

Parsing with one StreamParser per direction, the ``jabber:server`` stream header with the
dialback namespace declared (XEP-0220 §2.4.1), output, stream errors and closing, and timers on
the injected reactor.
"""

from __future__ import annotations

import abc
import logging
from typing import TYPE_CHECKING, Any

from lxml import etree
from twisted.internet import protocol
from twisted.python.failure import Failure

from core.xmpp.errors import StreamError
from core.xmpp.ns import NS_DIALBACK, NS_SERVER, QN_STREAM_ERROR
from core.xmpp.parser import StreamClose, StreamOpen, StreamParser
from core.xmpp.stanza import serialize
from core.xmpp.stream_header import check_header as check_stream_header
from core.xmpp.stream_header import header_bytes
from core.xmpp.xmlstream import XmlStream, peer_address

if TYPE_CHECKING:
    from core.s2s.service import S2SService

log = logging.getLogger(__name__)
Element = etree._Element


def check_header(ev: StreamOpen) -> None:
    """RFC 6120 §4.8, §4.7.5: the stream namespace and prefix, jabber:server, version 1.x."""
    check_stream_header(ev, NS_SERVER)


def stream_error_text(el: Element) -> str:
    """``condition (text)`` of a received ``<stream:error/>``, for logs."""
    condition, text = "undefined-condition", ""
    for c in el:
        if not isinstance(c.tag, str):
            continue
        local = etree.QName(c).localname
        if local == "text":
            text = c.text or ""
        else:
            condition = local
    return f"{condition} ({text})" if text else condition


class S2SStream(XmlStream):
    """The shared part of an s2s stream; subclasses handle the events."""

    direction = "?"
    logger = log

    def __init__(self, service: S2SService) -> None:
        self.service = service
        self.parser = StreamParser(max_stanza_bytes=service.config.max_stanza_size)
        self.tls_active = False
        self.peer = "?"
        self.closed = False
        self._closing = False
        self._header_sent = False
        self._active = True
        self._timers: list[Any] = []
        self.close_reason = "connection lost"

    # Connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = peer_address(self.transport)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        for t in self._timers:
            if t.active():
                t.cancel()
        self._timers.clear()
        self.stream_lost()

    def stream_lost(self) -> None:
        """Called once when the connection is gone."""

    def dataReceived(self, data: bytes) -> None:
        if self.closed or self._closing:
            return
        self._active = True
        for ev in self._events(data):
            if self._closing or self.closed:
                return
            try:
                if isinstance(ev, StreamOpen):
                    self.stream_opened(ev)
                elif isinstance(ev, StreamClose):
                    self.close_reason = "closed by the peer"
                    self.close()
                elif ev.tag == QN_STREAM_ERROR:
                    self.close_reason = f"stream error from the peer: {stream_error_text(ev)}"
                    self.peer_stream_error(ev)
                    self.close()
                else:
                    self.element(ev)
            except StreamError as e:
                self.close_with(e)
            except Exception:
                log.exception("s2s %s %s: unexpected failure", self.direction, self.peer)
                self.close_with(StreamError("internal-server-error"))

    @abc.abstractmethod
    def stream_opened(self, ev: StreamOpen) -> None:
        """The peer's stream header arrived (each direction checks and answers its own)."""

    @abc.abstractmethod
    def element(self, el: Element) -> None:
        """A first-level element of the stream arrived."""

    def peer_stream_error(self, el: Element) -> None:
        """A ``<stream:error/>`` arrived; the stream closes after this returns."""

    # Output ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed and not self._closing:
            self.transport.write(data)

    def send_element(self, el: Element) -> None:
        self.write(etree.tostring(el, encoding="utf-8", xml_declaration=False, with_tail=False))

    def send_stanza(self, stanza: Element) -> None:
        """A stanza from inside the server (jabber:client) onto this jabber:server stream."""
        self.write(serialize(stanza, NS_SERVER))

    def send_header(self, frm: str | None, to: str | None, stream_id: str | None) -> None:
        self._header_sent = True
        # XEP-0220 §2.4.1: the dialback namespace is declared on the stream header.
        self.write(
            header_bytes(
                NS_SERVER, frm=frm, to=to, stream_id=stream_id, extra_ns={"db": NS_DIALBACK}
            )
        )

    def log_label(self) -> str:
        return f"s2s {self.direction} {self.peer}"

    def _send_error_header(self) -> None:
        self.send_header(self.service.server.domain, None, None)

    # Timers ----------------------------------------------------------------------------

    def call_later(self, delay: float, fn: Any, *args: Any) -> Any:
        self._timers = [t for t in self._timers if t.active()]
        call = self.service.reactor.callLater(delay, fn, *args)
        self._timers.append(call)
        return call

    def start_idle_check(self, interval: float) -> None:
        """Close the stream after ``interval`` seconds without traffic (whitespace counts)."""
        if interval > 0:
            self.call_later(interval, self._idle_check, interval)

    def _idle_check(self, interval: float) -> None:
        if self.closed or self._closing:
            return
        if self._active:
            self._active = False
            self.call_later(interval, self._idle_check, interval)
            return
        self.close_reason = "idle"
        log.info("s2s %s %s closing: idle for %gs", self.direction, self.peer, interval)
        self.close()

"""The link of an external component to its server (XEP-0114 §3), component side: the
handshake both sides compute, the stream header, and the protocol of one connection. The
application around it (modules, reconnection, IQ tracking) is core.xmpp.component.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lxml import etree
from twisted.internet import protocol
from twisted.python.failure import Failure

from core.xmpp.errors import StreamError
from core.xmpp.ns import NS_CLIENT, NS_COMPONENT, NS_STREAMS, QN_STREAM, QN_STREAM_ERROR, qn
from core.xmpp.parser import StreamClose, StreamOpen, StreamParser
from core.xmpp.stream_header import header_bytes
from core.xmpp.xmlstream import XmlStream

if TYPE_CHECKING:
    from core.xmpp.component import ComponentApp

log = logging.getLogger(__name__)
Element = etree._Element

QN_HANDSHAKE = qn(NS_COMPONENT, "handshake")
# The link is parsed with its content namespace read as jabber:client (core.xmpp.parser), so
# that stanzas need no per-stanza copy; <handshake/> then arrives in jabber:client too.
_HANDSHAKE = frozenset({QN_HANDSHAKE, qn(NS_CLIENT, "handshake")})
# Larger than the c2s default: a component relays client stanzas with additions of its own.
DEFAULT_MAX_STANZA_SIZE = 1048576


# The handshake (XEP-0114 §3) ----------------------------------------------------------


def handshake_digest(stream_id: str, secret: str) -> str:
    """Lowercase hex SHA-1 of the stream id followed by the shared secret (XEP-0114 §3)."""
    return hashlib.sha1((stream_id + secret).encode("utf-8")).hexdigest()


def handshake_valid(stream_id: str, secret: str, given: str) -> bool:
    """Whether ``given`` (the text of a ``<handshake/>``) proves ``secret``; constant time."""
    expected = handshake_digest(stream_id, secret).encode("ascii")
    return hmac.compare_digest(expected, given.strip().lower().encode("utf-8"))


def stream_header(domain: str, instance: str | None) -> bytes:
    """The header a component opens its stream with (XEP-0114 §3: no version, no id)."""
    frm = f"{domain}/{instance}" if instance else None
    return header_bytes(NS_COMPONENT, to=domain, frm=frm, version=None, lang=None)


def stream_error_of(el: Element) -> StreamError | None:
    """The StreamError carried by a received ``<stream:error/>``, or None for other elements."""
    if el.tag != QN_STREAM_ERROR:
        return None
    for c in el:
        if not isinstance(c.tag, str):
            continue
        local = etree.QName(c).localname
        if local != "text":
            try:
                return StreamError(local, el.findtext("{*}text"))
            except ValueError:
                return StreamError("undefined-condition", local)
    return StreamError("undefined-condition")


# Reconnection ---------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with jitter: attempt n waits about initial * factor**n seconds,
    at most ``maximum``, less a random part of up to ``jitter`` of it, so that components
    that lost the core together do not come back in lockstep."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * rand())


def default_instance() -> str:
    """An instance id unique on this machine (host name and process id). Set one explicitly
    for shard instances that should keep their share of keys across restarts."""
    return f"{socket.gethostname()}-{os.getpid()}"


# The stream ------------------------------------------------------------------------------

CONNECTING, HANDSHAKE, LINKED, CLOSED = range(4)


class ComponentStream(XmlStream):
    """One connection of a component to the server: header, handshake, then stanzas."""

    logger = log

    def __init__(self, app: ComponentApp) -> None:
        self.app = app
        self.parser = StreamParser(
            max_stanza_bytes=app.max_stanza_size, content_ns_map={NS_COMPONENT: NS_CLIENT}
        )
        self.state = CONNECTING
        self.closed = False  # the connection is gone (state CLOSED)
        self.stream_id = ""
        self.error: StreamError | None = None  # the stream error received, if any
        self.close_reason = "connection lost"
        self._closing = False
        self._timer: Any = None
        self._paused = False
        self.lost: asyncio.Future[None] | None = None

    def connectionMade(self) -> None:
        with contextlib.suppress(Exception):
            self.lost = asyncio.get_running_loop().create_future()
        with contextlib.suppress(Exception):
            # Detects a core that vanished without closing the connection.
            self.transport.setTcpKeepAlive(1)
        self.state = HANDSHAKE
        self.transport.write(stream_header(self.app.domain, self.app.instance))
        self._timer = self.app.reactor.callLater(self.app.handshake_timeout, self._too_slow)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        was_linked = self.state == LINKED
        self.state = CLOSED
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        self.app._stream_lost(self, was_linked)

    def _too_slow(self) -> None:
        if self.state == HANDSHAKE:
            self.close_reason = "no handshake answer"
            self.close()

    def dataReceived(self, data: bytes) -> None:
        for ev in self._events(data):
            try:
                self._event(ev)
            except StreamError as e:
                self.close_with(e)
            if self._closing or self.state == CLOSED:
                return

    def _event(self, ev: Any) -> None:
        if isinstance(ev, StreamOpen):
            self._stream_open(ev)
        elif isinstance(ev, StreamClose):
            self.close_reason = "closed by the server"
            self.close()
        elif self.state == HANDSHAKE:
            self._handshake_answer(ev)
        else:
            err = stream_error_of(ev)
            if err is not None:
                self._stream_error(err)
            else:
                self.app._incoming(ev)

    def _stream_open(self, ev: StreamOpen) -> None:
        if self.stream_id:
            raise StreamError("not-well-formed", "a second stream header")
        if ev.tag != QN_STREAM:
            raise StreamError("invalid-namespace", "the stream element must be in " + NS_STREAMS)
        if ev.nsmap.get(None) != NS_COMPONENT:
            raise StreamError("invalid-namespace", "expected a jabber:component:accept stream")
        self.stream_id = ev.attrs.get("id", "")
        if not self.stream_id:
            raise StreamError("invalid-xml", "the stream header has no id")
        digest = handshake_digest(self.stream_id, self.app.secret)
        self.transport.write(f"<handshake>{digest}</handshake>".encode())

    def _handshake_answer(self, el: Element) -> None:
        if el.tag in _HANDSHAKE and not self.stream_id:
            raise StreamError("not-well-formed", "handshake before the stream header")
        if el.tag in _HANDSHAKE:
            # XEP-0114 §3: an empty <handshake/> means the credentials were accepted.
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self.state = LINKED
            self.app._linked(self)
            return
        err = stream_error_of(el)
        if err is not None:
            self._stream_error(err)
            return
        raise StreamError("not-authorized", "stanza before the handshake was accepted")

    def _stream_error(self, err: StreamError) -> None:
        self.error = err
        self.close_reason = f"stream error {err.condition}" + (f" ({err.text})" if err.text else "")
        self.close()

    # Output ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.state != CLOSED and not self._closing:
            self.transport.write(data)

    def _error_sent(self, error: StreamError) -> None:
        # Our end of the link found the server's stream at fault: worth a warning.
        log.warning(
            "component %s: sending stream error %s%s",
            self.app.domain,
            error.condition,
            f" ({error.text})" if error.text else "",
        )
        self.close_reason = f"sent stream error {error.condition}"

    def pause_reading(self, paused: bool) -> None:
        if paused == self._paused or self.state == CLOSED:
            return
        self._paused = paused
        with contextlib.suppress(Exception):
            if paused:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

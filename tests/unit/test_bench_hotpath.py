"""Optimisations of the message path made after measuring (bench/README.md): a stanza for a
client goes to the socket at once when Twisted has nothing queued for it (core/c2s.py
``write_now``), and never out of order."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import abstract, tcp
from twisted.internet.testing import MemoryReactor, StringTransport

from core.c2s import write_now


class _Socket:
    """Takes at most ``room`` bytes per send, or raises ``error``."""

    def __init__(self, room: int = 1 << 20, error: OSError | None = None) -> None:
        self.room = room
        self.error = error
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        taken = data[: self.room]
        self.sent.append(taken)
        return len(taken)


class _Transport(tcp.Server):
    """A plain TCP transport as the fast path sees it, without a reactor or a real socket."""

    def __init__(self, sock: _Socket, **overrides: Any) -> None:  # no super(): no reactor
        self.TLS = False
        self.connected = 1
        self.disconnecting = False
        self._writeDisconnected = False
        self._tempDataLen = 0
        self.dataBuffer = b""
        self.offset = 0
        self.socket = sock
        self.written: list[bytes] = []
        for name, value in overrides.items():
            setattr(self, name, value)

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_an_idle_transport_gets_the_bytes_at_once() -> None:
    """Nothing queued: the stanza goes straight to the socket, not through the queue."""
    sock = _Socket()
    t = _Transport(sock)
    write_now(t, b"<message/>")
    assert sock.sent == [b"<message/>"]
    assert t.written == []


def test_what_the_socket_does_not_take_is_queued() -> None:
    """A partial send queues exactly the rest, so nothing is lost or reordered."""
    sock = _Socket(room=4)
    t = _Transport(sock)
    write_now(t, b"<message/>")
    assert sock.sent == [b"<mes"]
    assert t.written == [b"sage/>"]


@pytest.mark.parametrize("error", [BlockingIOError(), ConnectionResetError(), BrokenPipeError()])
def test_a_socket_error_leaves_the_stanza_to_the_queue(error: OSError) -> None:
    """A full or broken socket: the bytes go through transport.write, whose reactor
    handling reports the connection's fate as before."""
    t = _Transport(_Socket(error=error))
    write_now(t, b"<message/>")
    assert t.written == [b"<message/>"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"_tempDataLen": 5},
        {"dataBuffer": b"earlier", "offset": 2},
        {"TLS": True},
        {"disconnecting": True},
        {"connected": 0},
        {"_writeDisconnected": True},
    ],
)
def test_queued_data_tls_or_closing_take_the_normal_path(overrides: dict[str, Any]) -> None:
    """Earlier bytes still queued, a TLS layer or a closing connection: no direct send."""
    sock = _Socket()
    t = _Transport(sock, **overrides)
    write_now(t, b"<message/>")
    assert sock.sent == []
    assert t.written == [b"<message/>"]


def test_other_transports_take_the_normal_path() -> None:
    """A transport without these attributes (memory, hosted sessions) is written as before."""
    t = StringTransport()
    write_now(t, b"<message/>")
    assert t.value() == b"<message/>"


def test_twisted_still_has_the_attributes_the_fast_path_reads() -> None:
    """The fast path reads Twisted's write queue; if a Twisted release renames it, this
    fails instead of the fast path silently turning itself off."""
    fd = abstract.FileDescriptor(reactor=MemoryReactor())
    assert fd._tempDataLen == 0
    assert fd.dataBuffer == b""
    assert fd.offset == 0
    assert fd._writeDisconnected is False
    assert fd.disconnecting in (0, False)
    assert tcp.Server.TLS is False


def test_a_tls_wrapper_never_reaches_the_raw_socket() -> None:
    """Direct TLS wraps the TCP transport and forwards attribute reads to it; the stanza must
    still go through the TLS layer, never to the socket in cleartext."""
    from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

    sock = _Socket()
    raw = _Transport(sock)
    wrapper = ProtocolWrapper(WrappingFactory(None), None)  # type: ignore[arg-type]
    wrapper.transport = raw
    assert wrapper.TLS is False and wrapper.socket is sock  # what duck typing would see
    write_now(wrapper, b"<message/>")
    assert sock.sent == []
    assert raw.written == [b"<message/>"]


def test_no_delay_is_set_on_tcp_and_skipped_elsewhere() -> None:
    """set_no_delay turns Nagle's algorithm off on a real TCP socket, and leaves transports
    without the method (memory transports) alone."""
    import socket

    from core.c2s import set_no_delay

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:

        class _Tcp:
            def setTcpNoDelay(self, enabled: bool) -> None:
                accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(enabled))

        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        set_no_delay(_Tcp())
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        set_no_delay(StringTransport())  # no such method: nothing happens
    finally:
        for s in (client, accepted, server):
            s.close()

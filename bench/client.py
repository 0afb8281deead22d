"""A cheap XMPP client for load generation (RFC 6120 negotiation, RFC 6121 stanzas).

No XML library runs here: what the client sends is formatted from byte templates, and what it
receives is located with ``bytes.find``/``bytes.count``. That is enough against servers that
behave, and it keeps the generator from becoming the bottleneck of the benchmark: the figures
must measure the server.

Negotiation (RFC 6120 §4-§7): stream header, optional STARTTLS (§5), SASL SCRAM-SHA-1
(RFC 5802, without channel binding: gs2 header ``n,,``) or PLAIN (RFC 4616), stream restart,
resource binding (§7). After that a connection hands every received chunk to a callback set
by the scenario (``on_data``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import ssl
import time
from collections.abc import Callable
from functools import lru_cache

NS_CLIENT = "jabber:client"
NS_STREAMS = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_ROSTER = "jabber:iq:roster"
NS_PING = "urn:xmpp:ping"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_DATA = "jabber:x:data"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"

MECHANISMS = ("SCRAM-SHA-1", "PLAIN")


class NegotiationError(Exception):
    """The server refused or broke the negotiation; the message holds what it sent."""


def stream_header(domain: str) -> bytes:
    """The initial stream header (RFC 6120 §4.7)."""
    return (
        f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}' "
        f"to='{domain}' version='1.0' xml:lang='en'>"
    ).encode()


def auth_element(mechanism: str, initial: bytes) -> bytes:
    """``<auth/>`` with the initial response; empty data is sent as '=' (RFC 6120 §6.4.2)."""
    text = base64.b64encode(initial).decode() or "="
    return f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{text}</auth>".encode()


def response_element(data: bytes) -> bytes:
    """``<response/>`` carrying the next SASL message (RFC 6120 §6.4.3)."""
    text = base64.b64encode(data).decode() or "="
    return f"<response xmlns='{NS_SASL}'>{text}</response>".encode()


def bind_element(resource: str) -> bytes:
    """A resource binding request for ``resource`` (RFC 6120 §7.6)."""
    return (
        f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>{resource}</resource>"
        "</bind></iq>"
    ).encode()


def ping_element(domain: str, ident: str = "ping") -> bytes:
    """A XEP-0199 ping to the server: its answer tells that earlier stanzas were processed."""
    return f"<iq type='get' id='{ident}' to='{domain}'><ping xmlns='{NS_PING}'/></iq>".encode()


def muc_join(room: str, nick: str) -> bytes:
    """Entering ``room`` as ``nick`` (XEP-0045 §7.2.1), asking for no discussion history
    (§7.2.15: ``maxstanzas='0'``)."""
    return (
        f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>"
    ).encode()


def muc_instant_room(room: str, ident: str = "instant") -> bytes:
    """XEP-0045 §10.1.2: the owner of a new (locked) room accepts the default configuration
    by submitting an empty form, which unlocks it: an instant room."""
    return (
        f"<iq type='set' id='{ident}' to='{room}'><query xmlns='{NS_MUC_OWNER}'>"
        f"<x xmlns='{NS_DATA}' type='submit'/></query></iq>"
    ).encode()


def disco_info(to: str, ident: str = "info") -> bytes:
    """A XEP-0030 disco#info request to ``to``."""
    return f"<iq type='get' id='{ident}' to='{to}'><query xmlns='{NS_DISCO_INFO}'/></iq>".encode()


def groupchat_message(room: str, body: str) -> bytes:
    """A message to every occupant of ``room`` (XEP-0045 §7.4); ``body`` is sent as is, so it
    must hold no markup characters."""
    return f"<message to='{room}' type='groupchat'><body>{body}</body></message>".encode()


ROSTER_GET = f"<iq type='get' id='roster'><query xmlns='{NS_ROSTER}'/></iq>".encode()
PRESENCE = b"<presence/>"
STREAM_CLOSE = b"</stream:stream>"
STARTTLS = f"<starttls xmlns='{NS_TLS}'/>".encode()


def element_end(
    buf: bytes | bytearray, names: tuple[bytes, ...], start: int = 0
) -> tuple[int, int]:
    """(start, end) of the first complete element named one of ``names`` in ``buf``.

    Finds ``<name`` followed by a space, ``>`` or ``/``, then either an empty-element tag or
    the matching end tag; (-1, -1) while none is complete. Good enough for the elements of
    negotiation, whose attribute values never contain ``>``."""
    best = (-1, -1)
    for name in names:
        pos = start
        while True:
            i = buf.find(b"<" + name, pos)
            if i < 0:
                break
            after = buf[i + 1 + len(name) : i + 2 + len(name)]
            if after and after not in (b" ", b">", b"/", b"\t", b"\r", b"\n"):
                pos = i + 1
                continue
            j = buf.find(b">", i)
            if j < 0:
                break
            if buf[j - 1] == 0x2F:  # "/": an empty-element tag
                end = j + 1
            else:
                k = buf.find(b"</" + name + b">", j)
                if k < 0:
                    break
                end = k + len(name) + 3
            if best[0] < 0 or i < best[0]:
                best = (i, end)
            break
    return best


def element_text(el: bytes) -> bytes:
    """The character data of a simple element ``<x ...>text</x>`` (empty if none)."""
    i = el.find(b">")
    if el[i - 1] == 0x2F:
        return b""
    return el[i + 1 : el.rfind(b"</")]


@lru_cache(maxsize=64)
def _scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    """ClientKey, StoredKey, ServerKey of RFC 5802 §3. Cached: PBKDF2 is deliberately slow,
    and the benchmark's accounts share one password and salt, so the generator computes it
    once instead of once per login (a real client caches it too)."""
    salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha1")
    server_key = hmac.digest(salted, b"Server Key", "sha1")
    return client_key, hashlib.sha1(client_key).digest(), server_key


class ScramSha1:
    """The client side of SCRAM-SHA-1 without channel binding (RFC 5802 §5, gs2 ``n,,``).

    Usernames are plain ASCII without ',' or '=', so no saslname escaping is needed."""

    mechanism = "SCRAM-SHA-1"

    def __init__(self, username: str, password: str, nonce: str | None = None) -> None:
        self.password = password
        self.nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n={username},r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return f"n,,{self.first_bare}".encode()

    def respond(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = dict(a.split("=", 1) for a in text.split(",") if "=" in a)
        nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.nonce):
            raise NegotiationError("the server did not extend the client nonce")
        without_proof = f"c=biws,r={nonce}"  # biws = base64("n,,")
        auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        client_key, stored_key, server_key = _scram_keys(self.password, salt, iterations)
        signature = hmac.digest(stored_key, auth_message, "sha1")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_signature = hmac.digest(server_key, auth_message, "sha1")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        text = server_final.decode()
        if not text.startswith("v=") or not hmac.compare_digest(
            base64.b64decode(text[2:]), self.server_signature
        ):
            raise NegotiationError(f"bad server signature {text!r}")


def client_tls_context() -> ssl.SSLContext:
    """TLS without certificate checks: the servers under test use self-signed certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Connection(asyncio.Protocol):
    """One client stream. During negotiation received bytes collect in ``buf`` and
    coroutines wait for elements; afterwards every chunk goes to ``on_data``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.on_data: Callable[[bytes], None] | None = None
        self.closed = False
        self.jid = ""
        self._waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data(data)
            return
        self.buf += data
        self._wake()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # Negotiation ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def expect(
        self, *names: bytes, deadline: float, containing: tuple[bytes, ...] = ()
    ) -> bytes:
        """Wait for the first complete element named one of ``names`` (and, with
        ``containing``, holding one of those byte strings: other complete elements are
        passed over and dropped); returns its bytes and drops everything received before it.
        Raises on a stream error, a closed connection or the deadline (a
        ``time.monotonic()`` value)."""
        loop = asyncio.get_running_loop()
        while True:
            start, end = element_end(self.buf, names)
            while start >= 0 and containing:
                if any(self.buf.find(c, start, end) >= 0 for c in containing):
                    break
                del self.buf[:end]
                start, end = element_end(self.buf, names)
            if start >= 0:
                el = bytes(self.buf[start:end])
                del self.buf[:end]
                return el
            if b"<stream:error" in self.buf:
                raise NegotiationError(f"stream error: {bytes(self.buf[-300:])!r}")
            if self.closed:
                raise NegotiationError(f"connection closed; received {bytes(self.buf[-300:])!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NegotiationError(f"timed out waiting for {names}")
            self._waiter = loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, remaining)
            except TimeoutError:
                pass
            finally:
                self._waiter = None

    async def open_stream(self, domain: str, deadline: float) -> bytes:
        self.write(stream_header(domain))
        return await self.expect(b"stream:features", deadline=deadline)

    async def login(
        self,
        *,
        domain: str,
        username: str,
        password: str,
        resource: str,
        mechanism: str = "SCRAM-SHA-1",
        tls: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> str:
        """Negotiate up to a bound resource (RFC 6120 §4-§7); returns the full JID."""
        deadline = time.monotonic() + timeout
        features = await self.open_stream(domain, deadline)
        if tls is not None:
            if b"<starttls" not in features:
                raise NegotiationError("the server offers no STARTTLS")
            self.write(STARTTLS)
            answer = await self.expect(b"proceed", b"failure", deadline=deadline)
            if not answer.startswith(b"<proceed"):
                raise NegotiationError(f"STARTTLS refused: {answer!r}")
            assert self.transport is not None
            loop = asyncio.get_running_loop()
            self.transport = await asyncio.wait_for(
                loop.start_tls(self.transport, self, tls, server_hostname=domain),
                max(0.001, deadline - time.monotonic()),
            )
            self.buf.clear()
            features = await self.open_stream(domain, deadline)
        if mechanism.encode() + b"<" not in features:
            raise NegotiationError(f"{mechanism} is not offered: {features!r}")
        if mechanism == "PLAIN":
            self.write(auth_element("PLAIN", f"\0{username}\0{password}".encode()))
            result = await self.expect(b"success", b"failure", deadline=deadline)
        else:
            scram = ScramSha1(username, password)
            self.write(auth_element(scram.mechanism, scram.first()))
            result = await self.expect(b"challenge", b"success", b"failure", deadline=deadline)
            if result.startswith(b"<challenge"):
                server_first = base64.b64decode(element_text(result))
                self.write(response_element(scram.respond(server_first)))
                result = await self.expect(b"success", b"failure", deadline=deadline)
            if result.startswith(b"<success"):
                scram.verify(base64.b64decode(element_text(result)))
        if not result.startswith(b"<success"):
            raise NegotiationError(f"authentication failed: {result!r}")
        await self.open_stream(domain, deadline)
        self.write(bind_element(resource))
        reply = await self.expect(b"iq", deadline=deadline)
        if b"type='result'" not in reply and b'type="result"' not in reply:
            raise NegotiationError(f"bind failed: {reply!r}")
        start = reply.find(b"<jid>")
        self.jid = reply[start + 5 : reply.find(b"</jid>")].decode() if start >= 0 else ""
        return self.jid

    async def ping(self, domain: str, timeout: float = 30.0) -> None:
        """Round trip to the server: once answered, every stanza sent before was processed
        (a server handles one stream's stanzas in order, RFC 6120 §10.1)."""
        self.write(ping_element(domain))
        await self.expect(b"iq", deadline=time.monotonic() + timeout)

    def close(self) -> None:
        """Close the stream (RFC 6120 §4.4) and the connection without waiting."""
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(STREAM_CLOSE)
            t.close()


async def connect(host: str, port: int, timeout: float = 30.0) -> Connection:
    """A TCP connection to ``host:port`` with a fresh :class:`Connection` protocol."""
    loop = asyncio.get_running_loop()
    _transport, conn = await asyncio.wait_for(
        loop.create_connection(Connection, host, port), timeout
    )
    return conn

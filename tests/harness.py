"""Helpers for end-to-end tests: real switchboard processes, a raw XMPP client for precise
protocol checks, and slixmpp clients as real peers. Everything runs on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis
from lxml import etree

from core.xmpp.errors import StreamError
from core.xmpp.ns import NS_BIND, NS_CLIENT, NS_SASL, NS_STANZAS, NS_STREAMS, NS_TLS, qn
from core.xmpp.parser import StreamClose, StreamOpen, StreamParser
from core.xmpp.sasl import ScramClient, plain_initial, tls_server_end_point

ROOT = Path(__file__).resolve().parent.parent
_db_numbers = itertools.cycle(range(1, 16))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def separate_db(redis_server_url: str) -> str:
    """A URL of the session Redis on a database of its own, emptied."""
    base = redis_server_url.rsplit("/", 1)[0]
    url = f"{base}/{next(_db_numbers)}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


class CoreProcess:
    """A real ``switchboard core`` on free ports, configured through the environment."""

    def __init__(
        self,
        redis_url: str,
        workdir: Path,
        *,
        domain: str = "localhost",
        env: dict[str, str] | None = None,
        s2s: bool = False,
    ) -> None:
        """``s2s``: listen for server-to-server streams on a free loopback port, which also
        turns federation on (it is off while ``s2s_port`` is 0)."""
        self.redis_url = redis_url
        self.workdir = workdir
        self.domain = domain
        self.c2s_port = free_port()
        self.tls_port = free_port()
        self.admin_port = free_port()
        self.component_port = free_port()
        self.s2s_port = free_port() if s2s else 0
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "core.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        env.update(
            SWITCHBOARD_DOMAIN=self.domain,
            SWITCHBOARD_REDIS_URL=self.redis_url,
            SWITCHBOARD_DATA_DIR=str(self.workdir / "data"),
            SWITCHBOARD_C2S_PORT=str(self.c2s_port),
            SWITCHBOARD_C2S_DIRECT_TLS_PORT=str(self.tls_port),
            SWITCHBOARD_ADMIN_PORT=str(self.admin_port),
            SWITCHBOARD_COMPONENT_LISTENER_PORT=str(self.component_port),
            SWITCHBOARD_S2S_PORT=str(self.s2s_port),
            SWITCHBOARD_S2S_INTERFACE="127.0.0.1",
            SWITCHBOARD_AUTH_FAILURE_DELAY="0.05",
            SWITCHBOARD_LOG_LEVEL="debug",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> CoreProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "core"],
            cwd=self.workdir,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_port(self.c2s_port, proc=self.proc)
        if self.s2s_port:
            wait_port(self.s2s_port, proc=self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def restart(self) -> CoreProcess:
        self.stop()
        return self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 5.0) -> str:
        """Wait until a line of the log contains ``text``; returns that line."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log().splitlines():
                if text in line:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line contains {text!r}")
            time.sleep(0.02)

    def add_user(self, name: str, password: str) -> None:
        """Create an account through the CLI's code path, against this core's Redis."""
        from core.storage.accounts import AccountStore

        async def create() -> None:
            client = redis.asyncio.Redis.from_url(self.redis_url)
            try:
                await AccountStore(client).create(name, self.domain, password)
            finally:
                await client.aclose()

        asyncio.run(create())


def client_ssl_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawClient:
    """A minimal XMPP client over asyncio streams, for checks at the protocol level."""

    def __init__(self, port: int, domain: str = "localhost") -> None:
        self.port = port
        self.domain = domain
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.parser = StreamParser(max_stanza_bytes=10 * 1024 * 1024)
        self.events: list[Any] = []
        self.header: StreamOpen | None = None
        self.jid: str | None = None

    async def connect(
        self, *, tls: bool = False, alpn: list[str] | None = None, source: str | None = None
    ) -> RawClient:
        """Connect (direct TLS with ``tls``, offering ``alpn``), from the loopback address
        ``source`` if given: every 127.0.0.0/8 address reaches the server, which lets a test
        appear as several remote addresses."""
        ctx = None
        if tls:
            ctx = client_ssl_context()
            if alpn:
                ctx.set_alpn_protocols(alpn)
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1",
            self.port,
            ssl=ctx,
            server_hostname=self.domain if tls else None,
            local_addr=(source, 0) if source else None,
        )
        return self

    @property
    def sockname(self) -> str:
        """This end's ``host:port``, as the server's log names the connection."""
        assert self.writer is not None
        host, port = self.writer.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    async def send(self, data: bytes | str) -> None:
        assert self.writer is not None
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def open_stream(self, *, to: str | None = None, extra: str = "") -> etree._Element:
        """Send a stream header and return the stream features."""
        to = self.domain if to is None else to
        await self.send(
            f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' "
            f"xmlns:stream='{NS_STREAMS}' to='{to}' version='1.0'{extra}>"
        )
        ev = await self.next_event()
        assert isinstance(ev, StreamOpen), ev
        self.header = ev
        return await self.next_element()

    async def next_event(self, timeout: float = 5.0) -> Any:
        assert self.reader is not None
        while not self.events:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return None
            self.events.extend(self.parser.feed(data))
        return self.events.pop(0)

    async def next_element(self, timeout: float = 5.0) -> etree._Element:
        ev = await self.next_event(timeout)
        if not isinstance(ev, etree._Element):
            raise AssertionError(f"expected an element, got {ev!r}")
        return ev

    async def stream_error(self, timeout: float = 5.0) -> str | None:
        """Read until a <stream:error/> and return its condition; None if the connection
        ended without one. Stanzas and other elements before it are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no stream error")
            try:
                ev = await self.next_event(remaining)
            except (ConnectionError, StreamError):
                return None
            if ev is None or isinstance(ev, StreamClose):
                return None
            if isinstance(ev, etree._Element):
                condition = stream_error_condition(ev)
                if condition is not None:
                    return condition

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the server closed the stream and the connection."""
        assert self.reader is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = await self.next_event(max(deadline - time.monotonic(), 0.01))
            except ConnectionError:
                return True
            except TimeoutError:
                return False
            if ev is None:
                return True
        return False

    async def starttls(self) -> etree._Element:
        await self.send(f"<starttls xmlns='{NS_TLS}'/>")
        proceed = await self.next_element()
        assert proceed.tag == qn(NS_TLS, "proceed"), etree.tostring(proceed)
        assert self.writer is not None
        await self.writer.start_tls(client_ssl_context(), server_hostname=self.domain)
        self.parser.reset()
        return await self.open_stream()

    async def auth(
        self, user: str, password: str, mechanism: str = "SCRAM-SHA-256"
    ) -> etree._Element:
        """Run a SASL exchange; returns the final <success/> or <failure/> element."""
        if mechanism == "PLAIN":
            await self.send(_auth(mechanism, plain_initial(user, password)))
            return await self.next_element()
        hash_name = "sha256" if "256" in mechanism else "sha1"
        cb_type = cb_data = None
        if mechanism.endswith("-PLUS"):
            assert self.writer is not None
            # The stdlib ssl module has no keying-material exporter, so the raw client binds
            # to the server certificate (RFC 5929 tls-server-end-point).
            sslobj = self.writer.get_extra_info("ssl_object")
            cb_type = "tls-server-end-point"
            cb_data = tls_server_end_point(sslobj.getpeercert(binary_form=True))
        client = ScramClient(
            hash_name,
            user,
            password,
            cb_type=cb_type,
            cb_data=cb_data,
            plus_advertised=cb_type is not None,
        )
        await self.send(_auth(client.mechanism, client.first()))
        el = await self.next_element()
        if el.tag != qn(NS_SASL, "challenge"):
            return el
        await self.send(_sasl("response", client.respond(base64.b64decode(el.text or ""))))
        el = await self.next_element()
        if el.tag == qn(NS_SASL, "success"):
            client.verify(base64.b64decode(el.text or ""))
        return el

    async def login(
        self,
        user: str,
        password: str,
        *,
        resource: str = "raw",
        mechanism: str = "SCRAM-SHA-256",
        tls: str = "starttls",
    ) -> str:
        """Full negotiation up to a bound resource; returns the bound full JID."""
        await self.connect(tls=(tls == "direct"))
        await self.open_stream()
        if tls == "starttls":
            await self.starttls()
        result = await self.auth(user, password, mechanism)
        assert result.tag == qn(NS_SASL, "success"), etree.tostring(result)
        self.parser.reset()
        await self.open_stream()
        await self.send(
            f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>{resource}</resource>"
            "</bind></iq>"
        )
        reply = await self.next_element()
        assert reply.get("type") == "result", etree.tostring(reply)
        self.jid = reply.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        assert self.jid
        return self.jid

    async def authenticate(
        self,
        user: str,
        password: str,
        *,
        mechanism: str = "SCRAM-SHA-256",
        tls: str = "starttls",
        source: str | None = None,
    ) -> etree._Element:
        """Connect and negotiate up to the restart after SASL; returns the new features."""
        await self.connect(tls=(tls == "direct"), source=source)
        await self.open_stream()
        if tls == "starttls":
            await self.starttls()
        result = await self.auth(user, password, mechanism)
        assert result.tag == qn(NS_SASL, "success"), etree.tostring(result)
        self.parser.reset()
        return await self.open_stream()

    async def request(self, xml: str, timeout: float = 5.0) -> etree._Element:
        """Send an IQ and return the IQ that answers it (same id); what arrives before it is
        skipped, except a stream error, which fails."""
        sent = etree.fromstring(f"<x xmlns='{NS_CLIENT}'>{xml}</x>")[0]
        await self.send(xml)
        while True:
            el = await self.next_element(timeout)
            assert stream_error_condition(el) is None, etree.tostring(el)
            if el.tag == qn(NS_CLIENT, "iq") and el.get("id") == sent.get("id"):
                return el

    async def bind(self, resource: str | None) -> etree._Element:
        """Send a bind request (without <resource/> when None); returns the reply, and sets
        ``jid`` when it is a result."""
        res = "" if resource is None else f"<resource>{resource}</resource>"
        reply = await self.request(
            f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'>{res}</bind></iq>"
        )
        if reply.get("type") == "result":
            self.jid = reply.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        return reply

    async def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.write(b"</stream:stream>")
                self.writer.close()
            self.writer = None


class OpenSSLClient:
    """A blocking client whose TLS layer is pyOpenSSL, for what the stdlib ssl module lacks:
    the keying-material exporter behind the tls-exporter channel binding (RFC 9266)."""

    def __init__(self, port: int, domain: str = "localhost", timeout: float = 5.0) -> None:
        self.domain = domain
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        # A blocking socket with a receive timeout: pyOpenSSL needs the former, a test
        # needs the latter.
        self.sock.settimeout(None)
        secs = int(timeout)
        self.sock.setsockopt(
            socket.SOL_SOCKET,
            socket.SO_RCVTIMEO,
            struct.pack("ll", secs, int((timeout - secs) * 1e6)),
        )
        self.conn: Any = None
        self.parser = StreamParser()
        self.events: list[Any] = []

    def send(self, data: str) -> None:
        (self.conn or self.sock).sendall(data.encode())

    def next_element(self) -> etree._Element:
        while not self.events:
            data = (self.conn or self.sock).recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.events.extend(self.parser.feed(data))
        ev = self.events.pop(0)
        if isinstance(ev, StreamOpen):
            return self.next_element()
        assert isinstance(ev, etree._Element), ev
        return ev

    def open_stream(self) -> etree._Element:
        self.send(
            f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' "
            f"xmlns:stream='{NS_STREAMS}' to='{self.domain}' version='1.0'>"
        )
        return self.next_element()

    def starttls(self) -> etree._Element:
        from OpenSSL import SSL

        self.open_stream()
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        assert self.next_element().tag == qn(NS_TLS, "proceed")
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *_: True)
        self.conn = SSL.Connection(ctx, self.sock)
        self.conn.set_tlsext_host_name(self.domain.encode())
        self.conn.set_connect_state()
        self.conn.do_handshake()
        self.parser.reset()
        return self.open_stream()

    def tls_exporter(self) -> bytes:
        """RFC 9266 §2: 32 bytes exported with the label EXPORTER-Channel-Binding."""
        assert self.conn is not None
        return self.conn.export_keying_material(b"EXPORTER-Channel-Binding", 32)

    def scram_plus(self, user: str, password: str, cb_data: bytes) -> etree._Element:
        """SCRAM-SHA-256-PLUS bound with tls-exporter; returns <success/> or <failure/>."""
        client = ScramClient(
            "sha256", user, password, cb_type="tls-exporter", cb_data=cb_data, plus_advertised=True
        )
        self.send(_auth(client.mechanism, client.first()))
        el = self.next_element()
        if el.tag != qn(NS_SASL, "challenge"):
            return el
        self.send(_sasl("response", client.respond(base64.b64decode(el.text or ""))))
        el = self.next_element()
        if el.tag == qn(NS_SASL, "success"):
            client.verify(base64.b64decode(el.text or ""))
        return el

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("</stream:stream>")
        with contextlib.suppress(Exception):
            if self.conn is not None:
                self.conn.shutdown()
        self.sock.close()


def _auth(mechanism: str, data: bytes) -> str:
    text = base64.b64encode(data).decode() or "="
    return f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{text}</auth>"


def _sasl(name: str, data: bytes) -> str:
    return f"<{name} xmlns='{NS_SASL}'>{base64.b64encode(data).decode() or '='}</{name}>"


def stanza_error(el: etree._Element) -> tuple[str | None, str | None]:
    """(type, condition) of a stanza's <error/>; (None, None) without one."""
    err = el.find(qn(NS_CLIENT, "error"))
    if err is None:
        return None, None
    names = [etree.QName(c).localname for c in err if etree.QName(c).namespace == NS_STANZAS]
    return err.get("type"), next((n for n in names if n != "text"), None)


def stream_error_condition(el: etree._Element) -> str | None:
    """The condition of a <stream:error/>, or None if ``el`` is not one."""
    if el.tag != qn(NS_STREAMS, "error"):
        return None
    for c in el:
        local = etree.QName(c).localname
        if local != "text":
            return local
    return None


@contextlib.asynccontextmanager
async def slix_client(
    port: int,
    jid: str,
    password: str,
    *,
    presence: bool = True,
    plugins: tuple[str, ...] = ("xep_0030", "xep_0199"),
    timeout: float = 10.0,
    mechanism: str | None = None,
    direct_tls: bool = False,
) -> AsyncIterator[Any]:
    """A connected slixmpp client (session started) that records the stanzas it receives in
    ``client.inbox`` (an asyncio.Queue of message stanzas) and ``client.presences``.

    ``mechanism`` forces one SASL mechanism; ``direct_tls`` connects with TLS from the first
    byte (XEP-0368, ALPN ``xmpp-client``) instead of STARTTLS."""
    import slixmpp

    client = slixmpp.ClientXMPP(jid, password)
    client.ssl_context = client_ssl_context()
    client.enable_direct_tls = direct_tls
    client.enable_starttls = not direct_tls
    if direct_tls:
        client.ssl_context.set_alpn_protocols(["xmpp-client"])
    for p in plugins:
        client.register_plugin(p)
    if mechanism is not None:
        client.plugin["feature_mechanisms"].use_mech = mechanism
    client.inbox = asyncio.Queue()
    client.presences = asyncio.Queue()
    started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def on_start(_: Any) -> None:
        if presence:
            client.send_presence()
        if not started.done():
            started.set_result(True)

    def on_failed(*_: Any) -> None:
        if not started.done():
            started.set_exception(AssertionError(f"authentication failed for {jid}"))

    client.add_event_handler("session_start", on_start)
    client.add_event_handler("failed_all_auth", on_failed)
    client.add_event_handler("message", lambda m: client.inbox.put_nowait(m))
    client.add_event_handler("presence", lambda p: client.presences.put_nowait(p))
    client.connect(host="127.0.0.1", port=port)
    try:
        await asyncio.wait_for(started, timeout)
        yield client
    finally:
        client.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnected, 3)

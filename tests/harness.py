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
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis
from lxml import etree

from core.xmpp.ns import NS_BIND, NS_CLIENT, NS_SASL, NS_STREAMS, NS_TLS, qn
from core.xmpp.parser import StreamClose, StreamOpen, StreamParser
from core.xmpp.sasl import ScramClient, plain_initial, tls_server_end_point

ROOT = Path(__file__).resolve().parent.parent
_db_numbers = itertools.cycle(range(1, 16))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
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
    ) -> None:
        self.redis_url = redis_url
        self.workdir = workdir
        self.domain = domain
        self.c2s_port = free_port()
        self.tls_port = free_port()
        self.admin_port = free_port()
        self.component_port = free_port()
        self.s2s_port = 0
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

    async def connect(self, *, tls: bool = False) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1",
            self.port,
            ssl=client_ssl_context() if tls else None,
            server_hostname=self.domain if tls else None,
        )
        return self

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

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the server closed the stream and the connection."""
        assert self.reader is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ev = await self.next_event(timeout)
            if ev is None:
                return True
            if isinstance(ev, StreamClose):
                continue
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

    async def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.write(b"</stream:stream>")
                self.writer.close()
            self.writer = None


def _auth(mechanism: str, data: bytes) -> str:
    text = base64.b64encode(data).decode() or "="
    return f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{text}</auth>"


def _sasl(name: str, data: bytes) -> str:
    return f"<{name} xmlns='{NS_SASL}'>{base64.b64encode(data).decode() or '='}</{name}>"


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
) -> AsyncIterator[Any]:
    """A connected slixmpp client (session started) that records the stanzas it receives in
    ``client.inbox`` (an asyncio.Queue of message stanzas) and ``client.presences``."""
    import slixmpp

    client = slixmpp.ClientXMPP(jid, password)
    client.ssl_context = client_ssl_context()
    client.enable_direct_tls = False
    for p in plugins:
        client.register_plugin(p)
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

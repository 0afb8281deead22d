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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Self

import redis
import redis.asyncio
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


class ChildProcess:
    """A process of the test run whose output goes to a log file."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        """Start ``args``; stdout and stderr are appended to the log."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send ``sig`` and wait (SIGKILL after ``timeout``); returns the exit code."""
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


class CoreProcess(ChildProcess):
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
        super().__init__(workdir / "core.log")
        self.redis_url = redis_url
        self.workdir = workdir
        self.domain = domain
        self.c2s_port = free_port()
        self.tls_port = free_port()
        self.admin_port = free_port()
        self.component_port = free_port()
        self.s2s_port = free_port() if s2s else 0
        self.extra_env = dict(env or {})

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
        self.spawn([sys.executable, "-m", "core.cli", "core"], cwd=self.workdir, env=self.env())
        wait_port(self.c2s_port, proc=self.proc)
        if self.s2s_port:
            wait_port(self.s2s_port, proc=self.proc)
        return self

    def restart(self) -> CoreProcess:
        self.stop()
        return self.start()

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


class ComponentProcess(ChildProcess):
    """A process beside ``core``, such as a component that links to it: ``python -m module
    *args`` in the core's environment (plus ``env``) and directory, the checkout importable."""

    def __init__(
        self,
        core: CoreProcess,
        log_name: str,
        module: str,
        args: list[str],
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(core.workdir / log_name)
        self.core = core
        self.args = [sys.executable, "-m", module, *args]
        self.extra_env = dict(env or {})

    def start(self) -> Self:
        env = self.core.env()
        env.update(self.extra_env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.spawn(self.args, cwd=self.core.workdir, env=env)
        return self


async def wait_links(
    core: CoreProcess, domain: str, instances: set[str], timeout: float = 10
) -> None:
    """Wait until the core's link records for the component ``domain`` name exactly
    ``instances``. The records are written after a link goes live and removed after it goes
    down, so once they match, routing matches too."""
    from core.storage import keys

    client = redis.asyncio.Redis.from_url(core.redis_url)
    got: set[str] = set()
    try:
        async with asyncio.timeout(timeout):
            while True:
                got = {k.decode() for k in await client.hkeys(keys.component_links(domain))}
                if got == instances:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"links of {domain}: {got}, expected {instances}") from None
    finally:
        await client.aclose()


def switchboard_command() -> list[str]:
    """The installed console script, as the README runs it; the module if it is missing."""
    script = Path(sys.executable).with_name("switchboard")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "core.cli"]


def stack_env(data_dir: Path) -> dict[str, str]:
    """No redis.url (so the stack embeds Redis), data in ``data_dir``, every port free."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        SWITCHBOARD_DATA_DIR=str(data_dir),
        SWITCHBOARD_C2S_PORT=str(free_port()),
        SWITCHBOARD_C2S_DIRECT_TLS_PORT=str(free_port()),
        SWITCHBOARD_S2S_PORT=str(free_port()),
        SWITCHBOARD_COMPONENT_LISTENER_PORT=str(free_port()),
        SWITCHBOARD_ADMIN_PORT=str(free_port()),
        SWITCHBOARD_LOG_LEVEL="info",
    )
    return env


class StackProcess:
    """``switchboard stack`` as the README runs it, in ``workdir`` with its data in
    ``workdir/data``: stdout (the banner) goes to ``stack.out``, the log to ``stack.log``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.env = stack_env(self.data_dir)
        self.c2s_port = int(self.env["SWITCHBOARD_C2S_PORT"])
        self.out_path = workdir / "stack.out"
        self.log_path = workdir / "stack.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[StackProcess]:
        """Start the stack and wait for its client port; on the way out, kill whatever of
        it still runs."""
        with self.out_path.open("wb") as out, self.log_path.open("wb") as err:
            # A session of its own, like a shell job: Ctrl-C reaches the whole process group.
            self.proc = subprocess.Popen(
                [*switchboard_command(), "stack"],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        try:
            wait_port(self.c2s_port, timeout=30, proc=self.proc)
            yield self
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ``switchboard *args`` beside the stack (same directory and environment)."""
        return subprocess.run(
            [*switchboard_command(), *args],
            cwd=self.workdir,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def interrupt(self, timeout: float) -> int:
        """Ctrl-C: SIGINT to the process group; returns the exit code."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def out(self) -> str:
        return self.out_path.read_text()

    def log(self) -> str:
        return self.log_path.read_text()


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
        await self.authenticate(user, password, mechanism=mechanism, tls=tls)
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

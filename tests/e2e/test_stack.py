"""The README's first command path, for real: ``switchboard stack`` with its embedded Redis,
``switchboard user add`` against it, two clients talking, then Ctrl-C (DESIGN "Configuration
and CLI", README "Two commands" and "First steps")."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import free_port, slix_client, wait_port

PASSWORDS = {"alice": "stack-alice-pw", "bob": "stack-bob-pw"}


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


def test_stack_user_add_chat_and_ctrl_c(tmp_path: Path) -> None:
    """`switchboard stack` starts Redis and the core; `switchboard user add` finds that Redis
    through data_dir (with --password, and from a pipe); two clients exchange messages; Ctrl-C
    stops everything cleanly: exit code 0 and no redis-server left behind."""
    data_dir = tmp_path / "data"
    env = stack_env(data_dir)
    c2s_port = int(env["SWITCHBOARD_C2S_PORT"])
    out_path, log_path = tmp_path / "stack.out", tmp_path / "stack.log"
    with out_path.open("wb") as out, log_path.open("wb") as err:
        # A session of its own, like a shell job: Ctrl-C reaches the whole process group.
        proc = subprocess.Popen(
            [*switchboard_command(), "stack"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_port(c2s_port, timeout=30, proc=proc)
        log = log_path.read_text()
        match = re.search(r"embedded Redis \(pid (\d+)\) at (\S+)", log)
        assert match, log
        redis_pid, redis_url = int(match.group(1)), match.group(2)
        assert redis_url == f"unix://{data_dir.absolute() / 'redis' / 'redis.sock'}"
        banner = out_path.read_text()
        assert "Switchboard serving localhost" in banner and str(c2s_port) in banner

        user = [*switchboard_command(), "user"]
        added = subprocess.run(
            [*user, "add", "alice", "--password", PASSWORDS["alice"]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert added.returncode == 0, added.stderr
        assert added.stdout.strip() == "created alice@localhost"
        piped = subprocess.run(
            [*user, "add", "bob"],
            cwd=tmp_path,
            env=env,
            input=PASSWORDS["bob"] + "\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert piped.returncode == 0, piped.stderr
        listed = subprocess.run(
            [*user, "list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
        )
        assert listed.stdout.split() == ["alice@localhost", "bob@localhost"], listed.stderr

        asyncio.run(_chat(c2s_port))

        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = log_path.read_text()
    assert code == 0, log
    assert "Traceback" not in log, log
    assert "stopping the embedded Redis" in log
    with pytest.raises(ProcessLookupError):
        os.kill(redis_pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    assert not (data_dir / "redis" / "redis.sock").exists()
    # AOF on (DESIGN "Redis: the shared state"): the accounts are on disk.
    assert any((data_dir / "redis").glob("appendonly*")), list((data_dir / "redis").iterdir())
    for password in PASSWORDS.values():
        assert password not in log


async def _chat(port: int) -> None:
    async with (
        slix_client(port, "alice@localhost/phone", PASSWORDS["alice"]) as alice,
        slix_client(port, "bob@localhost/desk", PASSWORDS["bob"]) as bob,
    ):
        alice.send_message(mto="bob@localhost/desk", mbody="hello from the stack", mtype="chat")
        msg = await asyncio.wait_for(bob.inbox.get(), 5)
        assert msg["body"] == "hello from the stack"
        assert str(msg["from"]) == "alice@localhost/phone"
        bob.send_message(mto="alice@localhost/phone", mbody="hello back", mtype="chat")
        msg = await asyncio.wait_for(alice.inbox.get(), 5)
        assert msg["body"] == "hello back"

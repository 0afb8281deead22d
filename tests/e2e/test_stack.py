"""The README's first command path, for real: ``switchboard stack`` with its embedded Redis,
``switchboard user add`` against it, two clients talking, then Ctrl-C (DESIGN "Configuration
and CLI", README "Two commands" and "First steps")."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from tests.harness import StackProcess, slix_client

PASSWORDS = {"alice": "stack-alice-pw", "bob": "stack-bob-pw"}


def test_stack_user_add_chat_and_ctrl_c(tmp_path: Path) -> None:
    """`switchboard stack` starts Redis and the core; `switchboard user add` finds that Redis
    through data_dir (with --password, and from a pipe); two clients exchange messages; Ctrl-C
    stops everything cleanly: exit code 0 and no redis-server left behind."""
    stack = StackProcess(tmp_path)
    data_dir = stack.data_dir
    with stack.running():
        log = stack.log()
        match = re.search(r"embedded Redis \(pid (\d+)\) at (\S+)", log)
        assert match, log
        redis_pid, redis_url = int(match.group(1)), match.group(2)
        assert redis_url == f"unix://{data_dir.absolute() / 'redis' / 'redis.sock'}"
        banner = stack.out()
        assert "Switchboard serving localhost" in banner and str(stack.c2s_port) in banner

        added = stack.cli("user", "add", "alice", "--password", PASSWORDS["alice"])
        assert added.returncode == 0, added.stderr
        assert added.stdout.strip() == "created alice@localhost"
        piped = stack.cli("user", "add", "bob", input=PASSWORDS["bob"] + "\n")
        assert piped.returncode == 0, piped.stderr
        listed = stack.cli("user", "list")
        assert listed.stdout.split() == ["alice@localhost", "bob@localhost"], listed.stderr

        asyncio.run(_chat(stack.c2s_port))

        code = stack.interrupt(timeout=20)
    log = stack.log()
    assert code == 0, log
    assert "Traceback" not in log, log
    assert "stopping the embedded Redis" in log
    with pytest.raises(ProcessLookupError):
        os.kill(redis_pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(stack.proc.pid, 0)  # type: ignore[union-attr]
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

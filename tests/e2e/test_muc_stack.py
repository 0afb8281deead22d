"""`switchboard stack` serves group chat out of the box: it starts a MUC instance at
``conference.<domain>`` beside the core, on its embedded Redis, and stops it on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_muc import clients, create_room, groupchat_from
from tests.e2e.test_stack import stack_env, switchboard_command
from tests.harness import wait_port

PASSWORD = "correct horse"


class _Stack:
    """Enough of CoreProcess for the ``clients`` helper."""

    def __init__(self, c2s_port: int) -> None:
        self.c2s_port = c2s_port


def test_stack_starts_muc_and_stops_it(tmp_path: Path) -> None:
    """The stack's banner names conference.localhost; two users chat in a room there; Ctrl-C
    stops the MUC process with the rest (nothing left in the process group)."""
    env = stack_env(tmp_path / "data")
    c2s_port = int(env["SWITCHBOARD_C2S_PORT"])
    out_path, log_path = tmp_path / "stack.out", tmp_path / "stack.log"
    with out_path.open("wb") as out, log_path.open("wb") as err:
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
        assert "muc:        conference.localhost" in out_path.read_text()
        for user in ("alice", "bob"):
            added = subprocess.run(
                [*switchboard_command(), "user", "add", user, "--password", PASSWORD],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                timeout=30,
            )
            assert added.returncode == 0, added.stderr

        async def chat() -> None:
            room = "tavern@conference.localhost"
            async with clients(_Stack(c2s_port), "alice", "bob") as (alice, bob):  # type: ignore[arg-type]
                for _ in range(100):
                    # The MUC process links to the core shortly after the core listens.
                    try:
                        await create_room(alice, room, "Alice")
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the MUC service never answered")
                await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=5)
                bob.send_message(mto=room, mbody="a round for everyone", mtype="groupchat")
                await groupchat_from(alice, room, "a round for everyone")

        asyncio.run(chat())
        log = log_path.read_text()
        match = re.search(r"multi-user chat \(pid (\d+)\)", log)
        assert match, log
        muc_pid = int(match.group(1))
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = log_path.read_text()
    assert code == 0, log
    assert "Traceback" not in log, log
    with pytest.raises(ProcessLookupError):
        os.kill(muc_pid, 0)

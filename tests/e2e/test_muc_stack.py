"""`switchboard stack` serves group chat out of the box: it starts a MUC instance at
``conference.<domain>`` beside the core, on its embedded Redis, and stops it on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from tests.e2e.test_muc import clients, create_room, groupchat_from
from tests.harness import StackProcess

PASSWORD = "correct horse"


def test_stack_starts_muc_and_stops_it(tmp_path: Path) -> None:
    """The stack's banner names conference.localhost; two users chat in a room there; Ctrl-C
    stops the MUC process with the rest (nothing left in the process group)."""
    stack = StackProcess(tmp_path)
    with stack.running():
        assert "muc:        conference.localhost" in stack.out()
        for user in ("alice", "bob"):
            added = stack.cli("user", "add", user, "--password", PASSWORD)
            assert added.returncode == 0, added.stderr

        async def chat() -> None:
            room = "tavern@conference.localhost"
            async with clients(stack, "alice", "bob") as (alice, bob):  # type: ignore[arg-type]
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
        log = stack.log()
        match = re.search(r"multi-user chat \(pid (\d+)\)", log)
        assert match, log
        muc_pid = int(match.group(1))
        code = stack.interrupt(timeout=30)
    log = stack.log()
    assert code == 0, log
    assert "Traceback" not in log, log
    with pytest.raises(ProcessLookupError):
        os.kill(muc_pid, 0)

"""Signals: a server stops cleanly on SIGINT and SIGTERM however it was started."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.harness import CoreProcess, separate_db, wait_port


def test_sigint_stops_a_core_started_with_sigint_ignored(redis_server: str, tmp_path: Path) -> None:
    """A shell starts background jobs with SIGINT ignored; the core still stops on SIGINT
    (exit 0, its port closed) instead of ignoring Ctrl-C and `kill -INT`."""
    core = CoreProcess(separate_db(redis_server), tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    with core.log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "core"],
            cwd=tmp_path,
            env=core.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    try:
        wait_port(core.c2s_port, proc=proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, core.log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in core.log()


def test_sigterm_stops_the_core(redis_server: str, tmp_path: Path) -> None:
    """SIGTERM (docker stop, systemd) stops the core with exit code 0."""
    core = CoreProcess(separate_db(redis_server), tmp_path).start()
    assert core.stop(signal.SIGTERM, timeout=15) == 0, core.log()

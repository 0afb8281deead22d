"""``switchboard stack``: the whole server in one command, with its own Redis when none is
configured (AOF on, in ``<data_dir>/redis``, reachable only through a unix socket)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TextIO

from core.runtime.config import Config, redis_dir
from core.runtime.redis_server import SOCKET_NAME, EmbeddedRedis

log = logging.getLogger(__name__)


def _port(port: int, what: str) -> str:
    return f"{port} ({what})" if port else f"disabled ({what})"


def banner(config: Config, config_path: str | None = None) -> str:
    """What an operator needs to know after starting the stack."""
    c2s = config.c2s
    listener = config.component_listener
    admin = config.admin
    prefix = f"switchboard --config {config_path}" if config_path else "switchboard"
    lines = [
        f"Switchboard serving {config.domain} (node {config.node_id})",
        f"  clients:    {_port(c2s.port, 'STARTTLS')}, {_port(c2s.direct_tls_port, 'direct TLS')}"
        f" on {c2s.interface}",
        f"  servers:    {_port(config.s2s.port, 's2s')} on {config.s2s.interface}",
        f"  components: {_port(listener.port, 'XEP-0114')} on {listener.interface}",
        f"  admin:      {_port(admin.port, 'health, metrics')} on {admin.interface}",
        f"  data:       {Path(config.data_dir).absolute()}",
        f"  redis:      {config.redis.url}",
        f"  add a user: {prefix} user add alice --password ...",
    ]
    return "\n".join(lines)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Until the reactor installs its own handlers, SIGTERM unwinds through our finally block
    # so the embedded Redis is stopped (and its AOF flushed) rather than orphaned.
    raise SystemExit(128 + signum)


def run_stack(config: Config, *, config_path: str | None = None, out: TextIO | None = None) -> int:
    """Start Redis if needed, then the core; stop Redis when the core returns or fails.

    The asyncio reactor must already be installed (``core.runtime.reactor.install``).
    """
    from core.runtime.logging import setup_logging

    setup_logging(config.log.level)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm) if in_main_thread else None
    embedded: EmbeddedRedis | None = None
    try:
        if not config.redis.url:
            directory = redis_dir(config)
            embedded = EmbeddedRedis(directory, unix_socket=directory / SOCKET_NAME)
            config.redis.url = embedded.start()
            log.info("embedded Redis (pid %s) at %s", embedded.pid, config.redis.url)
        print(banner(config, config_path), file=out or sys.stdout, flush=True)
        from core.server import run_core

        return run_core(config)
    finally:
        if embedded is not None:
            log.info("stopping the embedded Redis")
            embedded.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

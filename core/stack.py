"""``switchboard stack``: the whole server in one command, with its own Redis when none is
configured (AOF on, in ``<data_dir>/redis``, reachable only through a unix socket)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TextIO

from core.runtime.config import ComponentConfig, Config, redis_dir
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
        *(
            [f"  muc:        {config.components['muc'].domain} (XEP-0045 multi-user chat)"]
            if "muc" in config.components
            else []
        ),
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
    muc: subprocess.Popen[bytes] | None = None
    try:
        if not config.redis.url:
            directory = redis_dir(config)
            embedded = EmbeddedRedis(directory, unix_socket=directory / SOCKET_NAME)
            config.redis.url = embedded.start()
            log.info("embedded Redis (pid %s) at %s", embedded.pid, config.redis.url)
        generated = default_muc(config)
        muc = start_muc(config, config_path, generated)
        print(banner(config, config_path), file=out or sys.stdout, flush=True)
        from core.server import run_core

        return run_core(config)
    finally:
        if muc is not None:
            stop_child(muc, "muc")
        if embedded is not None:
            log.info("stopping the embedded Redis")
            embedded.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# Multi-user chat -----------------------------------------------------------------------------


def default_muc(config: Config) -> bool:
    """The stack serves group chat out of the box: without a ``[components.muc]`` it adds one
    at ``conference.<domain>`` with a secret made for this run (the stack starts both ends).
    Returns whether it did; nothing is added for an IP-literal domain or without a component
    listener. Configure ``[components.muc]`` to run more MUC instances of your own."""
    if "muc" in config.components or not config.component_listener.port:
        return False
    from core.xmpp.jid import JIDError, prep_domain

    if config.domain.replace(".", "").isdigit() or config.domain.startswith("["):
        return False
    try:
        domain = prep_domain(f"conference.{config.domain}")
    except JIDError:
        return False
    config.components["muc"] = ComponentConfig(
        domain=domain, secret=secrets.token_urlsafe(24), instances="shard"
    )
    return True


def start_muc(
    config: Config, config_path: str | None, generated: bool
) -> subprocess.Popen[bytes] | None:
    """Start ``switchboard muc`` as a child process on the stack's Redis, when configured."""
    muc = config.components.get("muc")
    if muc is None or not config.component_listener.port:
        return None
    env = dict(os.environ)
    env["SWITCHBOARD_REDIS_URL"] = config.redis.url
    if generated:
        env["SWITCHBOARD_COMPONENTS_MUC_DOMAIN"] = muc.domain
        env["SWITCHBOARD_COMPONENTS_MUC_SECRET"] = muc.secret
        env["SWITCHBOARD_COMPONENTS_MUC_INSTANCES"] = muc.instances
    command = [sys.executable, "-m", "core.cli"]
    if config_path:
        command += ["--config", config_path]
    child = subprocess.Popen([*command, "muc"], env=env)
    log.info("multi-user chat (pid %s) at %s", child.pid, muc.domain)
    return child


def stop_child(child: subprocess.Popen[bytes], name: str, timeout: float = 10.0) -> None:
    """SIGTERM (graceful stop), then SIGKILL after ``timeout`` seconds."""
    if child.poll() is None:
        log.info("stopping %s (pid %s)", name, child.pid)
        child.terminate()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

"""The process of an external component (XEP-0114): build a ComponentApp from the shared
configuration, run it on the asyncio reactor, stop it gracefully on SIGTERM or SIGINT.

    config = load_config(None)
    app = component_app(config, "muc", [muc_module], instance="muc-1")
    sys.exit(run_component(app, config, on_start=open_redis))

The component reads the same ``switchboard.toml`` (and ``SWITCHBOARD_*`` variables) as the
core: ``[components.<name>]`` gives its domain and secret, ``[component_listener]`` where the
core listens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from core.runtime.config import Config
from core.xmpp.component import ComponentApp
from core.xmpp.module import Module

log = logging.getLogger(__name__)


def component_app(
    config: Config,
    name: str,
    modules: Iterable[Module] = (),
    *,
    host: str | None = None,
    port: int | None = None,
    **kwargs: Any,
) -> ComponentApp:
    """The component ``[components.<name>]`` of ``config``, linking to the core's component
    listener: its interface (loopback when it listens on every address) and port, unless
    ``host``/``port`` say otherwise. Other keyword arguments go to ComponentApp."""
    component = config.components.get(name)
    if component is None:
        known = ", ".join(sorted(config.components)) or "none"
        raise KeyError(f"no [components.{name}] in the configuration (configured: {known})")
    listener = config.component_listener
    if host is None:
        wildcard = listener.interface in ("", "0.0.0.0", "::")
        host = "127.0.0.1" if wildcard else listener.interface
    return ComponentApp(
        component.domain,
        component.secret,
        host,
        listener.port if port is None else port,
        modules,
        name=name,
        max_stanza_size=listener.max_stanza_size,
        **kwargs,
    )


def run_component(
    app: ComponentApp,
    config: Config | None = None,
    *,
    log_level: str | None = None,
    on_start: Callable[[ComponentApp], Awaitable[None]] | None = None,
    on_stop: Callable[[ComponentApp], Awaitable[None]] | None = None,
) -> int:
    """Run ``app`` until SIGTERM or SIGINT, then stop it gracefully; returns the exit code.

    ``on_start`` runs before the first connection (open Redis there), ``on_stop`` after the
    stream is closed. Installs the asyncio reactor, so nothing may have imported
    ``twisted.internet.reactor`` before."""
    from core.runtime.reactor import deferred_from_coro, install, tune_gc

    install(config.runtime.event_loop if config is not None else "auto")
    from twisted.internet import reactor

    from core.runtime.logging import setup_logging

    setup_logging(log_level or (config.log.level if config is not None else "info"))
    if app.reactor is None:
        app.reactor = reactor
    state: dict[str, Any] = {"code": 0, "started": False}

    async def boot() -> None:
        if on_start is not None:
            await on_start(app)
        app.start()
        state["started"] = True
        tune_gc()
        log.info("component %s (instance %s) started", app.domain, app.instance)

    def booted(fut: asyncio.Future[None]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.error("component %s failed to start", app.domain, exc_info=exc)
            state["code"] = 1
            reactor.stop()

    async def shutdown() -> None:
        # Twisted turns SIGTERM and SIGINT into reactor.stop(), which runs this first.
        if state["started"]:
            log.info("component %s stopping", app.domain)
            await app.stop()
        if on_stop is not None:
            await on_stop(app)

    reactor.addSystemEventTrigger("before", "shutdown", lambda: deferred_from_coro(shutdown()))
    reactor.callWhenRunning(lambda: asyncio.ensure_future(boot()).add_done_callback(booted))
    reactor.run()
    return int(state["code"])

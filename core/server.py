"""The core router process: wires config, Redis, TLS, modules and listeners together."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from lxml import etree

from core.component_routes import ComponentRoutes
from core.router import Router
from core.runtime.config import Config, effective_redis_url
from core.runtime.reactor import tune_gc
from core.runtime.redis import connect
from core.sessions import HEARTBEAT, SessionRegistry
from core.storage import keys
from core.storage.accounts import AccountStore
from core.storage.batch import Batch
from core.xmpp.jid import JID
from core.xmpp.module import Dispatcher, Module
from core.xmpp.sasl import ScramCredentials
from core.xmpp.tls import ServerTLS, ensure_self_signed

log = logging.getLogger(__name__)
# Seconds the modules get to stop; a server must stop even when one of them hangs.
STOP_HOOKS_TIMEOUT = 5.0


def default_modules() -> list[Module]:
    """The modules every core loads, in dispatch order."""
    from core.modules import (
        blocking,
        disco,
        last,
        offline,
        ping,
        presence,
        privacy,
        roster,
        vcard,
        version,
    )

    # presence before roster: on 'session-closed' the presence module still reads the
    # in-memory roster that the roster module then lets go.
    return [
        disco.module,
        ping.module,
        version.module,
        presence.module,
        roster.module,
        offline.module,
        last.module,
        privacy.module,
        blocking.module,
        vcard.module,
    ]


class CoreServer:
    """Shared state of one core node: what every stream and module reaches through ``host``."""

    def __init__(
        self,
        config: Config,
        redis: aioredis.Redis,
        *,
        reactor: Any = None,
        modules: list[Module] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.domain = config.domain
        self.node_id = config.node_id
        self.reactor = reactor
        self.redis = redis
        self.accounts = AccountStore(redis, iterations=config.auth.scram_iterations)
        self.sessions = SessionRegistry(redis, config.node_id)
        self.dispatcher = Dispatcher(default_modules() if modules is None else modules)
        self.router = Router(self)
        # XEP-0114: a route per configured component domain, installed in the router.
        self.components = ComponentRoutes(self)
        # Federation (core/s2s/), started when s2s.port is set; None otherwise.
        self.s2s: Any = None
        self.started_at = time.time()
        self.c2s_streams: set[Any] = set()
        self.tls: ServerTLS | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        # RFC 6121 services, set by their modules at 'server-started': the rosters of online
        # accounts (modules/roster.py), presence processing (modules/presence.py), offline
        # storage (modules/offline.py). Without them the router's fallbacks apply.
        self.rosters: Any = None
        self.presence: Any = None
        self.offline: Any = None
        self.offline_store: Callable[..., Any] | None = None
        self.pending_iqs: dict[str, asyncio.Future[etree._Element]] = {}
        # XEP-0016 / XEP-0191: the privacy service (modules/privacy.py) and its router hook,
        # set at 'server-started'; None means nothing is filtered.
        self.privacy: Any = None
        self.privacy_check: Callable[..., Any] | None = None
        # XEP-0153 photo hashes of online accounts (modules/vcard.py), set at 'server-started'.
        self.vcards: Any = None

    # Helpers for streams and modules -----------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Run ``coro`` on the loop, keeping a reference and logging what it raises."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def component_domains(self) -> list[str]:
        return sorted(c.domain for c in self.config.components.values())

    async def account_exists(self, jid: JID) -> bool:
        if jid.local is None or jid.domain != self.domain:
            return False
        if self.router.resources(f"{jid.local}@{jid.domain}"):
            return True
        return await self.accounts.exists(jid.local, jid.domain)

    async def store_offline(self, stanza: etree._Element, to: JID) -> bool:
        """Keep a message for an account with no available resource; False if not kept."""
        if self.offline_store is None:
            return False
        return bool(await self.offline_store(stanza, to))

    def iq_response(self, stanza: etree._Element) -> None:
        """A result or error for an IQ that the server sent."""
        fut = self.pending_iqs.pop(stanza.get("id", ""), None)
        if fut is not None and not fut.done():
            fut.set_result(stanza)

    # Authentication limits (per address and per account, across connections) -----------

    async def credentials(
        self, host: str | None, user: str, hash_name: str
    ) -> tuple[bool, ScramCredentials | None]:
        """(limited, credentials) in one round trip: whether ``host`` or the account is at
        ``auth.max_failures_per_minute``, and the account's stored SCRAM credentials."""
        limit = self.config.auth.max_failures_per_minute
        batch = Batch(self.redis)

        def queue_counts(pipe: Any) -> None:
            for key in self._auth_keys(host, user):
                pipe.get(key)

        def queue_credentials(pipe: Any) -> None:
            # A name that cannot be an account queues nothing: its attempt fails all the same.
            self.accounts.queue_scram_credentials(pipe, user, self.domain, hash_name)

        counts = batch.add(queue_counts) if limit > 0 else None
        credentials = batch.add(queue_credentials)
        await batch.run()
        limited = counts is not None and any(
            c is not None and int(c) >= limit for c in counts.replies
        )
        stored = self.accounts.scram_loaded(credentials.replies) if credentials.replies else None
        return limited, stored

    async def auth_failed(self, host: str | None, user: str | None) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key in self._auth_keys(host, user):
            pipe.incr(key)
            pipe.expire(key, 60)
        await pipe.execute()

    def _auth_keys(self, host: str | None, user: str | None) -> list[bytes]:
        out = []
        if host:
            out.append(keys.auth_failures_addr(host))
        if user:
            out.append(keys.auth_failures_account(f"{user}@{self.domain}"))
        return out

    # Session lifecycle ---------------------------------------------------------------

    async def session_started(self, session: Any) -> None:
        # One round trip: the registry entry and what each module loads for a new session
        # ('session-loading' hooks queue their reads on the batch), then 'session-bound'.
        batch = Batch(self.redis)
        batch.add(lambda pipe: self.sessions.queue_add(pipe, session.bare, session.jid.resource))
        await self.dispatcher.emit("session-loading", session, batch)
        await batch.run()
        await self.dispatcher.emit("session-bound", session)

    async def session_ended(self, session: Any) -> None:
        self.router.unbind(session)
        try:
            await self.dispatcher.emit("session-closed", session)
        finally:
            if self.router.session(session.jid) is None:
                await self.sessions.remove(session.bare, session.jid.resource)

    # Start and stop -------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        cert = (
            Path(cfg.tls.cert) if cfg.tls.cert else Path(cfg.data_dir) / "tls" / f"{cfg.domain}.crt"
        )
        key = Path(cfg.tls.key) if cfg.tls.key else Path(cfg.data_dir) / "tls" / f"{cfg.domain}.key"
        if not cfg.tls.cert:
            ensure_self_signed(cert, key, cfg.domain)
        self.tls = ServerTLS(cert, key)
        await self.sessions.start()
        await self.components.start()
        if cfg.s2s.port:
            from core.s2s import S2SService

            self.s2s = S2SService(self)
            await self.s2s.start()
            # Every domain that is neither ours nor a component's goes over s2s (RFC 6120 §3.2).
            self.router.remote_route = self.s2s.route_for
        await self.dispatcher.emit("server-started", self)

    def listen(self) -> list[Any]:
        """Open the configured listeners; returns the listening ports."""
        from core.c2s import C2SFactory

        cfg = self.config
        ports = []
        assert self.tls is not None
        if cfg.c2s.port:
            ports.append(
                self.reactor.listenTCP(cfg.c2s.port, C2SFactory(self), interface=cfg.c2s.interface)
            )
            log.info("c2s listening on %s:%d (STARTTLS)", cfg.c2s.interface, cfg.c2s.port)
        if cfg.c2s.direct_tls_port:
            ports.append(
                self.reactor.listenSSL(
                    cfg.c2s.direct_tls_port,
                    C2SFactory(self, direct_tls=True),
                    self.tls.options(alpn=[b"xmpp-client"]),
                    interface=cfg.c2s.interface,
                )
            )
            log.info(
                "c2s listening on %s:%d (direct TLS)", cfg.c2s.interface, cfg.c2s.direct_tls_port
            )
        if cfg.component_listener.port:
            from core.component_listener import ComponentFactory

            listener = cfg.component_listener
            ports.append(
                self.reactor.listenTCP(
                    listener.port, ComponentFactory(self), interface=listener.interface
                )
            )
            log.info("components listening on %s:%d (XEP-0114)", listener.interface, listener.port)
        if cfg.s2s.port and self.s2s is not None:
            from core.s2s.inbound import S2SInboundFactory

            ports.append(
                self.reactor.listenTCP(
                    cfg.s2s.port, S2SInboundFactory(self.s2s), interface=cfg.s2s.interface
                )
            )
            log.info("s2s listening on %s:%d", cfg.s2s.interface, cfg.s2s.port)
        if cfg.admin.port:
            from core.runtime.admin import admin_site

            ports.append(
                self.reactor.listenTCP(
                    cfg.admin.port, admin_site(self), interface=cfg.admin.interface
                )
            )
            log.info("admin HTTP on %s:%d", cfg.admin.interface, cfg.admin.port)
        return ports

    async def stop(self) -> None:
        from core.xmpp.errors import StreamError

        log.debug("stopping: modules")
        try:
            stopping = self.dispatcher.emit("server-stopping", self)
            await asyncio.wait_for(stopping, STOP_HOOKS_TIMEOUT)
        except TimeoutError:
            log.warning("modules did not stop within %g s; stopping anyway", STOP_HOOKS_TIMEOUT)
        log.debug("stopping: streams")
        for stream in list(self.c2s_streams):
            stream.close_reason = "server shutting down"
            stream.close_with(StreamError("system-shutdown"))
        self.components.close_all(StreamError("system-shutdown"))
        if self.s2s is not None:
            self.s2s.close_all(StreamError("system-shutdown"))
        await asyncio.sleep(0.1)
        for stream in list(self.c2s_streams):
            stream.transport.abortConnection()
        # Let the closing sessions finish their clean-up before deregistering the node.
        if self._tasks:
            log.debug("stopping: %d tasks", len(self._tasks))
            await asyncio.wait(list(self._tasks), timeout=5)
        log.debug("stopping: component routes")
        await self.components.stop()
        log.debug("stopping: session registry")
        await self.sessions.stop()
        log.debug("stopped")

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "domain": self.domain,
            "uptime": round(time.time() - self.started_at, 1),
            "connections": len(self.c2s_streams),
            "sessions": sum(len(r) for r in self.router.local.values()),
        }

    def status_json(self) -> bytes:
        return json.dumps(self.status()).encode()


def run_core(config: Config) -> int:
    """Run a core node until SIGINT/SIGTERM. The asyncio reactor must already be installed."""
    from twisted.internet import reactor, task
    from twisted.internet.error import CannotListenError

    from core.runtime.logging import setup_logging

    setup_logging(config.log.level)
    url = effective_redis_url(config)
    state: dict[str, Any] = {"code": 0}

    async def boot() -> CoreServer:
        redis = connect(url)
        try:
            await redis.ping()
        except Exception as e:
            raise SystemExit(f"cannot reach Redis at {url}: {e}") from None
        server = CoreServer(config, redis, reactor=reactor)
        await server.start()
        try:
            server.listen()
        except CannotListenError as e:
            # An operator's problem (another server on the port, a port below 1024 without
            # the right to bind it): one line saying which, not a traceback.
            labels = {
                config.c2s.port: "c2s.port",
                config.c2s.direct_tls_port: "c2s.direct_tls_port",
                config.s2s.port: "s2s.port",
                config.component_listener.port: "component_listener.port",
                config.admin.port: "admin.port",
            }
            key = labels.get(int(e.port), "its port")
            raise SystemExit(
                f"cannot listen on {e.interface or '*'}:{e.port}: {e.socketError}; "
                f"free the port or set another {key} (0 disables the listener)"
            ) from None
        beat = task.LoopingCall(lambda: server.spawn(server.sessions.heartbeat()))
        beat.start(HEARTBEAT, now=False)
        state["beat"] = beat
        tune_gc()
        log.info("switchboard core %s serving %s", config.node_id, config.domain)
        return server

    def started(fut: asyncio.Future[CoreServer]) -> None:
        exc = fut.exception()
        if exc is not None:
            if isinstance(exc, SystemExit):
                log.error("%s", exc)
            else:
                log.error("the core failed to start", exc_info=exc)
            state["code"] = 1
            reactor.stop()
            return
        state["server"] = fut.result()

    async def shutdown() -> None:
        server: CoreServer | None = state.get("server")
        if "beat" in state and state["beat"].running:
            state["beat"].stop()
        if server is not None:
            log.info("shutting down")
            await server.stop()
            await server.redis.aclose()

    def on_shutdown() -> Any:
        from core.runtime.reactor import deferred_from_coro

        return deferred_from_coro(shutdown())

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    reactor.callWhenRunning(lambda: asyncio.ensure_future(boot()).add_done_callback(started))
    reactor.run()
    return state["code"]

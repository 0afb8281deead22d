"""The ``switchboard muc`` process: the MUC service (XEP-0045) at ``[components.muc]``'s domain,
linked to the core over XEP-0114, with its rooms in Redis.

Run one instance, or several with ``instances = "shard"``: the core spreads the rooms over
the instances and moves an instance's rooms to the others when it stops or dies; they load
the rooms from Redis and carry on. SIGTERM stops an instance gracefully (in-flight stanzas
finish, the link closes, the core hands its rooms to the other instances).
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis

from components.muc.env import Env
from components.muc.handlers import MucDispatcher, build_module
from components.muc.service import MucService
from components.muc.settings import MucSettings, settings_from_config
from components.muc.store import RoomStore
from core.runtime.config import Config, effective_redis_url
from core.runtime.redis import connect, redact_url, wait_ready

log = logging.getLogger(__name__)

COMPONENT = "muc"
# How long a starting instance waits for Redis (containers start in any order).
REDIS_WAIT = 30.0


def build(
    config: Config,
    redis: aioredis.Redis,
    *,
    settings: MucSettings | None = None,
    name: str = COMPONENT,
    **app_kwargs: Any,
) -> tuple[Any, MucService]:
    """The component app and its MUC service for ``[components.<name>]`` of ``config``."""
    from core.runtime.component import component_app

    holder: dict[str, MucService] = {}

    def service() -> MucService:
        return holder["service"]

    module = build_module(service)
    app = component_app(config, name, [module], **app_kwargs)
    # Any other IQ to an occupant is forwarded to that occupant.
    app.dispatcher = MucDispatcher([module], service)
    settings = settings or MucSettings(server_domain=config.domain)
    env = Env(domain=app.domain, settings=settings)
    holder["service"] = MucService(RoomStore(redis, app.domain), env, app.send, iq=app.iq)
    return app, holder["service"]


def run_muc(
    config: Config,
    *,
    instance: str | None = None,
    name: str = COMPONENT,
) -> int:
    """Run one MUC instance until SIGTERM/SIGINT; returns the exit code. The asyncio reactor
    must be installed first (``core.runtime.reactor.install``)."""
    from core.runtime.component import run_component

    settings = settings_from_config(config)
    url = effective_redis_url(config)
    redis = connect(url)
    kwargs: dict[str, Any] = {}
    if instance:
        kwargs["instance"] = instance
    app, service = build(config, redis, settings=settings, name=name, **kwargs)

    async def on_start(_: Any) -> None:
        await wait_ready(redis, REDIS_WAIT)
        # Other instances' writes drop our copies of their rooms (service.py docstring).
        service.start_watching()
        log.info(
            "MUC %s (instance %s) with rooms in Redis at %s",
            app.domain,
            app.instance,
            redact_url(url),
        )

    async def on_stop(_: Any) -> None:
        await service.stop_watching()
        await redis.aclose()

    return run_component(app, config, on_start=on_start, on_stop=on_stop)

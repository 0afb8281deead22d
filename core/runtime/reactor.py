"""Twisted on asyncio: one event loop for Twisted protocols and ``redis.asyncio``.

``install()`` must run before anything imports ``twisted.internet.reactor``; importing that
module installs the default reactor, after which ours can no longer be installed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


def install() -> None:
    """Install Twisted's asyncio reactor; a no-op when it already is the reactor."""
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import asyncioreactor, reactor

        if isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
            return
        raise RuntimeError(
            f"another Twisted reactor ({type(reactor).__name__}) is already installed; "
            "core.runtime.reactor.install() must run before twisted.internet.reactor is imported"
        )
    from twisted.internet import asyncioreactor

    # With no loop given Twisted creates a fresh one and makes it the current loop. We do not
    # use uvloop: with the asyncio reactor it has been seen to hang.
    asyncioreactor.install()


def _loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        # Called before reactor.run(): schedule on the reactor's loop, which runs soon.
        from twisted.internet import reactor

        loop = getattr(reactor, "_asyncioEventloop", None)
        if loop is None:
            raise RuntimeError("the asyncio reactor is not installed") from None
        return loop


def deferred_from_coro(coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Run an asyncio coroutine on the reactor's loop; its result as a Deferred."""
    return Deferred.fromFuture(asyncio.ensure_future(coro, loop=_loop()))

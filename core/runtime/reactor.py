"""Twisted on asyncio: one event loop for Twisted protocols and ``redis.asyncio``.

``install()`` must run before anything imports ``twisted.internet.reactor``; importing that
module installs the default reactor, after which ours can no longer be installed.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


def install(event_loop: str = "auto") -> None:
    """Install Twisted's asyncio reactor on a new event loop; a no-op when it already is the
    reactor. ``event_loop``: "uvloop", "asyncio", or "auto" (uvloop when installed)."""
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import asyncioreactor, reactor

        if isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
            return
        raise RuntimeError(
            f"another Twisted reactor ({type(reactor).__name__}) is already installed; "
            "core.runtime.reactor.install() must run before twisted.internet.reactor is imported"
        )
    from twisted.internet import asyncioreactor

    _stop_on_interrupt()
    loop = new_event_loop(event_loop)
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop of ``kind``. uvloop runs the same Twisted code with about a third
    less CPU per stanza and shorter latency tails (bench/README.md); Twisted's asyncio
    reactor accepts any loop but the Windows proactor."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise RuntimeError(
                    "runtime.event_loop is uvloop but uvloop is not installed: "
                    "pip install uvloop, or set it to auto or asyncio"
                ) from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


# Allocations between young-generation collections (CPython's default is 700). A server
# allocates short-lived objects for every stanza and Redis reply; collecting every 700 of
# them cost 10-15 % of the CPU of a login (bench/README.md). Cycles are still collected.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Collect less often, and leave what start-up built (modules, configuration, listeners)
    out of every later full collection: call once the process is serving."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _stop_on_interrupt() -> None:
    """Let SIGINT stop the process even when it started with SIGINT ignored.

    A shell starts background jobs with SIGINT ignored; Python then keeps it ignored and
    Twisted only takes over SIGINT from Python's default handler. A server started that way
    (by a script, a CI job, ``cmd &``) would ignore Ctrl-C and ``kill -INT``; restoring the
    default handler lets Twisted install its own, which stops the reactor cleanly."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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

"""runtime.event_loop: the loop under Twisted's asyncio reactor."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from core.runtime import reactor


@pytest.mark.parametrize(("kind", "expected"), [("auto", uvloop.Loop), ("uvloop", uvloop.Loop)])
def test_auto_and_uvloop_give_uvloop(kind: str, expected: type) -> None:
    """With uvloop installed (a dependency on Linux), auto and uvloop both run on it."""
    loop = reactor.new_event_loop(kind)
    try:
        assert isinstance(loop, expected)
    finally:
        loop.close()


def test_asyncio_gives_the_standard_loop() -> None:
    """event_loop = asyncio keeps asyncio's own loop (the switch to turn uvloop off)."""
    loop = reactor.new_event_loop("asyncio")
    try:
        assert not isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()


def test_uvloop_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for uvloop where it is not installed says what to do; auto falls back."""
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(RuntimeError, match="pip install uvloop"):
        reactor.new_event_loop("uvloop")
    loop = reactor.new_event_loop("auto")
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


def test_tune_gc_raises_the_young_threshold() -> None:
    """After tune_gc the young generation is collected every GC_YOUNG_THRESHOLD allocations,
    the older thresholds are kept, and start-up objects are frozen out of collections."""
    import gc

    before = gc.get_threshold()
    try:
        reactor.tune_gc()
        assert gc.get_threshold() == (reactor.GC_YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

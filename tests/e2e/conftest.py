"""Fixtures for end-to-end tests: real ``switchboard core`` processes on free ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import CoreProcess, separate_db


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def core(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    """One core process shared by the tests of a module, on a Redis database of its own.
    Tests that share it use their own user names."""
    proc = CoreProcess(separate_db(redis_server), Path(tmp_path_factory.mktemp("core"))).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def make_core(redis_server: str, tmp_path: Path) -> Iterator[Callable[..., CoreProcess]]:
    """A factory for fresh core processes (own Redis database); all are stopped at the end."""
    procs: list[CoreProcess] = []

    def make(**kwargs: object) -> CoreProcess:
        proc = CoreProcess(separate_db(redis_server), tmp_path / f"core{len(procs)}", **kwargs)  # type: ignore[arg-type]
        procs.append(proc)
        return proc.start()

    try:
        yield make
    finally:
        for p in procs:
            p.stop()

"""The wire layer (core/xmpp) passes mypy with the project's settings ([tool.mypy] in
pyproject.toml: strict, lxml-stubs for lxml)."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip(
    "mypy.api", reason="mypy is not installed (pip install -e '.[test]' brings it)"
)

ROOT = Path(__file__).resolve().parents[2]


def test_core_xmpp_passes_mypy(tmp_path: Path) -> None:
    """mypy reports no error in core/xmpp under the settings in pyproject.toml."""
    stdout, stderr, status = mypy_api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            # A fresh cache: a stale one in the tree must not hide an error.
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--no-error-summary",
            str(ROOT / "core" / "xmpp"),
        ]
    )
    assert status == 0 and stdout == "", stdout + stderr

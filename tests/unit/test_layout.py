"""The project's shape: what components may import, and that shipped files stay valid."""

from __future__ import annotations

import ast
from pathlib import Path

from core.runtime.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_CORE_PACKAGES = ("core.xmpp", "core.runtime")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_components_import_only_the_wire_layer_and_runtime() -> None:
    """Components reach the core only through core.xmpp and core.runtime, never its internals."""
    offenders = []
    for path in sorted((ROOT / "components").rglob("*.py")):
        for name in _imports(path):
            if (name == "core" or name.startswith("core.")) and not name.startswith(
                ALLOWED_CORE_PACKAGES
            ):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_wire_layer_holds_no_server_state() -> None:
    """core.xmpp imports nothing from the router process or the stores."""
    offenders = []
    for path in sorted((ROOT / "core" / "xmpp").rglob("*.py")):
        for name in _imports(path):
            if name.startswith("core.") and not name.startswith("core.xmpp"):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_example_config_is_valid_and_shows_the_defaults() -> None:
    """deploy/switchboard.example.toml loads without problems and matches the defaults."""
    example = load_config(str(ROOT / "deploy" / "switchboard.example.toml"), env={})
    defaults = load_config(None, env={})
    example.node_id = defaults.node_id = "n"
    assert isinstance(example, Config)
    assert example == defaults

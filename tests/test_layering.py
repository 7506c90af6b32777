"""The package layers import downwards only (DESIGN section 1), and moved names still import.

Layers: ``model`` <- ``wire``, ``runtime``, ``history``, ``symbols`` <- ``hub`` <- ``ws``,
``api`` <- ``app``; a provider package imports only ``model``, ``runtime`` and ``errors``.
Imports inside ``if TYPE_CHECKING:`` are annotations only and are not counted.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parent.parent / "backend"

BASE = {"errors", "logs", "tasks", "plugins", "ratelimits", "dbfile", "write_health"}
# What each part of ``backend`` may import (besides itself and BASE).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "logs": set(),
    "tasks": set(),
    "plugins": set(),
    "ratelimits": set(),
    # Which file DB names now, and a writer's failing writes said once (the bar store and
    # the alerts' journal share them).
    "dbfile": set(),
    "write_health": set(),
    "model": set(),
    "runtime": {"model"},
    "wire": {"model"},
    "symbols": {"model"},
    # The planner asks the providers' clocks what time it is for a series.
    "history": {"model", "runtime"},
    # Settings check provider keys against the registry.
    "settings": {"model", "runtime"},
    # Indicators read settings only for types (EXTRA_INDICATORS is passed in by the app).
    "indicators": {"model"},
    # Alerts read rules (indicators); the chat stands alone.
    "alerts": {"model", "indicators"},
    "chat": set(),
    "hub": {
        "model",
        "runtime",
        "wire",
        "history",
        "symbols",
        "settings",
        "indicators",
        "alerts",
        "chat",
    },
    # Access control: who the caller is and what it may cost (the hub gets hooks, set by app).
    "access": {"model", "settings"},
    "ws": {"model", "runtime", "wire", "hub", "settings", "access"},
    "api": {"model", "runtime", "wire", "history", "symbols", "hub", "ws", "settings", "access"},
    "data_providers": {"model", "runtime"},
    # The Redis bus (DESIGN 6): runs the supervisor on provider nodes, speaks the runtime's
    # messages over Redis, reads the settings; the hub never imports it (app chooses it).
    "bus": {"model", "runtime", "settings"},
    # Compatibility re-exports of moved public names.
    "provider": {"runtime"},
}
# May import anything (``workers`` imports the app before it forks the hub workers;
# ``serving`` is what server.py runs).
TOP = {"app", "__init__", "workers", "serving"}


def _part(module: str) -> str:
    """``backend.hub.hub`` -> ``hub``; ``backend.app`` -> ``app``."""
    return module.split(".")[1] if module.count(".") else "__init__"


def _module_name(path: Path) -> str:
    parts = path.relative_to(BACKEND.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    path = BACKEND.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Every ``backend...`` module imported outside ``if TYPE_CHECKING:`` blocks."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if _is_module(f"{node.module}.{alias.name}")
            )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [name for name in found if name.startswith("backend.")]


def _modules() -> list[Path]:
    return sorted(BACKEND.rglob("*.py"))


def _violations(path: Path) -> list[str]:
    importer = _part(_module_name(path))
    if importer in TOP:
        return []
    allowed = ALLOWED[importer] | BASE | {importer}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for name in _runtime_imports(tree):
        target = _part(name)
        if target not in allowed and target != "__init__":
            bad.append(f"{_module_name(path)} imports {name} ({importer} -> {target})")
    return bad


def test_every_backend_part_is_listed_in_the_layers() -> None:
    parts = {_part(_module_name(path)) for path in _modules()}
    assert parts - set(ALLOWED) - TOP == set()


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(BACKEND)))
def test_a_module_imports_only_its_own_or_lower_layers(path: Path) -> None:
    assert _violations(path) == []


def test_the_readme_provider_example_may_live_where_it_says() -> None:
    """README, "Write your own provider": the example is ``backend/data_providers/
    my_provider.py`` and imported ``backend.provider``, which that layer may not import: a
    user who saved it there, as told, got this module's test failing under ``make test``."""
    readme = (BACKEND.parent / "README.md").read_text(encoding="utf-8")
    first = "# backend/data_providers/my_provider.py\n"
    found = re.search(rf"```python\n({re.escape(first)}.*?)```", readme, re.S)
    assert found is not None, "the README's provider example"
    allowed = ALLOWED["data_providers"] | BASE | {"data_providers"}
    imports = _runtime_imports(ast.parse(found.group(1)))
    assert imports and [name for name in imports if _part(name) not in allowed] == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "from backend.hub.hub import Hub\n"
        "if TYPE_CHECKING:\n    from backend.app import create_app\n"
        "def f():\n    import backend.ws.endpoint\n"
    )
    assert _runtime_imports(tree) == ["backend.hub.hub", "backend.ws.endpoint"]


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("backend.provider", "Provider"),
        ("backend.provider", "StreamKey"),
        ("backend.data_providers.binance", "BinanceProvider"),
        ("backend.data_providers.polygon", "PolygonProvider"),
        ("backend.data_providers.csv", "CSVProvider"),
        ("backend.errors", "UnknownSymbol"),
        ("backend.errors", "RateLimited"),
        ("config", "load_settings"),
        ("config", "Settings"),
    ],
)
def test_names_users_already_import_still_import(module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name)


def test_a_registry_path_written_before_the_layout_still_loads() -> None:
    from backend.runtime.provider import Provider
    from backend.runtime.registry import PROVIDER_REGISTRY, load_provider_class

    for path in PROVIDER_REGISTRY.values():
        assert issubclass(load_provider_class(path), Provider)
    assert load_provider_class("backend.data_providers.binance:BinanceProvider").__name__ == (
        "BinanceProvider"
    )

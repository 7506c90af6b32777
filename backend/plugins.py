"""Loading user-supplied classes named by an import path ``module:Class``.

Providers (``PROVIDERS`` / ``EXTRA_PROVIDERS``) and indicators (``EXTRA_INDICATORS``) are
plugged in the same way; a bad path is a :class:`~backend.errors.ConfigError` at startup that
names it. :func:`locate_class` checks a path without running the module (a process that
must not import it, or not yet: before hub workers are forked), :func:`load_class` imports.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from typing import TypeVar

from backend.errors import ConfigError

T = TypeVar("T")


def load_class(path: str, base: type[T], what: str) -> type[T]:
    """Import ``module:Class`` from ``path`` and check that it is a subclass of ``base``.

    ``what`` names the kind of plugin in error messages ("provider", "indicator").
    """
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(f"{what} import path {path!r} must look like 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {what} module {module_name!r}: {exc}") from exc
    except Exception as exc:  # the module's own code failed: its type and first line
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise ConfigError(
            f"{what} module {module_name!r} failed on import: {type(exc).__name__} {first}"
        ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"{what} module {module_name!r} defines no {class_name!r}")
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise ConfigError(f"{path!r} is not a {base.__name__} subclass")
    return cls


def locate_class(path: str, what: str) -> None:
    """Check that ``module:Class`` names a module that exists and defines (or imports) that
    name at its top level, without running it; ``ConfigError`` when it does not. Only the
    module's parent packages are imported (to find it)."""
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(f"{what} import path {path!r} must look like 'module:Class'")
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"cannot import {what} module {module_name!r}: {exc}") from None
    if spec is None:
        raise ConfigError(f"cannot import {what} module {module_name!r}: no module of that name")
    origin = spec.origin
    if not origin or not origin.endswith(".py"):
        return  # compiled or namespace: found; what it holds is seen when it is imported
    try:
        tree = ast.parse(Path(origin).read_bytes(), origin)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ConfigError(f"{what} module {module_name!r} cannot be read: {exc}") from None
    if class_name not in _top_level_names(tree):
        raise ConfigError(f"{what} module {module_name!r} defines no {class_name!r}")


def _top_level_names(tree: ast.Module) -> set[str]:
    return _names_in(tree.body)


def _names_in(body: list[ast.stmt]) -> set[str]:
    """The names a block of statements binds (also inside ``if`` and ``try`` blocks)."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.If):
            names |= _names_in(node.body) | _names_in(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                names |= _names_in(block)
            for handler in node.handlers:
                names |= _names_in(handler.body)
    return names

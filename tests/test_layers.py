"""Imports run one way, from the floor up: no module imports another that imports it back
(directly or around a loop, at the top or inside a function), and none takes another
module's private name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trtopt
from helpers import ROOT
from trtopt import calibration

PACKAGE = ROOT / "src" / "trtopt"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imported(module: str, node: ast.ImportFrom) -> str | None:
    """The absolute module an ``from ... import`` names (None: outside trtopt)."""
    if not node.level:
        return node.module if (node.module or "").startswith("trtopt") else None
    package = module.split(".")
    if MODULES[module].name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join([*package, *([node.module] if node.module else [])])


def _imports() -> dict[str, list[tuple[str, str, int]]]:
    """Per module: (module imported, name imported, line) for every trtopt import in it."""
    found: dict[str, list[tuple[str, str, int]]] = {}
    for module, path in MODULES.items():
        edges = found.setdefault(module, [])
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (target := _imported(module, node)):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.append((sub if sub in MODULES else target, alias.name, node.lineno))
            elif isinstance(node, ast.Import):
                edges += [(a.name, "", node.lineno) for a in node.names if a.name in MODULES]
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop, as the modules around it, or None."""
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        trail.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*trail[trail.index(target) :], target]
            if target not in state and (loop := visit(target)):
                return loop
        state[module] = 2
        trail.pop()
        return None

    for module in sorted(graph):
        if module not in state and (loop := visit(module)):
            return loop
    return None


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for module, edges in _imports().items():
        for target, _, _ in edges:
            if target in MODULES and target != module:
                graph.setdefault(module, set()).add(target)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_private_name_taken_from_another_module():
    taken = [
        f"{MODULES[module].relative_to(ROOT)}:{line}: {name} from {target}"
        for module, edges in _imports().items()
        for target, name, line in edges
        if name.startswith("_") and not name.startswith("__") and target != module
    ]
    assert not taken, "\n".join(taken)


@pytest.mark.parametrize("package", [trtopt, calibration], ids=lambda p: p.__name__)
def test_a_lazy_package_exports_what_type_checkers_see(package):
    tree = ast.parse(Path(package.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If))  # `if TYPE_CHECKING:`
    seen = {
        alias.name: (node.module or "").lstrip(".")
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    lazy = {name: module for module, names in package._EXPORTS.items() for name in names}
    assert seen == lazy
    for name in package.__all__:
        assert getattr(package, name) is not None

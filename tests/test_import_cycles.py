"""No module-level import cycle in ``pytest_fmbench`` (REVIEW M12).

A cycle is found over module-level ``import``/``from ... import`` statements only: an import
inside a function runs when it is called, after every module is loaded, so it cannot cycle
at import time. Such lazy imports are fine, but one that exists only to break a cycle is
listed in ``LAZY_CYCLE_BREAKERS`` so the next reader sees it.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import pytest_fmbench
import pytest_fmbench.load

PACKAGE = "pytest_fmbench"
ROOT = Path(pytest_fmbench.__file__).parent
# (importer, imported) pairs of function-level imports kept on purpose to break a cycle.
LAZY_CYCLE_BREAKERS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in ROOT.rglob("*.py")}


def _resolve(importer: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def module_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports at module level (not inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    pending: list[ast.AST] = list(tree.body)
    while pending:  # module level, including if/try blocks (e.g. TYPE_CHECKING is skipped)
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                pending.extend(getattr(node, field, []))
            continue
        if isinstance(node, ast.ExceptHandler):
            pending.extend(node.body)
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(name, node, path.name == "__init__.py")
            # `from pkg import mod` imports the submodule pkg.mod
            targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        for target in targets:
            if target in known and target != name:
                found.add(target)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (each reported once, from where it closes)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: module_level_imports(name, path, known) for name, path in modules.items()}


def test_every_load_module_imports() -> None:
    names = [info.name for info in pkgutil.iter_modules(pytest_fmbench.load.__path__,
                                                        "pytest_fmbench.load.")]
    assert "pytest_fmbench.load.driver" in names
    for name in names:
        importlib.import_module(name)


def test_no_module_level_import_cycle_in_the_package() -> None:
    assert import_cycles(_graph()) == []


def test_engine_and_processes_share_the_driver_instead_of_importing_each_other() -> None:
    graph = _graph()
    assert "pytest_fmbench.load.driver" in graph["pytest_fmbench.load.engine"]
    assert "pytest_fmbench.load.driver" in graph["pytest_fmbench.load.processes"]
    assert "pytest_fmbench.load.engine" not in graph["pytest_fmbench.load.processes"]


def test_lazy_cycle_breakers_are_still_needed() -> None:
    """An allow-listed lazy import that no longer closes a cycle is taken off the list."""
    graph = _graph()
    for importer, imported in LAZY_CYCLE_BREAKERS:
        with_it = {**graph, importer: graph[importer] | {imported}}
        assert import_cycles(with_it), f"{importer} -> {imported} no longer breaks a cycle"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


LOAD_AND_DRIVER = {"pytest_fmbench.load", "pytest_fmbench.load.driver"}


@pytest.mark.parametrize("source, expected", [
    ("from pytest_fmbench.load import driver\n", LOAD_AND_DRIVER),
    ("def f():\n    from pytest_fmbench.load import driver\n", set()),
    ("from . import driver\n", LOAD_AND_DRIVER),
    (("from typing import TYPE_CHECKING\n"
      "if TYPE_CHECKING:\n    import pytest_fmbench.load.driver\n"), set()),
])
def test_only_module_level_imports_count(tmp_path: Path, source: str, expected: set[str]) -> None:
    module = tmp_path / "engine.py"
    module.write_text(source)
    known = {"pytest_fmbench.load", "pytest_fmbench.load.driver", "pytest_fmbench.load.engine"}
    assert module_level_imports("pytest_fmbench.load.engine", module, known) == expected

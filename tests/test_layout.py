"""The package's shape: every part is a folder and imports run one way.

The import graph is read from the source with :mod:`ast` (nothing is
imported), counting every import: at module level, inside functions and under
``if TYPE_CHECKING:``.  ``from pkg import name`` counts as an import of the
submodule ``pkg.name`` when there is one, else of ``pkg`` itself; the parent
packages Python runs implicitly are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "trio_periodic"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
TOP_LEVEL_FILES = {"__init__.py", "__main__.py"}


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve(module: str, modules: dict[str, Path]) -> str | None:
    """The deepest module of ours that ``module`` names (None: not ours)."""
    parts = module.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(name: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports."""
    tree = ast.parse(modules[name].read_text(), str(modules[name]))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (target := _resolve(alias.name, modules)) is not None:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}", modules)
                if target is None or target != f"{base}.{alias.name}":
                    target = _resolve(base, modules)
                if target is not None:
                    found.add(target)
    found.discard(name)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, modules) for name in modules}


def test_the_graph_sees_imports() -> None:
    # Guard against a walker that finds nothing (and so no cycle).
    graph = import_graph()
    assert "trio_periodic.protocol.job" in graph["trio_periodic.scheduler.core"]
    assert "trio_periodic.protocol.packets" in graph["trio_periodic.protocol"]
    assert sum(len(targets) for targets in graph.values()) > 100


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_graph())
    assert cycles == [], "modules that import each other: " + "; ".join(
        " ↔ ".join(cycle) for cycle in cycles
    )


def test_every_part_is_a_folder() -> None:
    loose = sorted(path.name for path in ROOT.glob("*.py") if path.name not in TOP_LEVEL_FILES)
    assert loose == [], f"modules at the top of {PACKAGE}/ (move them into a part): {loose}"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_cycle_finder(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert import_cycles(graph) == expected


def test_type_checking_and_lazy_imports_count(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.b import B\n"
    )
    (pkg / "sub" / "b.py").write_text("def f():\n    from . import a\n")
    modules = module_names(pkg)
    graph = {name: imports_of(name, modules) for name in modules}
    assert graph["pkg.sub.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.sub.a"}
    assert import_cycles(graph) == [["pkg.sub.a", "pkg.sub.b"]]

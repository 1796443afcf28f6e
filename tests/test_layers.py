"""The house's frame: no two modules import each other, directly or round a loop.

The layers between packages are import-linter's contracts (pyproject ``[tool.importlinter]``,
run by .ci/run as ``lint-imports``); this test reads the same import graph (grimp, the
library import-linter is built on) for what a layers contract cannot see: circles between
modules, inside a package or across. Imports under ``TYPE_CHECKING`` are names for the type
checker, not imports at run time, and are left out.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def _packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return list(config["root_packages"])


def _circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(
                        graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_circles() -> None:
    graph = grimp.build_graph(*_packages(), exclude_type_checking_imports=True)
    circles = _circles(graph)
    described = []
    for circle in circles:
        members = set(circle)
        ties = [f"{a} -> {b}" for a in circle
                for b in sorted(graph.find_modules_directly_imported_by(a)) if b in members]
        described.append(f"{len(circle)} modules: " + "; ".join(ties))
    assert not circles, "modules that import each other:\n" + "\n".join(described)


def test_the_circle_finder_finds_a_circle() -> None:
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    graph.add_import(importer="pkg.d", imported="pkg.a")
    assert _circles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]

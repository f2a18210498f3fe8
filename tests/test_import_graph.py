"""The import graph of covjax/ and experiments/: no experiment imports another, no cycle.

Every ``.py`` module under ``covjax/`` and ``experiments/`` is parsed with
``ast``; each ``import`` and ``from ... import`` statement, at module level or
inside a function (a local import is still a dependency), is resolved to the
most specific project module it names (``from experiments.common import
train`` depends on ``experiments.common.train``; ``from covjax import mgda`` on
the ``covjax`` package, whose ``__init__`` defines the name).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("covjax", "experiments")
#: The experiments, each of which may use experiments.common and experiments.data only.
TASKS = ("depth", "segmentation", "multitask")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {
    module_name(path): path
    for package in PACKAGES
    for path in sorted((REPO / package).rglob("*.py"))
}


def _imported(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """The dotted names an import statement brings in (before resolution)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the module's package, up level - 1 more
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([base] if base else [])])
        for alias in node.names:
            yield f"{base}.{alias.name}"


def _resolve(name: str) -> str | None:
    """The most specific project module of a dotted name (None: not the project's)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def dependencies(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        for name in _imported(node, module, path.name == "__init__.py"):
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH: dict[str, set[str]] = {module: dependencies(module) for module in MODULES}


def _task_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "experiments" and parts[1] in TASKS else None


def test_the_graph_is_read() -> None:
    """The parser finds the imports it must (else the other tests could not fail)."""
    assert "experiments.common.train" in GRAPH["experiments.common.evaluate"]
    assert "experiments.depth.train" in GRAPH["experiments.depth.main"]
    assert "experiments.common.backbones" in GRAPH["experiments.multitask.models"]


@pytest.mark.parametrize("task", TASKS)
def test_no_experiment_imports_another(task: str) -> None:
    crossing = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _task_of(module) == task
        for target in targets
        if _task_of(target) not in (None, task)
    )
    assert not crossing, "shared pieces belong in experiments/common:\n" + "\n".join(crossing)


def test_shared_code_imports_no_experiment() -> None:
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith(("covjax", "experiments.common", "experiments.data"))
        for target in targets
        if _task_of(target) is not None
    )
    assert not upward, "\n".join(upward)


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph has hundreds of nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
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
                components.append(sorted(component))
    return components


def test_strongly_connected_components_find_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(map(tuple, strongly_connected_components(graph))) == [("a", "b", "c"), ("d",)]


def test_no_import_cycle() -> None:
    cycles = [component for component in strongly_connected_components(GRAPH) if len(component) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)

"""The code's shape, as ARCHITECTURE.md states it: imports go one way, modules stay small.

These read the source (no imports run), so a cycle or a backwards import fails here before
it confuses a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("cli", "flows", "tasks", "deployments")
MAX_LINES = 600


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Modules of ours that `path` imports, at module level or inside functions."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                targets.add(name)
    return targets


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    edges = {name: imports_of(path, known) - {name} for name, path in found.items()}
    # A package's __init__ re-exporting its modules is not a dependency of those modules.
    return {
        name: {t for t in targets if not name.startswith(t + ".") and t != name}
        for name, targets in edges.items()
    }


def test_imports_go_one_way():
    layer = {"cli": 3, "deployments": 2, "flows": 1, "tasks": 0}
    wrong = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        for target in targets
        if layer[target.split(".")[0]] > layer[name.split(".")[0]]
    ]
    assert wrong == [], "tasks must not import flows/cli; flows must not import cli"


def test_core_depends_on_no_domain():
    allowed = ("tasks.core", "tasks.storage")
    wrong = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        if name.startswith(allowed)
        for target in targets
        if target.startswith("tasks.") and not target.startswith(allowed)
    ]
    assert wrong == []


def test_no_import_cycles():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    assert cycles == []


def test_flows_hold_only_flows():
    tasks_in_flows = [
        f"{path.name}:{node.lineno}"
        for path in (REPO / "flows").glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
        for decorator in node.decorator_list
        if "task" in ast.unparse(decorator).split("(")[0].split(".")[-1]
    ]
    assert tasks_in_flows == [], "Prefect tasks belong in tasks/<domain>/tasks.py"


def test_no_module_is_too_long():
    long = {
        str(path.relative_to(REPO)): n
        for package in ("flows", "tasks")
        for path in (REPO / package).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}

"""The layering rules of the architecture, enforced on the source tree.

shared/ imports neither cloud/ nor edge/ (and does no I/O: no sockets, files or torch);
cloud/ never imports edge/; edge/ never imports cloud/ and never torch at import time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "shared": {"cloud", "edge", "simulations", "torch", "socket", "paho", "sqlalchemy", "requests"},
    "cloud": {"edge", "simulations"},
    "edge": {"cloud", "simulations", "torch"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layers(package: str) -> None:
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        # edge/learning trains with torch on devices whose profile says so: the only place.
        allowed = {"torch"} if package == "edge" and "learning" in path.parts else set()
        bad = (_imports(path) & FORBIDDEN[package]) - allowed
        if bad:
            violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert violations == []


def test_fedge_help_does_not_import_torch() -> None:
    code = "import sys, simulations.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def _module_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (every import, lazy ones included)."""
    modules: dict[str, Path] = {}
    for package in ("cloud", "edge", "shared", "simulations"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            targets.update(c for c in candidates if c in modules and c != name)
        # A package's own __init__ importing its children is not a cycle between planes.
        graph[name] = {t for t in targets if not t.startswith(name + ".")}
    return graph


def test_the_import_graph_has_no_cycles() -> None:
    """No two modules import each other, directly or through others (DESIGN §2)."""
    graph = _module_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []

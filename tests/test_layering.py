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

"""Edge import hygiene: no torch, and one module owns the TFLite runtime import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIMES = {"ai_edge_litert", "tflite_runtime", "tensorflow"}


def test_edge_imports_leave_torch_and_cloud_unloaded() -> None:
    code = (
        "import sys, edge.agent, edge.inference, edge.cli, edge.outbox, edge.messaging\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'cloud'})\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_only_edge_inference_runtime_imports_a_tflite_runtime() -> None:
    offenders = []
    for path in sorted([*ROOT.glob("edge/**/*.py"), *ROOT.glob("shared/**/*.py")]):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if {n.split(".")[0] for n in names} & RUNTIMES:
                offenders.append(str(path.relative_to(ROOT)))
    assert set(offenders) == {"edge/inference/runtime.py"}


def test_cli_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for command in ("run", "serve", "infer", "check-profile"):
        assert command in out


def test_cli_check_profile_names_the_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        (ROOT / "firmware_configs/smart_camera.toml")
        .read_text()
        .replace("inference_threads = 2", 'inference_threads = "two"')
    )
    result = subprocess.run(
        [sys.executable, "-m", "edge", "check-profile", str(bad), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    error = __import__("json").loads(result.stdout)["error"]
    assert error["code"] == "invalid_profile" and "inference_threads" in error["message"]

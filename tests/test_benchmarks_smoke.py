"""Benchmarks still run: ``--quick`` end to end, with every row present and finite.

A smoke test, not a measurement: it asserts the shape of the results, never a timing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

VARIANT_ROWS = [
    f"LiteRT {p} {layout} 1t"
    for p in ("float32", "float16", "dynamic-int8", "int8")
    for layout in ("NCHW", "NHWC")
]
STACK_ROWS = [
    "Predictor (float in)",
    "Unix socket (float in)",
    "HTTP npy (float in)",
    "HTTP JSON (float in)",
    "torch eager float32 1t",
    *(
        f"LiteRT {p} {lay} 1t (3x32x32 CNN)"
        for p in ("float32", "int8")
        for lay in ("NCHW", "NHWC")
    ),
    "LiteRT float32 NCHW 1t + caller's transpose (3x32x32 CNN)",
]
PEER_ROWS = [
    "onnxruntime float32 1t",
    "onnxruntime int8 QDQ 1t",
    "ExecuTorch XNNPACK float32 1t",
    "ExecuTorch XNNPACK int8 1t",
]
THROUGHPUT = [f"{p} x{c}" for c in (1, 4) for p in ("Predictor", "Unix socket", "HTTP npy")]


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_edge_inference_quick(tmp_path: Path) -> None:
    cached = os.environ.get("FEDGE_TEST_MODELS_DIR")
    models = Path(cached) / "edge-bench" if cached else tmp_path / "models"
    out = tmp_path / "edge_inference.json"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/edge_inference.py",
            *("--quick", "--json", "--models-dir", str(models), "--out", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result  # --json prints exactly what it writes
    latency = result["latency_us"]
    for row in VARIANT_ROWS + STACK_ROWS:
        assert row in latency, row
    threads = result["config"]["profile_threads"]
    for p in ("float32", "float16", "dynamic-int8", "int8"):
        assert f"LiteRT {p} NHWC {threads}t" in latency
    for row in PEER_ROWS:
        # A peer that cannot install here is reported with its reason, never silently absent.
        assert (row in latency) != (row in result["unavailable"]), row
        if row in result["unavailable"]:
            assert result["unavailable"][row].strip()
    for name, r in latency.items():
        assert all(_finite(r[k]) for k in ("median_us", "p99_us", "rep_min_us")), (name, r)
    assert set(result["throughput_rps"]) == set(THROUGHPUT)
    assert all(_finite(v) for v in result["throughput_rps"].values())
    choice = result["choice"]
    assert choice["chosen"] in choice["approved"]
    assert set(choice["agent_measured"]) == {"float32", "float16", "dynamic-int8", "int8"}
    assert _finite(result["ratios"]["chosen_vs_fastest_variant"])
    assert _finite(result["ratios"]["nhwc_vs_nchw_float32"])
    assert _finite(result["ratios"]["nhwc_vs_nchw_int8"])
    load = result["machine"]
    assert len(load["load_before"]) == 3 and len(load["load_after"]) == 3
    assert "shadow" in result  # measured, or the reason it could not be

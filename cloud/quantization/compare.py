"""Side-by-side numbers for a quantized version: torch eager float vs its TFLite artifacts.

Used by ``make demo`` and ``benchmarks/quantization.py``: all latencies are single-sample,
single-thread, measured in the same process on the same input.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from cloud.data import split_from_record
from cloud.quantization.convert import InputLayout, to_layout
from cloud.quantization.litert_eval import evaluate_tflite
from cloud.registry import Registry
from cloud.training import ModelSpec, evaluate_torch
from cloud.training.serialize import model_from_bytes


@dataclass(frozen=True)
class Row:
    """One runtime/precision measured on the held-out split."""

    name: str
    accuracy: float
    bytes: int
    latency_median_ms: float
    latency_p99_ms: float
    status: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def torch_latency(model: torch.nn.Module, sample: np.ndarray, runs: int) -> tuple[float, float]:
    """Median and p99 milliseconds of one eager forward pass on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.from_numpy(sample)
        with torch.inference_mode():
            for _ in range(20):
                model(x)
            timings = np.empty(runs)
            for i in range(runs):
                start = time.perf_counter_ns()
                model(x)
                timings[i] = time.perf_counter_ns() - start
    finally:
        torch.set_num_threads(previous)
    return float(np.median(timings) / 1e6), float(np.percentile(timings, 99) / 1e6)


def compare_version(registry: Registry, ref: str, *, runs: int = 1000) -> list[Row]:
    """Measure torch eager fp32 and every TFLite artifact of ``ref`` on its test split."""
    version = registry.get_version(ref)
    spec = ModelSpec.from_dict(version.spec)
    torch_art = version.artifact("torch", "fp32")
    model = model_from_bytes(spec, registry.read_artifact(torch_art))
    split = split_from_record(version.data)
    accuracy, _ = evaluate_torch(model, split.test_x, split.test_y)
    median, p99 = torch_latency(model, split.test_x[:1], runs)
    rows = [Row("torch eager fp32", accuracy, torch_art.bytes, median, p99, "source")]
    for art in version.artifacts:
        if art.format != "tflite":
            continue
        # Artifacts from before layouts were recorded took the torch layout.
        layout = art.metrics.get("input_layout", InputLayout.AS_TRAINED)
        ev = evaluate_tflite(
            registry.read_artifact(art),
            to_layout(split.test_x, layout),
            split.test_y,
            latency_runs=runs,
        )
        rows.append(
            Row(
                f"LiteRT {art.precision}",
                ev.accuracy,
                ev.bytes,
                ev.latency_median_ms,
                ev.latency_p99_ms,
                art.status,
            )
        )
    return rows

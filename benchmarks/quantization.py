"""Benchmark: torch eager float vs LiteRT float vs LiteRT int8 on mnist-5k, in one run.

Trains the default CNN, quantizes it through the registry pipeline, then measures accuracy
on the held-out split, file size and single-sample single-thread latency (median, p99) of
each runtime on the same input. Prints a table with ratios against the baselines and the
issue's targets, and writes JSON.

    .venv/bin/python benchmarks/quantization.py [--epochs 12] [--runs 2000] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cloud.quantization import quantize_version
from cloud.quantization.compare import compare_version
from cloud.registry import Registry
from cloud.training import TrainConfig
from cloud.training.workflow import TrainRequest, train_and_register

DEFAULT_OUT = Path(__file__).parent / "results" / "quantization.json"


def main() -> None:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=2000, help="timed invokes per runtime")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        registry = Registry(f"sqlite:///{tmp}/registry.db", Path(tmp) / "artifacts")
        try:
            started = time.perf_counter()
            with console.status("training"):
                version = train_and_register(
                    registry,
                    TrainRequest(
                        "mnist-5k", config=TrainConfig(epochs=args.epochs, seed=args.seed)
                    ),
                )
            with console.status("quantizing"):
                report = quantize_version(registry, version.ref)
            with console.status("measuring"):
                rows = {r.name: r for r in compare_version(registry, version.ref, runs=args.runs)}
        finally:
            registry.close()
    torch_row = rows["torch eager fp32"]
    fp32, int8 = rows["LiteRT float32"], rows.get("LiteRT int8")
    if int8 is None:
        raise SystemExit(f"no int8 artifact was produced: {report.attempts}")
    targets = {
        "float_accuracy_ge_97pct": torch_row.accuracy >= 0.97,
        "int8_drop_le_1pt": (torch_row.accuracy - int8.accuracy) * 100 <= 1.0,
        "int8_bytes_le_0.30x_float_tflite": int8.bytes / fp32.bytes <= 0.30,
        "int8_median_le_0.33x_torch": int8.latency_median_ms / torch_row.latency_median_ms <= 0.33,
    }
    result = {
        "benchmark": "quantization",
        "dataset": "mnist-5k",
        "version": version.ref,
        "epochs": args.epochs,
        "runs": args.runs,
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "seconds_total": round(time.perf_counter() - started, 1),
        "rows": [r.to_dict() for r in rows.values()],
        "ratios": {
            "int8_bytes_vs_fp32_tflite": int8.bytes / fp32.bytes,
            "int8_median_vs_torch": int8.latency_median_ms / torch_row.latency_median_ms,
            "int8_median_vs_fp32_tflite": int8.latency_median_ms / fp32.latency_median_ms,
            "int8_accuracy_drop_points": (torch_row.accuracy - int8.accuracy) * 100,
        },
        "targets_met": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    table = Table(title=f"{version.ref}: 1 thread, batch 1, {args.runs} runs")
    for col in ("runtime", "accuracy", "bytes", "bytes ×", "median ms", "p99 ms", "median × torch"):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    for r in rows.values():
        table.add_row(
            r.name,
            f"{r.accuracy:.2%}",
            f"{r.bytes:,}",
            f"{r.bytes / fp32.bytes:.3f}" if r.name.startswith("LiteRT") else "",
            f"{r.latency_median_ms:.4f}",
            f"{r.latency_p99_ms:.4f}",
            f"{r.latency_median_ms / torch_row.latency_median_ms:.3f}",
        )
    console.print(table)
    for name, ok in targets.items():
        console.print(f"{'PASS' if ok else 'MISS'}  {name}")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

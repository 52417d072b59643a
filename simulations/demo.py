"""``make demo``: train on mnist-5k, quantize to int8, and compare float vs int8.

Later issues grow this into the whole system demo (federation, secure delivery, rollout).
"""

from __future__ import annotations

import argparse
import json
import logging

from rich.console import Console
from rich.table import Table

from cloud.cli import open_registry
from cloud.quantization import quantize_version
from cloud.quantization.compare import compare_version
from cloud.training import TrainConfig
from cloud.training.workflow import TrainRequest, train_and_register

console = Console()


def main() -> None:
    """Run the demo; ``--json`` prints the measurements instead of tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    registry = open_registry()
    try:
        with console.status("training a CNN on mnist-5k"):
            version = train_and_register(
                registry, TrainRequest(data="mnist-5k", config=TrainConfig(epochs=args.epochs))
            )
        console.print(
            f"trained [bold]{version.ref}[/]: test accuracy "
            f"{version.metrics['test_accuracy']:.2%} in {version.metrics['seconds']:.1f}s"
        )
        with console.status("converting and quantizing (verified in LiteRT)") as status:
            report = quantize_version(registry, version.ref, on_step=status.update)
        with console.status("measuring single-thread latency"):
            rows = compare_version(registry, version.ref, runs=500)
    finally:
        registry.close()
    if args.json:
        print(
            json.dumps(
                {
                    "version": version.ref,
                    "selected": report.selected,
                    "rows": [r.to_dict() for r in rows],
                },
                indent=2,
            )
        )
        return
    table = Table(title=f"{version.ref} on the held-out mnist-5k split (1 thread)")
    for col in ("runtime", "accuracy", "bytes", "median ms", "p99 ms", "status"):
        table.add_column(col, justify="right" if col not in ("runtime", "status") else "left")
    for r in rows:
        table.add_row(
            r.name,
            f"{r.accuracy:.2%}",
            f"{r.bytes:,}",
            f"{r.latency_median_ms:.3f}",
            f"{r.latency_p99_ms:.3f}",
            r.status,
        )
    console.print(table)
    console.print(
        f"deployable artifact: [bold]{report.selected}[/]. "
        f"Inspect with `fedge models show {version.ref}`."
    )


if __name__ == "__main__":
    main()

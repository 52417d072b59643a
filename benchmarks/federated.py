"""Benchmark: centralized vs FedAvg (fp32 / int8 / top-k updates) vs FedProx, in one run.

Every federated row runs for real on Flower's Simulation Engine with the edge ClientApp,
on Dirichlet(α) label-skewed partitions, and reports accuracy per round on the held-out
split, bytes up/down per round and wall time. The centralized row trains the same
architecture on the union of the partitions for ``rounds x local_epochs`` epochs (note:
with the centralized trainer's AdamW + one-cycle schedule, not the clients' SGD).

The issue's full configuration is ``--data mnist-5k --clients 10 --rounds 20 --alpha 0.3``;
the default here is smaller so it finishes in a few minutes on 2 CPUs.

    .venv/bin/python benchmarks/federated.py [--data digits] [--clients 5] [--rounds 8]
        [--alpha 0.3] [--out benchmarks/results/federated.json]

Writes JSON and, unless ``--no-plot``, a PNG of accuracy per round next to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloud.data import load_dataset, stratified_split  # noqa: E402
from cloud.federation.plan import FederationPlan  # noqa: E402
from cloud.federation.simulation import run_simulated_federation  # noqa: E402
from cloud.federation.strategies import Participation  # noqa: E402
from cloud.registry import Registry  # noqa: E402
from cloud.training import ModelSpec, TrainConfig, default_arch, train  # noqa: E402

ROWS: list[tuple[str, dict[str, Any]]] = [
    ("fedavg fp32", {"strategy": "fedavg", "update_mode": "fp32"}),
    ("fedavg int8", {"strategy": "fedavg", "update_mode": "int8"}),
    ("fedavg topk10%+EF", {"strategy": "fedavg", "update_mode": "topk", "topk_fraction": 0.1}),
    ("fedprox int8", {"strategy": "fedprox", "update_mode": "int8", "proximal_mu": 0.01}),
]


def centralized(data: str, epochs: int, seed: int) -> dict[str, Any]:
    """Train on the whole train split with the same total epochs."""
    dataset = load_dataset(data)
    split = stratified_split(dataset, seed=seed)
    spec = ModelSpec(default_arch(dataset.input_shape), dataset.input_shape, dataset.num_classes)
    started = time.perf_counter()
    result = train(split, spec, TrainConfig(epochs=epochs, seed=seed, device="cpu"))
    return {
        "name": "centralized",
        "final_accuracy": result.metrics["test_accuracy"],
        "seconds": round(time.perf_counter() - started, 2),
    }


def federated(name: str, overrides: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One federated configuration, in a throw-away registry."""
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(f"sqlite:///{tmp}/r.db", Path(tmp) / "artifacts")
        plan = FederationPlan(
            data=args.data,
            num_clients=args.clients,
            rounds=args.rounds,
            participation=Participation(1.0, args.clients, args.clients),
            local_epochs=args.local_epochs,
            alpha=args.alpha,
            seed=args.seed,
            quantize=False,
            **overrides,
        )
        started = time.perf_counter()
        result = run_simulated_federation(plan, registry, num_cpus=args.cpus)
        seconds = time.perf_counter() - started
        registry.close()
    rounds = [r.to_dict() for r in result.rounds]
    # Round 1 includes Ray start-up; steady-state round time excludes it.
    steady = [r["seconds"] for r in rounds[1:]] or [rounds[0]["seconds"]]
    return {
        "name": name,
        **overrides,
        "initial_accuracy": result.initial_accuracy,
        "final_accuracy": rounds[-1]["accuracy"],
        "accuracy_per_round": [r["accuracy"] for r in rounds],
        "bytes_up_per_round": rounds[-1]["bytes_up"],
        "bytes_down_per_round": rounds[-1]["bytes_down"],
        "upload_ratio_vs_fp32": rounds[-1]["bytes_up"] / rounds[-1]["raw_bytes_up"],
        "median_round_seconds": sorted(steady)[len(steady) // 2],
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/federated.json")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)

    rows = [centralized(args.data, args.rounds * args.local_epochs, args.seed)]
    for name, overrides in ROWS:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.append(federated(name, overrides, args))

    central = rows[0]["final_accuracy"]
    fp32 = next(r for r in rows if r["name"] == "fedavg fp32")
    print(
        f"\n{args.data}, {args.clients} clients, Dirichlet α={args.alpha}, {args.rounds} rounds "
        f"x {args.local_epochs} local epochs"
    )
    print(f"{'row':<20}{'final acc':>10}{'Δ central':>11}{'up B/round':>12}{'up ratio':>10}"
          f"{'round s':>9}{'total s':>9}")  # fmt: skip
    for r in rows:
        up = r.get("bytes_up_per_round")
        delta = 100 * (r["final_accuracy"] - central)
        print(
            f"{r['name']:<20}{r['final_accuracy']:>10.4f}{delta:>+10.2f}p"
            f"{(up if up is not None else 0):>12,}{r.get('upload_ratio_vs_fp32', 1.0):>10.3f}"
            f"{r.get('median_round_seconds', 0):>9.2f}{r['seconds']:>9.1f}"
        )
    report = {
        "config": vars(args) | {"out": str(args.out)},
        "platform": platform.platform(),
        "rows": rows,
        "targets": {
            # Rounded: accuracies are k/N, and 0.983 - 0.963 must count as 2 points, not 2+ε.
            "fedavg_within_2_points_of_centralized": round(central - fp32["final_accuracy"], 9)
            <= 0.02,
            "int8_upload_ratio_le_0.27": next(r for r in rows if r["name"] == "fedavg int8")[
                "upload_ratio_vs_fp32"
            ]
            <= 0.27,
        },
        "not_measured": "SecAgg+ round time (SecAgg+ is not wired yet; see issue 5 note)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for r in rows[1:]:
            ax.plot(range(1, len(r["accuracy_per_round"]) + 1), r["accuracy_per_round"],
                    marker="o", label=r["name"])  # fmt: skip
        ax.axhline(central, color="k", linestyle="--", label="centralized")
        ax.set_xlabel("round")
        ax.set_ylabel("held-out accuracy")
        ax.legend()
        png = args.out.with_suffix(".png")
        fig.savefig(png, dpi=120, bbox_inches="tight")
        print(f"wrote {png}")


if __name__ == "__main__":
    main()

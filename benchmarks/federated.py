"""Benchmark: centralized vs FedAvg (fp32 / int8 / top-k updates) vs FedProx, in one run.

Every federated row runs for real on Flower's Simulation Engine with the edge ClientApp,
on Dirichlet(α) label-skewed partitions, and reports accuracy per round on the held-out
split, bytes up/down per round and wall time. The centralized row trains the same
architecture on the union of the partitions for ``rounds x local_epochs`` epochs (note:
with the centralized trainer's AdamW + one-cycle schedule, not the clients' SGD). Client
training uses fedge's defaults (``cloud.federation.defaults``: SGD momentum 0.9, batch 16,
lr 0.05 decayed x0.95 per round); ``--lr``, ``--lr-decay``, ``--batch-size`` override them and
``--rows`` runs a subset of the federated rows.

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
from cloud.federation import defaults  # noqa: E402
from cloud.federation.plan import FederationPlan  # noqa: E402
from cloud.federation.simulation import run_simulated_federation  # noqa: E402
from cloud.federation.strategies import Participation  # noqa: E402
from cloud.registry import Registry  # noqa: E402
from cloud.training import ModelSpec, TrainConfig, default_arch, train  # noqa: E402

_PLAIN = {"secure_aggregation": False}
ROWS: list[tuple[str, dict[str, Any]]] = [
    ("fedavg fp32", {"strategy": "fedavg", "update_mode": "fp32", **_PLAIN}),
    ("fedavg int8", {"strategy": "fedavg", "update_mode": "int8", **_PLAIN}),
    (
        "fedavg topk10%+EF",
        {"strategy": "fedavg", "update_mode": "topk", "topk_fraction": 0.1, **_PLAIN},
    ),
    ("fedprox int8", {"strategy": "fedprox", "update_mode": "int8", "proximal_mu": 0.01, **_PLAIN}),
    # SecAgg+ uploads masked int64 vectors; update_mode does not apply (cloud.federation.secagg).
    ("fedavg secagg+", {"strategy": "fedavg", "secure_aggregation": True}),
]
#: ``--secagg-only``: just what the SecAgg+ comparison needs.
SECAGG_ROWS = ("fedavg fp32", "fedavg int8", "fedavg secagg+")

SECAGG_NOTES = (
    "SecAgg+ (Flower 1.41 SecAggPlusWorkflow + secaggplus_mod, clipping_range=1.0 on deltas, "
    "quantization_range=2**20, modulus_range=2**32). bytes_up counts every SecAgg+ stage "
    "(public keys, encrypted shares, masked vectors, unmask shares). Masked vectors are uniform "
    "mod 2**32 and Flower ships them as int64, so int8/top-k compression cannot stack with "
    "masking: upload is ~2x float32 instead of ~0.25x. Round time is the median of rounds 2..R "
    "(round 1 includes Ray start-up)."
)


def secagg_comparison(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """SecAgg+ vs plain: median round seconds, overhead ratio, bytes up per round."""
    by_name = {r["name"]: r for r in rows}
    if "fedavg secagg+" not in by_name or "fedavg fp32" not in by_name:
        return None
    secure, fp32 = by_name["fedavg secagg+"], by_name["fedavg fp32"]
    int8 = by_name.get("fedavg int8")
    overhead = secure["median_round_seconds"] / max(fp32["median_round_seconds"], 1e-9)
    return {
        "secagg_median_round_seconds": secure["median_round_seconds"],
        "plain_fp32_median_round_seconds": fp32["median_round_seconds"],
        "plain_int8_median_round_seconds": int8["median_round_seconds"] if int8 else None,
        "round_time_overhead_vs_fp32": round(overhead, 3),
        "goal_overhead_le_1.5x": overhead <= 1.5,
        "bytes_up_per_round": {
            "secagg+": secure["bytes_up_per_round"],
            "fp32": fp32["bytes_up_per_round"],
            "int8": int8["bytes_up_per_round"] if int8 else None,
        },
        "secagg_upload_ratio_vs_fp32": secure["upload_ratio_vs_fp32"],
        "secagg_final_accuracy": secure["final_accuracy"],
        "notes": SECAGG_NOTES,
    }


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
            lr=args.lr,
            lr_decay=args.lr_decay,
            batch_size=args.batch_size,
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
    # Client training defaults are fedge's own (cloud.federation.defaults).
    parser.add_argument("--local-epochs", type=int, default=defaults.LOCAL_EPOCHS)
    parser.add_argument("--lr", type=float, default=defaults.LR, help="Client SGD lr, round 1.")
    parser.add_argument(
        "--lr-decay", type=float, default=defaults.LR_DECAY, help="Per-round client lr decay."
    )
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/federated.json")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--secagg-only",
        action="store_true",
        help="Only fedavg fp32 / int8 / SecAgg+ (the SecAgg+ overhead measurement).",
    )
    parser.add_argument(
        "--rows",
        help="Comma-separated federated rows to run (default all), e.g. 'fedavg fp32'.",
    )
    args = parser.parse_args()
    wanted = {n.strip() for n in args.rows.split(",")} if args.rows else None
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)

    rows = [centralized(args.data, args.rounds * args.local_epochs, args.seed)]
    for name, overrides in ROWS:
        if args.secagg_only and name not in SECAGG_ROWS:
            continue
        if wanted is not None and name not in wanted:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.append(federated(name, overrides, args))

    central = rows[0]["final_accuracy"]
    fp32 = next(r for r in rows if r["name"] == "fedavg fp32")
    print(
        f"\n{args.data}, {args.clients} clients, Dirichlet α={args.alpha}, {args.rounds} rounds "
        f"x {args.local_epochs} local epochs (client SGD lr {args.lr} x {args.lr_decay}^(r-1), "
        f"batch {args.batch_size})"
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
            "int8_upload_ratio_le_0.27": next(
                (r["upload_ratio_vs_fp32"] <= 0.27 for r in rows if r["name"] == "fedavg int8"),
                None,
            ),
        },
        "secagg": secagg_comparison(rows),
    }
    if report["secagg"]:
        sa = report["secagg"]
        print(
            f"\nSecAgg+: median round {sa['secagg_median_round_seconds']:.2f}s vs plain fp32 "
            f"{sa['plain_fp32_median_round_seconds']:.2f}s → {sa['round_time_overhead_vs_fp32']}x; "
            f"bytes up/round {sa['bytes_up_per_round']}"
        )
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

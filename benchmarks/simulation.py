"""Benchmark: client updates per second of ``fedge sim`` beside a bare Flower FedAvg simulation.

Both sides train the same model (the default architecture for the data set, built by
``edge.learning.models``) with the same local SGD (``edge.learning.local.train_local``) on
the same partitions (Dirichlet α over the train split, one ``.npz`` per client), with the
same number of clients, clients per round and rounds, and evaluate the global model on the
held-out split after every round:

* **fedge sim** — :func:`simulations.runner.run_scenario`: the coordinator's ServerApp
  (update guard, registry lineage per round) on our in-process grid with the fleet's
  behaviour, every device running ``edge.learning.client_app:app`` (int8 deltas). The
  fleet is made homogeneous here (always online, no dropout, no deadline) so both sides do
  the same number of updates.
* **bare Flower** — ``flwr.simulation.run_simulation`` (Ray backend, one actor per CPU), the
  Message-API ``FedAvg`` and a minimal ClientApp returning full float32 weights — what a
  Flower quickstart does.

Throughput = accepted client updates / wall seconds of the ServerApp's ``main`` (Ray
start-up before ``main`` is reported separately as part of the total). Target: ours ≥ 0.8×.

    .venv/bin/python benchmarks/simulation.py [--clients 1000] [--per-round 100]
        [--rounds 10] [--data mnist-5k] [--alpha 0.5] [--out benchmarks/results/simulation.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "simulation.json"
TARGET_RATIO = 0.8


def _scenario(args: argparse.Namespace) -> Any:
    """A homogeneous scenario: every device trains, is always online, never drops out."""
    from simulations.scenario import Scenario

    return Scenario.model_validate(
        {
            "name": "bench",
            "seed": args.seed,
            "data": {"dataset": args.data, "partitioner": "dirichlet", "alpha": args.alpha},
            "fleet": {
                "devices": args.clients,
                "profiles": {
                    "smart-home-hub": {
                        "share": 1.0,
                        "availability": 1.0,
                        "dropout": 0.0,
                        "speed_spread": 0.0,
                        "train_samples_per_s": 1e9,
                    }
                },
                "links": {"wifi": {"down_mbps": 1e6, "up_mbps": 1e6, "latency_ms": 0.0}},
            },
            "learning": {
                "rounds": args.rounds,
                "clients_per_round": args.per_round,
                "strategies": ["fedavg"],
                "deadline_s": 1e9,
                "local_epochs": args.local_epochs,
                "min_clients": 1,
            },
            "rollout": {"policy": {"target": {"groups": ["home"]}}},
        }
    )


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    """``fedge sim``'s learning plane; returns updates, seconds, final accuracy."""
    from cloud.federation.server import FederationRunner
    from simulations.runner import run_scenario

    spans: list[float] = []
    original = FederationRunner.run

    def timed(self: FederationRunner, grid: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, grid)
        finally:
            spans.append(time.perf_counter() - t0)

    FederationRunner.run = timed  # type: ignore[method-assign]
    started = time.perf_counter()
    try:
        result = run_scenario(_scenario(args)).to_dict()
    finally:
        FederationRunner.run = original  # type: ignore[method-assign]
    run = result["strategies"]["fedavg"]
    return {
        "updates": run["client_updates"],
        "main_s": round(spans[0], 2),
        "total_s": round(time.perf_counter() - started, 2),
        "final_accuracy": run["final_accuracy"],
        "peak_rss_mb": result["peak_rss_mb"],
    }


def run_bare_flower(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """A plain Flower FedAvg simulation with the same model, data and clients."""
    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from cloud.data import load_dataset, stratified_split
    from cloud.training import default_arch
    from edge.learning.data import load_local_data
    from edge.learning.local import LocalTrainConfig, evaluate_local, train_local
    from edge.learning.models import LocalModelSpec, build_local_model
    from simulations.partitions import partition_indices

    data = load_dataset(args.data)
    split = stratified_split(data, seed=args.seed)
    parts = partition_indices(
        split.train_y, args.clients, scheme="dirichlet", seed=args.seed, alpha=args.alpha
    )
    for i, idx in enumerate(parts):
        np.savez(workdir / f"partition-{i}.npz", x=split.train_x[idx], y=split.train_y[idx])
    spec = LocalModelSpec(default_arch(data.input_shape), data.input_shape, data.num_classes)
    import torch

    torch.manual_seed(args.seed)
    initial = ArrayRecord(build_local_model(spec).state_dict())
    part_dir, epochs = str(workdir), args.local_epochs
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        model = build_local_model(spec)
        model.load_state_dict(cast(ArrayRecord, msg.content["arrays"]).to_torch_state_dict())
        local = load_local_data(f"{part_dir}/partition-{context.node_config['partition-id']}.npz")
        config = cast(ConfigRecord, msg.content["config"])
        train_local(
            model,
            local,
            LocalTrainConfig(epochs=epochs, lr=float(cast(float, config["lr"])), batch_size=16),
        )
        reply = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"num-examples": len(local)}),
            }
        )
        return Message(reply, reply_to=msg)

    from edge.learning.data import LocalData

    test = LocalData(split.test_x, split.test_y)
    updates: list[int] = []
    spans: list[float] = []
    accuracy: list[float] = []

    class CountingFedAvg(FedAvg):
        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            replies = list(replies)
            updates.append(sum(not r.has_error() for r in replies))
            return super().aggregate_train(server_round, replies)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = build_local_model(spec)
        model.load_state_dict(arrays.to_torch_state_dict())
        acc, loss = evaluate_local(model, test)
        accuracy.append(acc)
        return MetricRecord({"accuracy": acc, "loss": loss})

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        t0 = time.perf_counter()
        strategy = CountingFedAvg(
            fraction_train=args.per_round / args.clients,
            fraction_evaluate=0.0,
            min_train_nodes=1,
            min_evaluate_nodes=0,
            min_available_nodes=args.clients,
        )
        strategy.start(
            grid,
            initial,
            num_rounds=args.rounds,
            train_config=ConfigRecord({"lr": 0.05}),
            evaluate_fn=evaluate,
        )
        spans.append(time.perf_counter() - t0)

    started = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=args.clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 2, "include_dashboard": False},
        },
    )
    return {
        "updates": sum(updates),
        "main_s": round(spans[0], 2) if spans else None,
        "total_s": round(time.perf_counter() - started, 2),
        "final_accuracy": accuracy[-1] if accuracy else None,
    }


def main() -> None:
    """Parse arguments, run both sides once, write JSON and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--per-round", type=int, default=100)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--data", default="mnist-5k")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    load_before = os.getloadavg()
    ours = run_ours(args)
    with tempfile.TemporaryDirectory(prefix="fedge-bench-sim-") as tmp:
        bare = run_bare_flower(args, Path(tmp))
    for side in (ours, bare):
        side["updates_per_s"] = (
            round(side["updates"] / side["main_s"], 2) if side["main_s"] else None
        )
        side["updates_per_s_incl_startup"] = round(side["updates"] / side["total_s"], 2)
    ratio = (
        round(ours["updates_per_s"] / bare["updates_per_s"], 2)
        if ours["updates_per_s"] and bare["updates_per_s"]
        else None
    )
    result = {
        "benchmark": "simulation",
        "config": vars(args) | {"out": str(args.out)},
        "host": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_1_5_15_before": [round(x, 1) for x in load_before],
            "loadavg_1_5_15_after": [round(x, 1) for x in os.getloadavg()],
        },
        "fedge_sim": ours,
        "bare_flower": bare,
        "ratio_updates_per_s": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio is not None and ratio >= TARGET_RATIO,
        "notes": [
            "updates_per_s = accepted client updates / wall seconds of the ServerApp main; "
            "_incl_startup divides by the whole call (imports excluded, Ray start-up and "
            "partition writing included).",
            "fedge sim does more per update than bare Flower: int8 delta encode/decode, the "
            "update guard's checks, a registry version per round.",
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{'side':<12} {'updates':>8} {'main s':>8} {'upd/s':>8} {'total s':>8} "
        f"{'upd/s all':>10} {'final acc':>9}"
    )
    for name, side in (("fedge sim", ours), ("bare flower", bare)):
        print(
            f"{name:<12} {side['updates']:>8} {side['main_s']:>8} {side['updates_per_s']:>8} "
            f"{side['total_s']:>8} {side['updates_per_s_incl_startup']:>10} "
            f"{side['final_accuracy']:>9.4f}"
        )
    print(f"ratio (fedge/bare) {ratio}  target >= {TARGET_RATIO}; load {result['host']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Run a scenario end to end: the learning plane per strategy, then the deployment plane.

Learning: the coordinator's own :class:`~cloud.federation.server.FederationRunner` ServerApp
(guarded strategy, server-side evaluation, registry lineage) runs on a
:class:`~simulations.fleet_grid.FleetGrid` around an
:class:`~simulations.engine.InProcessGrid` whose nodes run ``edge.learning.client_app:app``
— the devices' ClientApp — in this process, or on a Ray cluster with ``ray_address``.
Secure aggregation is off in simulations (SecAgg+ adds rounds of key agreement that say
nothing about learning curves or rollouts; ``tests/federation`` covers it), quantization is
off (the delivery plane measures the int8 size itself).

Deployment: every ``deploy_every`` rounds of the first strategy a release is rolled out by
:func:`~simulations.delivery.simulate_rollout`, starting when the round finished on the
simulated clock (or when the previous rollout ended).
"""

from __future__ import annotations

import logging
import random
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Context, RecordDict
from flwr.serverapp import Grid

from cloud.federation.plan import FederationPlan, RoundReport
from cloud.federation.server import FederationRunner
from cloud.federation.strategies import Participation
from cloud.registry import Registry
from cloud.training.serialize import model_from_bytes
from simulations.delivery import (
    InstallCost,
    Release,
    RolloutReport,
    int8_payload_bytes,
    load_install_cost,
    simulate_rollout,
)
from simulations.engine import Executor, InProcessGrid, LocalExecutor, RayExecutor
from simulations.fleet_grid import FleetGrid, RoundParticipation
from simulations.partitions import partition_indices
from simulations.population import Fleet, build_fleet
from simulations.scenario import Scenario

log = logging.getLogger(__name__)

__all__ = ["CLIENT_APP", "SimulationResult", "run_scenario"]

#: The ClientApp every simulated device runs: the edge agent's own.
CLIENT_APP = "edge.learning.client_app:app"

#: Progress callback: called with (strategy, server round) after every round.
Progress = Callable[[str, int], None]


@dataclass
class SimulationResult:
    """Everything a run measured, JSON-ready through :meth:`to_dict`."""

    scenario: dict[str, Any]
    fleet: dict[str, Any]
    strategies: dict[str, dict[str, Any]]
    rollouts: list[RolloutReport]
    install_cost: dict[str, Any]
    wall_s: float
    peak_rss_mb: float
    engine: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "scenario": self.scenario,
            "engine": self.engine,
            "fleet": self.fleet,
            "strategies": self.strategies,
            "rollouts": [r.to_dict() for r in self.rollouts],
            "install_cost": self.install_cost,
            "wall_s": self.wall_s,
            "peak_rss_mb": self.peak_rss_mb,
        }


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _plan(scenario: Scenario, strategy: str, fleet: Fleet) -> FederationPlan:
    trainers = fleet.trainers
    learning = scenario.learning
    online = max(1.0, sum(d.availability for d in trainers))
    # Sample from who is online so the expected cohort is clients_per_round.
    fraction = min(1.0, learning.clients_per_round / online)
    least = min(learning.min_clients, len(trainers))
    return FederationPlan(
        data=scenario.data.dataset,
        num_clients=len(trainers),
        rounds=learning.rounds,
        strategy=strategy,
        participation=Participation(fraction=fraction, min_clients=least, min_available=least),
        round_timeout=learning.deadline_s,
        local_epochs=learning.local_epochs,
        lr=learning.lr,
        batch_size=learning.batch_size,
        update_mode=learning.update_mode,
        seed=scenario.seed,
        quantize=False,
        secure_aggregation=False,
        run_id=f"{scenario.name}-{strategy}-s{scenario.seed}",
    )


def _write_partitions(runner: FederationRunner, scenario: Scenario, directory: Path) -> list[int]:
    """Write ``partition-<i>.npz`` per training device (as the ClientApp expects)."""
    split = runner.split
    parts = partition_indices(
        split.train_y,
        runner.plan.num_clients,
        scheme=scenario.data.partitioner,
        seed=scenario.seed,
        alpha=scenario.data.alpha,
        shards_per_partition=scenario.data.shards_per_client,
    )
    for i, idx in enumerate(parts):
        np.savez(directory / f"partition-{i}.npz", x=split.train_x[idx], y=split.train_y[idx])
    return [len(p) for p in parts]


def _executor(ray_address: str | None, ray_actors: int) -> Executor:
    if ray_address:
        return RayExecutor(CLIENT_APP, address=ray_address, num_actors=ray_actors)
    return LocalExecutor(CLIENT_APP)


def _learn(
    scenario: Scenario,
    strategy: str,
    fleet: Fleet,
    registry: Registry,
    workdir: Path,
    executor: Executor | None,
    progress: Progress,
    outer: Grid | None = None,
) -> tuple[FederationRunner, FleetGrid, list[int]]:
    partitions = workdir / "partitions"
    runner = FederationRunner(
        _plan(scenario, strategy, fleet),
        registry,
        extra_train_config={"partition-dir": str(partitions)},
    )
    if not partitions.exists():
        partitions.mkdir()
        sizes = _write_partitions(runner, scenario, partitions)
        (workdir / "sizes.npy").write_bytes(np.asarray(sizes, dtype=np.int64).tobytes())
    sizes = np.frombuffer((workdir / "sizes.npy").read_bytes(), dtype=np.int64).tolist()
    trainers = fleet.trainers
    nodes: dict[int, dict[str, bool | float | int | str]] = {
        d.node_id: {"partition-id": int(d.partition_id or 0), "num-partitions": len(trainers)}
        for d in trainers
    }

    def on_round(p: RoundParticipation) -> None:
        progress(strategy, p.round)

    node_map = None
    if outer is not None:
        # Flower's own grid (``flwr run``): its SuperNodes are the trainers, by sorted id.
        node_map = dict(zip(sorted(outer.get_node_ids()), trainers, strict=False))
    inner = outer if outer is not None else InProcessGrid(nodes, cast(Executor, executor))
    grid = FleetGrid(
        inner,
        fleet,
        deadline_s=scenario.learning.deadline_s,
        partition_sizes=sizes,
        seed=scenario.seed,
        node_map=node_map,
        on_round=on_round,
        round_interval_s=scenario.learning.round_interval_s,
        min_online=runner.plan.participation.min_available,
    )
    # Flower's strategies sample clients with the ``random`` module: seed it per run.
    random.seed(scenario.seed)
    if outer is not None:
        runner.run(grid)  # already inside a ServerApp (flwr run): drive the rounds directly
    else:
        context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
        # The coordinator's ServerApp, unchanged: its main drives the guarded strategy.
        runner.server_app()(grid, context)
        if runner.error is not None:
            raise runner.error
    return runner, grid, sizes


def _strategy_summary(runner: FederationRunner, grid: FleetGrid) -> dict[str, Any]:
    rounds: list[RoundReport] = runner.result.rounds
    participation = {p.round: p.to_dict() for p in grid.rounds}
    return {
        "initial_accuracy": runner.result.initial_accuracy,
        "final_accuracy": rounds[-1].accuracy if rounds else None,
        "rounds": [r.to_dict() | {"participation": participation.get(r.round)} for r in rounds],
        "client_updates": sum(r.participants for r in rounds),
        "simulated_s": round(grid.clock_s, 3),
    }


def _release(
    registry: Registry, runner: FederationRunner, report: RoundReport, index: int, ready: float
) -> Release:
    assert report.version is not None
    version = registry.get_version(report.version)
    model = model_from_bytes(runner.spec, registry.read_artifact(version.artifact("torch", "fp32")))
    weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return Release(
        index=index,
        version=report.version,
        strategy=runner.plan.strategy,
        round=report.round,
        accuracy=report.accuracy,
        model_bytes=int8_payload_bytes(weights),
        ready_s=ready,
    )


def run_scenario(
    scenario: Scenario,
    *,
    workdir: Path | None = None,
    progress: Progress | None = None,
    ray_address: str | None = None,
    ray_actors: int = 2,
    grid: Grid | None = None,
) -> SimulationResult:
    """Run every strategy of ``scenario``, then roll its releases out; return the metrics.

    Args:
        scenario: What to simulate.
        workdir: Where partitions and the run's registry go (default: a temporary dir).
        progress: Called after every round.
        ray_address: Run the clients on this Ray cluster instead of in-process.
        ray_actors: Ray actor pool size (concurrent clients).
        grid: Run the rounds on this Flower grid (``flwr run``'s) instead of our engine;
            its nodes are the scenario's training devices (extra nodes stay idle).
    """
    started = time.perf_counter()
    fleet = build_fleet(scenario)
    tick = progress or (lambda _s, _r: None)
    install = load_install_cost()
    strategies: dict[str, dict[str, Any]] = {}
    rollouts: list[RolloutReport] = []
    executor = None if grid is not None else _executor(ray_address, ray_actors)
    engine = "flower-grid" if grid is not None else "in-process"
    if isinstance(executor, RayExecutor):
        engine = f"ray ({ray_address}): {ray_actors} actors on {len(executor.nodes())} node(s)"
    with tempfile.TemporaryDirectory(prefix="fedge-sim-", dir=workdir) as tmp:
        root = Path(tmp)
        registry = Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
        try:
            for i, strategy in enumerate(scenario.learning.strategies):
                runner, fleet_grid, sizes = _learn(
                    scenario, strategy, fleet, registry, root, executor, tick, grid
                )
                strategies[strategy] = _strategy_summary(runner, fleet_grid)
                if i == 0:
                    rollouts = _deliver(scenario, fleet, registry, runner, fleet_grid, install)
        finally:
            registry.close()
            if executor is not None:
                executor.close()
    return SimulationResult(
        scenario={"name": scenario.name, "seed": scenario.seed, "config": scenario.model_dump()},
        fleet={
            "devices": len(fleet.devices),
            "trainers": len(fleet.trainers),
            "by_profile": fleet.counts(),
            "partition_sizes": {"min": min(sizes), "max": max(sizes), "total": sum(sizes)},
        },
        strategies=strategies,
        rollouts=rollouts,
        install_cost={"ms": install.ms, "source": install.source},
        wall_s=round(time.perf_counter() - started, 2),
        peak_rss_mb=peak_rss_mb(),
        engine=engine,
    )


def _deliver(
    scenario: Scenario,
    fleet: Fleet,
    registry: Registry,
    runner: FederationRunner,
    grid: FleetGrid,
    install: InstallCost,
) -> list[RolloutReport]:
    """Roll out every ``deploy_every``-th round's model (and the last), one after another."""
    every = scenario.rollout.deploy_every or scenario.learning.rounds
    ends = {p.round: p.started_s + p.duration_s for p in grid.rounds}
    rng = np.random.default_rng(scenario.seed + 1)
    reports: list[RolloutReport] = []
    current: float | None = runner.result.initial_accuracy
    free_at, origin = 0.0, None
    for report in runner.result.rounds:
        if report.round % every and report.round != scenario.learning.rounds:
            continue
        release = _release(registry, runner, report, len(reports) + 1, ends.get(report.round, 0.0))
        start = max(release.ready_s, free_at)
        origin = start if origin is None else origin
        rollout = simulate_rollout(
            release,
            fleet,
            scenario.rollout,
            scenario.faults,
            start_s=start,
            current_accuracy=current,
            install=install,
            rng=rng,
            origin_s=origin,
        )
        reports.append(rollout)
        free_at = rollout.finished_s
        if rollout.state == "completed":
            current = release.accuracy
    return reports

"""The simulation as a Flower App: ``flwr run`` starts it like any other Flower project.

``pyproject.toml`` names the components (``[tool.flwr.app.components]``): this module's
``app`` is the ServerApp and ``edge.learning.client_app:app`` — the ClientApp the devices
run — is the ClientApp. Flower's runtime supplies the SuperNodes (``num-supernodes`` of the
connection), each with its ``partition-id``; this ServerApp loads the scenario named in the
run config, sizes the simulated fleet so its training devices are those SuperNodes, writes
their partitions, drives the coordinator's FederationRunner over Flower's grid (wrapped in
the fleet's availability, dropout and deadline behaviour), simulates the rollouts and writes
the same report as ``fedge sim run``.

Run config keys (``[tool.flwr.app.config]``, override with ``--run-config``): ``scenario``,
``rounds``, ``per-round``, ``out`` and ``nodes`` (SuperNodes to wait for; default: until
no more register); where the run config lacks one (Flower's ``run_simulation`` passes
none) ``FEDGE_SIM_SCENARIO``, ``FEDGE_SIM_ROUNDS``, ``FEDGE_SIM_PER_ROUND``,
``FEDGE_SIM_OUT`` and ``FEDGE_SIM_NODES`` are read.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from simulations.report import write_report
from simulations.runner import run_scenario
from simulations.scenario import Scenario, load_profiles, load_scenario

log = logging.getLogger(__name__)

__all__ = ["app", "fleet_for_nodes", "wait_for_nodes"]

app = ServerApp()


def fleet_for_nodes(scenario: Scenario, nodes: int) -> Scenario:
    """The scenario with a fleet big enough that ``nodes`` of its devices train."""
    profiles = load_profiles(scenario)
    shares = scenario.fleet.profiles
    trainer_share = sum(b.share for n, b in shares.items() if profiles[n].trains) / sum(
        b.share for b in shares.values()
    )
    if trainer_share == 0:
        return scenario
    return scenario.with_overrides(devices=max(2, math.ceil(nodes / trainer_share)))


def wait_for_nodes(
    grid: Grid, *, expected: int | None = None, settle_s: float = 3.0, timeout_s: float = 120.0
) -> list[int]:
    """The grid's node ids once they stop arriving.

    SuperNodes register while the ServerApp is already running, so the first look at the
    grid may see only some of them: wait for ``expected`` nodes, or (unknown count) until
    the count has not changed for ``settle_s``.
    """
    deadline = time.monotonic() + timeout_s
    nodes = sorted(grid.get_node_ids())
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        if expected is not None and len(nodes) >= expected:
            return nodes
        if expected is None and nodes and time.monotonic() - stable_since >= settle_s:
            return nodes
        time.sleep(0.5)
        now = sorted(grid.get_node_ids())
        if now != nodes:
            nodes, stable_since = now, time.monotonic()
    return nodes


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the scenario of the run config on Flower's grid and write its report."""

    def setting(key: str, default: str | None = None) -> str | None:
        if key in context.run_config:
            return str(context.run_config[key])
        return os.environ.get(f"FEDGE_SIM_{key.upper().replace('-', '_')}", default)

    scenario = load_scenario(setting("scenario", "smart-home") or "smart-home")
    expected = setting("nodes")
    nodes = len(wait_for_nodes(grid, expected=int(expected) if expected else None))
    rounds, per_round = setting("rounds"), setting("per-round")
    scenario = fleet_for_nodes(scenario, nodes).with_overrides(
        rounds=int(rounds) if rounds else None,
        clients_per_round=int(per_round) if per_round else None,
    )
    result = run_scenario(scenario, grid=grid).to_dict()
    out = Path(setting("out", ".fedge/simulations/flwr") or ".").expanduser()
    path = write_report(result, out)
    log.warning("simulation %s on %d SuperNodes: report %s", scenario.name, nodes, path)

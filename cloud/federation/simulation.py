"""Run a federation on Flower's Simulation Engine (Ray): partitions on disk, N virtual devices.

The ClientApp is named by reference (``module:attribute``), exactly as Flower apps name it
in ``pyproject.toml``: the coordinator never imports device code (``cloud`` may not import
``edge``), it tells Flower which app the virtual SuperNodes run. The default is the edge
agent's own ``edge.learning.client_app:app`` — the same ClientApp a real device runs.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cloud.federation.partition import partition
from cloud.federation.plan import FederationPlan, FederationResult
from cloud.federation.sealing import enroll_simulated_devices
from cloud.federation.secagg import DEFAULT_SECAGG_CLIENT_APP
from cloud.federation.secure_rounds import FEDGE_SECAGG_CLIENT_APP
from cloud.federation.server import FederationRunner, RoundCallback
from cloud.federation.strategies import ROBUST
from cloud.registry import Registry
from shared.errors import ConfigError, FedgeError

log = logging.getLogger(__name__)

DEFAULT_CLIENT_APP = "edge.learning.client_app:app"


class FederationError(FedgeError):
    """The federated run itself failed (not a single client: those are tolerated)."""

    code = "federation_error"


def load_client_app(reference: str) -> object:
    """Resolve ``module:attribute`` to the ClientApp object.

    Raises:
        ConfigError: the reference does not resolve.
    """
    module_name, _, attr = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load ClientApp {reference!r}: {exc}") from exc


def secure_client_app(plan: FederationPlan) -> str | None:
    """The ClientApp reference a secure plan's devices run (``None``: not secure)."""
    if plan.secagg_kind is None:
        return None
    return FEDGE_SECAGG_CLIENT_APP if plan.secagg_kind == "fedge" else DEFAULT_SECAGG_CLIENT_APP


def write_partitions(runner: FederationRunner, directory: Path) -> list[int]:
    """Write ``partition-<i>.npz`` per client from the train split; return their sizes."""
    plan = runner.plan
    shares = partition(runner.split.train_y, plan.num_clients, alpha=plan.alpha, seed=plan.seed)
    for i, idx in enumerate(shares):
        np.savez(
            directory / f"partition-{i}.npz",
            x=runner.split.train_x[idx],
            y=runner.split.train_y[idx],
        )
    return [len(s) for s in shares]


def run_simulated_federation(
    plan: FederationPlan,
    registry: Registry,
    *,
    on_round: RoundCallback | None = None,
    client_app: str | None = None,
    num_cpus: int = 2,
    workdir: Path | None = None,
) -> FederationResult:
    """Partition the data, start ``plan.num_clients`` virtual devices and run all rounds.

    Args:
        plan: The run.
        registry: Where round versions (and the quantized artifacts) go.
        on_round: Streams each round's report.
        client_app: ``module:attribute`` of the ClientApp the devices run (default: the
            SecAgg+ ClientApp when the plan uses SecAgg+, else the plain one).
        num_cpus: CPUs Ray may use; each client takes one, so this bounds parallelism.
        workdir: Where partitions are written (default: a temporary directory).

    Raises:
        FederationError: the ServerApp failed or no round completed.
    """
    from flwr.simulation import run_simulation

    if client_app is None:
        client_app = secure_client_app(plan) or DEFAULT_CLIENT_APP
    app = load_client_app(client_app)
    with tempfile.TemporaryDirectory(prefix="fedge-partitions-", dir=workdir) as tmp:
        extra: dict[str, Any] = {"partition-dir": tmp}
        keys = None
        if plan.strategy in ROBUST:
            # Robust strategies read individual updates: virtual devices get real keys.
            keys, bundles = enroll_simulated_devices(Path(tmp) / "keys", plan.num_clients)
            extra["bundle-root"] = str(bundles)
        runner = FederationRunner(
            plan, registry, on_round=on_round, extra_train_config=extra, update_keys=keys
        )
        sizes = write_partitions(runner, Path(tmp))
        log.info("run %s: %d clients with %s samples", plan.run_id, len(sizes), sizes)
        run_simulation(
            server_app=runner.server_app(),
            client_app=app,  # type: ignore[arg-type]
            num_supernodes=plan.num_clients,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": num_cpus, "include_dashboard": False},
            },
        )
    if runner.error is not None:
        if isinstance(runner.error, FedgeError):
            raise runner.error
        raise FederationError(f"federated run failed: {runner.error!r}") from runner.error
    if not runner.result.rounds:
        raise FederationError("the federated run finished no round")
    return runner.result

"""Drive a whole run under fedge SecAgg on Flower's Message API (simulation or SuperLink).

Per round: sample devices (waiting for ``min_available`` like Flower's strategies), run one
:class:`~cloud.federation.secagg_fedge.SecureRound`, apply the securely averaged delta to
the global model (FedAvg; FedProx's proximal term lives on the devices), then evaluate and
record through the same :class:`~cloud.federation.server.FederationRunner` the plain path
uses. A halted round leaves the global model as it was and records no version.

Devices run ``edge.learning.client_app:secure_app``: the ordinary ClientApp behind
``edge.learning.secagg_mod.fedge_secagg_mod``.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from cloud.federation.guard import RoundTraffic
from cloud.federation.secagg_fedge import SecureRound
from cloud.federation.strategies import StrategyName
from shared.compression import float32_nbytes
from shared.errors import ConfigError

if TYPE_CHECKING:
    from cloud.federation.secagg import FederationRunner

log = logging.getLogger(__name__)

__all__ = ["FEDGE_SECAGG_CLIENT_APP", "fedge_secagg_server_app", "run_fedge_secure_federation"]

FEDGE_SECAGG_CLIENT_APP = "edge.learning.client_app:secure_app"
_SUPPORTED = frozenset({StrategyName.FEDAVG, StrategyName.FEDPROX})


def run_fedge_secure_federation(runner: FederationRunner, grid: Grid, context: Context) -> None:
    """All of ``runner``'s rounds under fedge SecAgg on ``grid``, then finish the run.

    Raises:
        ConfigError: a strategy other than FedAvg/FedProx (FedAdam: use ``--secagg flower``;
            robust strategies need individual updates).
    """
    plan = runner.plan
    if StrategyName(plan.strategy) not in _SUPPORTED:
        raise ConfigError(f"{plan.strategy} does not run under fedge secagg; use fedavg/fedprox")
    arrays = runner.initial
    runner.evaluate(0, arrays)
    raw = float32_nbytes({k: v.numpy() for k, v in arrays.items()})
    rng = random.Random(plan.seed)
    dp_std = (plan.dp_noise_multiplier or 0.0) * (plan.max_delta_norm or 0.0)
    for server_round in range(1, plan.rounds + 1):
        part = plan.participation
        connected = sample_nodes(grid, part.min_available, part.min_clients)[1]
        size = max(part.min_clients, round(len(connected) * part.fraction))
        nodes = sorted(rng.sample(sorted(connected), min(size, len(connected))))
        secure = SecureRound.sized(
            grid,
            run_id=plan.run_id,
            server_round=server_round,
            sampled=len(nodes),
            bits=plan.secagg_bits,
            clip=plan.secagg_clip,
            max_examples=runner.max_examples,
            max_delta_norm=plan.max_delta_norm,
            timeout=plan.secagg_timeout,
            dp_noise_std=dp_std,
        )
        result = secure.run(nodes, arrays, runner.train_config(server_round))
        runner.traffic[server_round] = RoundTraffic(
            sampled=len(nodes),
            accepted=len(result.survivors),
            failed=len(result.dropped),
            bytes_down=result.bytes_down,
            bytes_up=result.bytes_up,
            raw_bytes_up=raw * len(result.survivors),
            capped=result.capped,
            clipped=result.clipped,
        )
        if result.mean_delta is None:
            log.warning("round %d halted (%s): global model unchanged", server_round, result.reason)
            continue
        arrays = ArrayRecord(
            {
                name: Array((value.numpy() + result.mean_delta[name]).astype(value.numpy().dtype))
                for name, value in arrays.items()
            }
        )
        runner.evaluate(server_round, arrays)
    runner.finish()


def fedge_secagg_server_app(runner: FederationRunner) -> ServerApp:
    """A ``ServerApp`` running ``runner`` under fedge SecAgg; errors kept in ``runner.error``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_fedge_secure_federation(runner, grid, context)
        except BaseException as exc:
            runner.error = exc
            raise

    return app

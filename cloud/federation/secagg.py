"""Flower's SecAgg+ rounds (``--secagg flower``): the coordinator sees only the masked sum.

This is Flower 1.41's implementation, kept selectable for comparison; the default is ours,
fedge SecAgg (:mod:`cloud.federation.secagg_fedge`), which fixes the two caveats below
(full-strength masks; packed uploads at ~0.4x float32 instead of ~2x).

Flower 1.41's ``SecAggPlusWorkflow`` runs only inside the legacy ``DefaultWorkflow`` with a
legacy (``FitIns``/``FitRes``) strategy, so this path builds that stack around the same
:class:`~cloud.federation.server.FederationRunner` the plain path uses: the runner's
``evaluate`` does the server-side evaluation, registry lineage and round reports, and its
``finish`` quantizes the best round. Devices run ``edge.learning.secagg_client:app``.

What each device uploads is its delta ``local - global`` (see ``edge.learning.secagg_client``
for why). After unmasking, Flower hands the strategy one vector — the num_examples-weighted
mean delta — as every client's result; :class:`DeltaToWeights` adds it to the global model
it sent, so FedAvg/FedProx/FedAdam aggregate ordinary weights.

Quantization and modulus (:class:`SecAggConfig`):

* ``clipping_range = 1.0``: each device's weighted delta ``(n / max_weight) * delta`` is
  clipped to ``[-1, 1]`` per value. Deltas of a few local epochs are ~1e-3..1e-1, so this
  bounds a device's influence without touching honest updates.
* ``quantization_range = 2**20``: step ``2 * 1.0 / 2**20 ≈ 1.9e-6`` per weighted value
  (stochastic rounding: unbiased). The error on the mean is at most
  ``k * step / sum(n_i / max_weight)`` per value for ``k`` devices.
* ``modulus_range = 2**32`` (Flower's ceiling): the sum of ``k`` values in
  ``[0, 2**20]`` must not wrap, so up to ``2**12 = 4096`` devices per round. Full weights
  would need ``clipping_range ≈ 8`` for the same safety: 8x coarser steps for the same bits.
* ``max_weight = 5000``: ``num_examples`` is scaled by it; a device with more examples
  still aggregates correctly but Flower warns about overflow headroom.

Why int8/top-k compression does not stack with masking: a masked value is
``q + masks mod M`` with masks uniform over ``Z_M``, so it is itself uniform over ``Z_M`` —
incompressible, at least ``log2(M)`` bits whatever ``q`` was. Top-k cannot be masked at all
(each device's support differs, and the masks cover every coordinate). Flower 1.41 also
ships masked vectors as int64 whatever ``M`` is: measured (``benchmarks/federated.py``,
``RoundReport.bytes_up``) that is ~2x the float32 delta and ~8x our int8 delta. The floor
would be ``M = 2**ceil(log2(k * Q))`` packed (e.g. int8 as the quantizer, ``Q = 2**8``,
``M = 2**16`` for <= 256 devices → 0.5x float32), which needs a mod that packs its output.

Caveat (Flower 1.41): masks are drawn from ``numpy.random.RandomState`` seeded with 32
bits folded from the shared key, weaker than the X25519 keys they come from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import LegacyContext
from flwr.server.strategy import FedAdam, FedAvg, FedProx
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from cloud.federation.guard import RoundTraffic
from cloud.federation.strategies import ROBUST, Participation, StrategyName
from shared.compression import float32_nbytes
from shared.errors import ConfigError, ProtocolError
from shared.numbers import parse_ascii_uint

if TYPE_CHECKING:
    from cloud.federation.plan import FederationPlan

from flwr.app import ConfigRecord, MetricRecord


def _round_number(group_id: str) -> int | None:
    """The round a message's ``group_id`` names (N1: ASCII decimal), or None."""
    try:
        return parse_ascii_uint(group_id, what="round", max_value=2**31)
    except ProtocolError:
        return None


class FederationRunner(Protocol):
    """What the secure workflow needs of the run it drives.

    :class:`cloud.federation.server.FederationRunner` provides it; a Protocol here keeps
    this module from importing the server (which imports this one to build the app).
    """

    plan: FederationPlan
    initial: ArrayRecord
    traffic: dict[int, RoundTraffic]
    error: BaseException | None
    max_examples: int

    def train_config(self, server_round: int = 1) -> ConfigRecord:
        """The round's training configuration."""

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate the round's global model and record it."""

    def finish(self) -> Any:
        """Close the run; returns its result."""


log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SECAGG_CLIENT_APP",
    "DeltaToWeights",
    "SecAggConfig",
    "TrafficGrid",
    "legacy_train_config",
    "make_legacy_strategy",
    "run_secure_federation",
    "secagg_server_app",
]

DEFAULT_SECAGG_CLIENT_APP = "edge.learning.secagg_client:app"


@dataclass(frozen=True)
class SecAggConfig:
    """SecAgg+ parameters (see the module docstring for why these values).

    Attributes:
        timeout: Seconds each of the four SecAgg+ stages waits for replies; a device that
            misses it is treated as dropped (its masks are removed via its shares).
        num_shares: Share of sampled devices each secret is split among (1.0: all).
        reconstruction_threshold: Share of ``num_shares`` needed to rebuild a secret.
        clipping_range, quantization_range, modulus_range, max_weight: The quantizer.
    """

    timeout: float = 120.0
    num_shares: float = 1.0
    reconstruction_threshold: float = 0.5
    clipping_range: float = 1.0
    quantization_range: int = 2**20
    modulus_range: int = 2**32
    max_weight: float = 5000.0

    def workflow(self) -> SecAggPlusWorkflow:
        """Flower's SecAgg+ fit workflow with these parameters."""
        return SecAggPlusWorkflow(
            num_shares=self.num_shares,
            reconstruction_threshold=self.reconstruction_threshold,
            max_weight=self.max_weight,
            clipping_range=self.clipping_range,
            quantization_range=self.quantization_range,
            modulus_range=self.modulus_range,
            timeout=self.timeout,
        )


def content_nbytes(content: RecordDict) -> int:
    """Payload bytes of a message: arrays, bytes and scalars (protobuf framing excluded)."""
    total = 0
    for record in content.array_records.values():
        total += sum(len(a.data) for a in record.values())
    for config in content.config_records.values():
        for value in config.values():
            items = value if isinstance(value, list) else [value]
            for item in items:
                total += len(item) if isinstance(item, bytes | str) else 8
    for metrics in content.metric_records.values():
        total += 8 * len(metrics)
    return total


class TrafficGrid(Grid):
    """A Grid that counts what each round moves, keyed by the round in ``group_id``.

    SecAgg+ exchanges four message pairs per round (keys, shares, masked vectors, unmask
    shares); all of them are counted, since all of them cost the device uplink.
    """

    def __init__(self, inner: Grid, traffic: dict[int, RoundTraffic], model_nbytes: int) -> None:
        self.inner = inner
        self.traffic = traffic
        self.model_nbytes = model_nbytes

    # Plain delegation to the wrapped Grid for everything but send_and_receive.
    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send, wait, and count bytes down/up and masked vectors received."""
        out = list(messages)
        replies = list(self.inner.send_and_receive(out, timeout=timeout))
        rounds = {n for m in out if (n := _round_number(m.metadata.group_id)) is not None}
        if len(rounds) != 1:  # parameter initialisation (round 0) and the like
            return replies
        traffic = self.traffic.setdefault(rounds.pop(), RoundTraffic())
        traffic.bytes_down += sum(content_nbytes(m.content) for m in out)
        for reply in replies:
            if reply.has_error():
                continue
            traffic.bytes_up += content_nbytes(reply.content)
            config = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if config is not None and Key.MASKED_PARAMETERS in config:
                traffic.accepted += 1
                traffic.raw_bytes_up += self.model_nbytes
        return replies


class DeltaToWeights(LegacyStrategy):
    """Turn the securely averaged delta into weights before the inner strategy sees it.

    After unmasking, every ``FitRes`` carries the same weighted-mean delta; replacing it by
    ``global + delta`` makes FedAvg/FedProx return it as is and gives FedAdam the
    pseudo-gradient it expects.
    """

    def __init__(self, inner: LegacyStrategy, traffic: dict[int, RoundTraffic]) -> None:
        self.inner = inner
        self.traffic = traffic
        self._global: list[np.ndarray] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The runner's starting model."""
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Remember the global weights the deltas will apply to."""
        self._global = parameters_to_ndarrays(parameters)
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        self.traffic.setdefault(server_round, RoundTraffic()).sampled = len(instructions)
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Add the mean delta to the global weights, then let the inner strategy finish."""
        traffic = self.traffic.setdefault(server_round, RoundTraffic())
        # Not len(failures): Flower 1.41's SecAgg+ workflow records a stage's error twice.
        traffic.failed = traffic.sampled - len(results)
        if not results:
            return None, {}
        delta = parameters_to_ndarrays(results[0][1].parameters)
        if len(delta) != len(self._global) or not all(np.all(np.isfinite(d)) for d in delta):
            log.error("round %d: the unmasked aggregate is malformed; skipped", server_round)
            return None, {}
        weights = ndarrays_to_parameters(
            [(g + d).astype(g.dtype) for g, d in zip(self._global, delta, strict=True)]
        )
        for _, fit_res in results:
            fit_res.parameters = weights
        return self.inner.aggregate_fit(server_round, results, failures)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Federated evaluation stays off: the server evaluates."""
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Nothing to aggregate (no federated evaluation)."""
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Server-side evaluation, delegated to the inner strategy's ``evaluate_fn``."""
        return self.inner.evaluate(server_round, parameters)


EvaluateFn = Callable[[int, list[np.ndarray], dict[str, Scalar]], tuple[float, dict[str, Scalar]]]


def make_legacy_strategy(
    name: str,
    participation: Participation,
    *,
    initial: Parameters,
    evaluate_fn: EvaluateFn,
    fit_config: Callable[[int], dict[str, Scalar]],
    proximal_mu: float = 0.01,
    server_lr: float = 0.01,
) -> LegacyStrategy:
    """The legacy twin of :func:`cloud.federation.strategies.make_strategy` for SecAgg+.

    Raises:
        ConfigError: a robust strategy (it needs individual updates, which SecAgg+ hides).
    """
    which = StrategyName(name)
    if which in ROBUST:
        raise ConfigError(f"{name} needs individual updates: it cannot run under SecAgg+")
    common: dict[str, Any] = {
        "fraction_fit": participation.fraction,
        "fraction_evaluate": 0.0,
        "min_fit_clients": max(2, participation.min_clients),  # SecAgg+ needs >= 2
        "min_evaluate_clients": 0,
        "min_available_clients": max(2, participation.min_available),
        "evaluate_fn": evaluate_fn,
        "on_fit_config_fn": fit_config,
        "initial_parameters": initial,
    }
    if which is StrategyName.FEDPROX:
        return FedProx(**common, proximal_mu=proximal_mu)
    if which is StrategyName.FEDADAM:
        return FedAdam(**common, eta=server_lr, eta_l=server_lr)
    return FedAvg(**common)


def legacy_train_config(runner: FederationRunner, server_round: int) -> dict[str, Scalar]:
    """The runner's train config for one round, as the legacy API's scalar-only dict."""
    config: dict[str, Any] = dict(runner.train_config(server_round))
    config.update({"server-round": server_round, "run-id": runner.plan.run_id})
    # The legacy API carries scalars only: lists travel as "1,8,8".
    return {k: ",".join(str(x) for x in v) if isinstance(v, list) else v for k, v in config.items()}


def run_secure_federation(runner: FederationRunner, grid: Grid, context: Context) -> None:
    """Drive all of ``runner``'s rounds under SecAgg+ on ``grid``, then finish the run."""
    plan = runner.plan
    names = list(runner.initial.keys())
    initial = [a.numpy() for a in runner.initial.values()]

    def evaluate_fn(
        server_round: int, arrays: list[np.ndarray], _config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]]:
        record = ArrayRecord({n: Array(np.asarray(a)) for n, a in zip(names, arrays, strict=True)})
        metrics = runner.evaluate(server_round, record)
        accuracy = cast(float, metrics["accuracy"])
        return float(cast(float, metrics["loss"])), {"accuracy": float(accuracy)}

    inner = make_legacy_strategy(
        plan.strategy,
        plan.participation,
        initial=ndarrays_to_parameters(initial),
        evaluate_fn=evaluate_fn,
        fit_config=lambda server_round: legacy_train_config(runner, server_round),
        proximal_mu=plan.proximal_mu,
    )
    settings = SecAggConfig(timeout=plan.secagg_timeout)
    legacy = LegacyContext(
        context,
        config=ServerConfig(num_rounds=plan.rounds, round_timeout=plan.round_timeout),
        strategy=DeltaToWeights(inner, runner.traffic),
    )
    counted = TrafficGrid(
        grid, runner.traffic, float32_nbytes(dict(zip(names, initial, strict=True)))
    )
    log.info("run %s: %d rounds under SecAgg+ (%s)", plan.run_id, plan.rounds, settings)
    DefaultWorkflow(fit_workflow=settings.workflow())(counted, legacy)
    runner.finish()


def secagg_server_app(runner: FederationRunner) -> ServerApp:
    """A ``ServerApp`` running ``runner`` under SecAgg+; errors are kept in ``runner.error``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_secure_federation(runner, grid, context)
        except BaseException as exc:
            runner.error = exc
            raise

    return app

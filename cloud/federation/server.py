"""The coordinator's ServerApp: rounds, server-side evaluation, registry lineage, quantization.

:class:`FederationRunner` owns one run. Its :meth:`~FederationRunner.server_app` is a Flower
``ServerApp`` whose ``main`` drives the strategy (wrapped in the update guard); after every
round it evaluates the new global model on the held-out split, stores it in the registry as
``source=federated, source_ref=<run>/round-<n>, parent=<previous round>`` and streams a
:class:`RoundReport`. At the end the best round is quantized with the foundation pipeline.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from cloud.data import Split, data_record, load_dataset, stratified_split
from cloud.federation.guard import RoundTraffic, UpdateGuard, UpdateKeys
from cloud.federation.plan import FederationPlan, FederationResult, RoundReport
from cloud.federation.strategies import ROBUST, make_strategy
from cloud.registry import ArtifactStatus, Registry, VersionSource
from cloud.registry.registry import NewArtifact
from cloud.training import ModelSpec, build_model, default_arch, evaluate_torch
from cloud.training.serialize import model_from_bytes, model_to_bytes
from shared.compression import UPDATE_MODES
from shared.errors import ConfigError, FedgeError
from shared.protocol.learning import TrainInstruction, train_instruction_to_config

log = logging.getLogger(__name__)

#: Called after each round (and once for round 0, the starting model).
RoundCallback = Callable[[RoundReport], None]


class FederationRunner:
    """One federated run against a registry.

    Args:
        plan: What to run.
        registry: Where round versions are stored.
        on_round: Streams each round's report as it finishes.
        extra_train_config: Added to every train config (the simulation's partition dir).
        update_keys: Keys to open sealed, signed updates; required by robust strategies
            (trimmed mean, median), which see every individual update.

    Raises:
        ConfigError: unknown update mode, or a robust strategy without ``update_keys``.
    """

    def __init__(
        self,
        plan: FederationPlan,
        registry: Registry,
        *,
        on_round: RoundCallback | None = None,
        extra_train_config: dict[str, Any] | None = None,
        update_keys: UpdateKeys | None = None,
    ) -> None:
        if plan.update_mode not in UPDATE_MODES:
            raise ConfigError(f"unknown update mode {plan.update_mode!r}; use {UPDATE_MODES}")
        if plan.strategy in ROBUST and update_keys is None:
            raise ConfigError(
                f"{plan.strategy} sees individual updates: it needs the coordinator's keys "
                "so devices can seal and sign them"
            )
        self.plan = plan
        self.registry = registry
        self.on_round = on_round or (lambda _r: None)
        self.dataset = load_dataset(plan.data)
        self.split: Split = stratified_split(self.dataset, seed=plan.seed)
        self.parent: str | None = None
        if plan.init_version:
            version = registry.get_version(plan.init_version)
            self.spec = ModelSpec.from_dict(version.spec)
            model = model_from_bytes(
                self.spec, registry.read_artifact(version.artifact("torch", "fp32"))
            )
            self.parent = version.ref
        else:
            arch = plan.arch or default_arch(self.dataset.input_shape)
            self.spec = ModelSpec(arch, self.dataset.input_shape, self.dataset.num_classes)
            torch.manual_seed(plan.seed)
            model = build_model(self.spec)
        self.initial = ArrayRecord(model.state_dict())
        # Rounds continue the model line they start from, so their version numbers keep
        # rising: a device's anti-rollback floor is one number across everything it runs.
        self.model_name = plan.model_name or (
            registry.get_version(plan.init_version).model
            if plan.init_version
            else f"{self.spec.arch}-{self.dataset.name}-fl"
        )
        # Bounded influence: the round's cap on a client's FedAvg weight (its claim).
        self.max_examples = plan.max_examples or max(
            1, math.ceil(2 * len(self.split.train_y) / plan.num_clients)
        )
        self.guard = UpdateGuard(
            make_strategy(plan.strategy, plan.participation, proximal_mu=plan.proximal_mu),
            run_id=plan.run_id,
            max_update_bytes=plan.max_update_bytes,
            max_delta_norm=plan.max_delta_norm,
            keys=update_keys,
            round_config=lambda server_round: {"lr": plan.lr_at(server_round)},
            max_examples=self.max_examples,
        )
        # Per-round traffic: filled by the guard (plain path) or the SecAgg+ grid.
        self.traffic: dict[int, RoundTraffic] = self.guard.traffic
        self.extra_train_config = dict(extra_train_config or {})
        self.result = FederationResult(plan.run_id, plan.strategy, initial_accuracy=float("nan"))
        self.error: BaseException | None = None
        self._best: tuple[float, str] | None = None
        self._round_started = time.perf_counter()

    @property
    def secagg_name(self) -> str | None:
        """``fedge-secagg`` / ``flower-secagg+`` when rounds run securely, else ``None``."""
        kind = self.plan.secagg_kind
        if kind is None:
            return None
        return "fedge-secagg" if kind == "fedge" else "flower-secagg+"

    def epsilon_at(self, server_round: int) -> float | None:
        """The run's (ε, plan.dp_delta) after ``server_round`` rounds, with central DP on."""
        if self.plan.dp_noise_multiplier is None:
            return None
        from cloud.federation.privacy import gaussian_epsilon

        return gaussian_epsilon(self.plan.dp_noise_multiplier, server_round, self.plan.dp_delta)

    def train_config(self, server_round: int = 1) -> ConfigRecord:
        """What every client is told in ``server_round`` (the learning contract's
        :class:`~shared.protocol.learning.TrainInstruction`): model spec, hyper-parameters
        (the learning rate follows the plan's per-round decay), compression and bounds."""
        instruction = TrainInstruction.model_validate(
            {
                "run-id": self.plan.run_id,
                "server-round": server_round,
                "arch": self.spec.arch,
                "input-shape": tuple(self.spec.input_shape),
                "num-classes": self.spec.num_classes,
                "local-epochs": self.plan.local_epochs,
                "lr": float(self.plan.lr_at(server_round)),
                "batch-size": self.plan.batch_size,
                "proximal-mu": float(self.plan.proximal_mu)
                if self.plan.strategy == "fedprox"
                else 0.0,
                "update-mode": self.plan.update_mode,
                "topk-fraction": float(self.plan.topk_fraction),
                "error-feedback": self.plan.update_mode == "topk",
                "max-examples": self.max_examples,
                "max-delta-norm": self.plan.max_delta_norm,
                **self.extra_train_config,
            }
        )
        return train_instruction_to_config(instruction)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate a global model on the held-out split; store and report rounds >= 1."""
        model = build_model(self.spec)
        model.load_state_dict(arrays.to_torch_state_dict())
        accuracy, loss = evaluate_torch(model, self.split.test_x, self.split.test_y)
        if server_round == 0:
            self.result.initial_accuracy = accuracy
            log.info("run %s: starting model accuracy %.4f", self.plan.run_id, accuracy)
        else:
            traffic = self.traffic.get(server_round, RoundTraffic())
            report = self._record_round(server_round, model, accuracy, loss, traffic)
            self.result.rounds.append(report)
            self.on_round(report)
        self._round_started = time.perf_counter()
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    def _record_round(
        self,
        server_round: int,
        model: torch.nn.Module,
        accuracy: float,
        loss: float,
        traffic: RoundTraffic,
    ) -> RoundReport:
        seconds = round(time.perf_counter() - self._round_started, 3)
        metrics = {
            "test_accuracy": accuracy,
            "test_loss": loss,
            "round": server_round,
            "run_id": self.plan.run_id,
            "strategy": self.plan.strategy,
            "participants": traffic.accepted,
            "rejected": len(traffic.rejected),
            "bytes_up": traffic.bytes_up,
            "bytes_down": traffic.bytes_down,
            # Under SecAgg+ devices upload masked deltas; update_mode then does not apply.
            "update_mode": self.secagg_name or self.plan.update_mode,
            "secure_aggregation": self.plan.uses_secagg,
            "capped": traffic.capped,
            "clipped": traffic.clipped,
        }
        version = self.registry.create_version(
            self.model_name,
            spec=self.spec.to_dict(),
            source=VersionSource.FEDERATED,
            source_ref=f"{self.plan.run_id}/round-{server_round}",
            parent=self.parent,
            data=data_record(self.plan.data, self.dataset, seed=self.plan.seed),
            metrics=metrics,
            artifacts=[NewArtifact("torch", "fp32", model_to_bytes(model), ArtifactStatus.SOURCE)],
        )
        self.parent = version.ref
        if self._best is None or accuracy > self._best[0]:
            self._best = (accuracy, version.ref)
        return RoundReport(
            round=server_round,
            accuracy=accuracy,
            loss=loss,
            participants=traffic.accepted,
            rejected=len(traffic.rejected),
            failed=traffic.failed,
            bytes_up=traffic.bytes_up,
            bytes_down=traffic.bytes_down,
            raw_bytes_up=traffic.raw_bytes_up,
            seconds=seconds,
            version=version.ref,
            capped=traffic.capped,
            epsilon=self.epsilon_at(server_round),
        )

    def run(self, grid: Grid) -> FederationResult:
        """Drive all rounds on ``grid``, then quantize the best round if asked."""
        self._round_started = time.perf_counter()
        self.guard.start(
            grid,
            self.initial,
            num_rounds=self.plan.rounds,
            timeout=self.plan.round_timeout,
            train_config=self.train_config(),
            evaluate_fn=self.evaluate,
        )
        return self.finish()

    def finish(self) -> FederationResult:
        """Pick the best round and quantize it if asked (both round drivers end here)."""
        self.result.secure_aggregation = self.secagg_name
        if self.plan.dp_noise_multiplier is not None:
            self.result.epsilon = self.epsilon_at(len(self.result.rounds))
            self.result.delta = self.plan.dp_delta
        if self._best is not None:
            self.result.best_version = self._best[1]
            if self.plan.quantize:
                self._quantize(self._best[1])
        return self.result

    def _quantize(self, ref: str) -> None:
        from cloud.quantization import quantize_version

        try:
            report = quantize_version(self.registry, ref, max_drop=self.plan.max_drop)
        except FedgeError as exc:
            log.warning("quantizing %s failed: %s", ref, exc.message)
            self.result.quantization = {"version": ref, "error": exc.message}
            return
        self.result.quantization = report.to_dict()
        self.result.deployable = report.selected is not None

    def server_app(self) -> ServerApp:
        """A ``ServerApp`` whose main runs this federation; errors are kept in ``self.error``.

        Under SecAgg+ (the plan's default for FedAvg-family strategies) this is the legacy
        SecAgg+ workflow of :mod:`cloud.federation.secagg`; otherwise the guarded
        Message-API strategy. Flower runs the ServerApp in its own thread and only logs
        what it raises, so the exception is stored for the caller to re-raise.
        """
        if self.plan.secagg_kind == "fedge":
            from cloud.federation.secure_rounds import fedge_secagg_server_app

            return fedge_secagg_server_app(self)
        if self.plan.uses_secagg:
            from cloud.federation.secagg import secagg_server_app

            return secagg_server_app(self)
        app = ServerApp()

        @app.main()
        def main(grid: Grid, context: Context) -> None:
            try:
                self.run(grid)
            except BaseException as exc:
                self.error = exc
                raise

        return app

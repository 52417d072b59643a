"""What a federated run is asked to do, and what it reports per round."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from cloud.federation import defaults
from cloud.federation.strategies import ROBUST, Participation
from shared.compression import UpdateMode
from shared.errors import ConfigError

#: The secure-aggregation implementations ``--secagg`` accepts.
SECAGG_IMPLS = ("fedge", "flower")


@dataclass(frozen=True)
class FederationPlan:
    """Everything a run needs besides the registry.

    Attributes:
        data: Data set (``digits``, ``mnist-5k`` or ``PATH.npz``); its held-out split is
            the server's evaluation set and its train split is partitioned across clients.
        num_clients: Simulated devices (one partition each).
        rounds: Federated rounds.
        strategy: ``fedavg``, ``fedprox``, ``fedadam``, ``trimmed-mean`` or ``median``.
        participation: Sampling fraction and minimum client counts per round.
        round_timeout: Seconds a round waits for replies; stragglers are left out.
        local_epochs, lr, batch_size: Client training hyper-parameters (defaults:
            :mod:`cloud.federation.defaults`).
        lr_decay: Per-round learning-rate decay: round ``r`` trains with
            ``lr * lr_decay ** (r - 1)`` (``1.0``: constant).
        proximal_mu: FedProx weight (ignored by the other strategies).
        update_mode: How clients compress their deltas (``fp32``, ``int8``, ``topk``).
        topk_fraction: Share of entries a ``topk`` update keeps.
        alpha: Dirichlet label-skew α; ``None`` for IID partitions.
        seed: Split, partition and initial-weights seed.
        arch: ``cnn`` or ``mlp`` (default by data kind); ignored with ``init_version``.
        init_version: Registry ``MODEL@N`` to start from (and to be the parent of round 1).
        model_name: Registry name for the round versions (default ``ARCH-DATA-fl``).
        quantize: Quantize the best round's model at the end.
        max_drop: Accuracy budget, in points, for the int8 model.
        max_update_bytes: Largest accepted update (default 1.1x the float32 model).
        max_delta_norm: L2 bound on a client's delta, on by default
            (:data:`cloud.federation.defaults.MAX_DELTA_NORM`); the plain path rejects a
            delta over it, under fedge SecAgg the device clips to it (the server cannot see
            individual updates); ``None`` disables it.
        max_examples: Cap on a client's ``num_examples`` (its FedAvg weight); a client
            claiming more is weighted as if it had exactly the cap, and counted. ``None``:
            twice the mean partition (``2 * train size / num_clients``).
        run_id: Identifies the run in lineage and in every update (default random).
        secure_aggregation: Run rounds under SecAgg+ (``None``: on for FedAvg, FedProx and
            FedAdam; robust strategies need individual updates and cannot use it).
        secagg_timeout: Seconds each SecAgg+ stage waits for replies before treating the
            silent devices as dropped.
        secagg_impl: ``fedge`` (ours: full-strength PRG masks, packed, modulus sized to
            the round; :mod:`cloud.federation.secagg_fedge`) or ``flower`` (Flower 1.41's
            SecAgg+, kept for comparison); ``None``: fedge, except ``flower`` for FedAdam
            (see :attr:`secagg_kind`).
        secagg_bits: Quantization bits per weighted delta value under fedge SecAgg.
        secagg_clip: Per-value clipping range ``c`` of the weighted delta under fedge
            SecAgg. Measured on the benchmark (mnist-5k, 10 clients): the 99.9th percentile
            of ``|w * delta|`` in round 1 is 0.05-0.2; ``c = 0.05`` cost 1.5 points after 5
            rounds, ``c = 0.15`` matched fp32 (step ``2c / 255 = 1.2e-3``, unbiased).
        dp_noise_multiplier: Central DP (fedge SecAgg): Gaussian noise of std
            ``z * max_delta_norm`` added to the unmasked sum each round; ``None``: off.
        dp_delta: The δ the run's ε is reported at.
    """

    data: str = "digits"
    num_clients: int = 3
    rounds: int = 3
    strategy: str = "fedavg"
    participation: Participation = field(default_factory=Participation)
    round_timeout: float = 300.0
    local_epochs: int = defaults.LOCAL_EPOCHS
    lr: float = defaults.LR
    lr_decay: float = defaults.LR_DECAY
    batch_size: int = defaults.BATCH_SIZE
    proximal_mu: float = defaults.PROXIMAL_MU
    update_mode: UpdateMode = "int8"
    topk_fraction: float = 0.1
    alpha: float | None = None
    seed: int = 0
    arch: str | None = None
    init_version: str | None = None
    model_name: str | None = None
    quantize: bool = True
    max_drop: float = 1.0
    max_update_bytes: int | None = None
    max_delta_norm: float | None = defaults.MAX_DELTA_NORM
    max_examples: int | None = None
    run_id: str = field(default_factory=lambda: f"run-{uuid.uuid4().hex[:10]}")
    secure_aggregation: bool | None = None
    secagg_timeout: float = 120.0
    secagg_impl: str | None = None
    secagg_bits: int = 8
    secagg_clip: float = 0.15
    dp_noise_multiplier: float | None = None
    dp_delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.secagg_impl is not None and self.secagg_impl not in SECAGG_IMPLS:
            raise ConfigError(f"unknown secagg {self.secagg_impl!r}; use one of {SECAGG_IMPLS}")
        if not 1 <= self.secagg_bits <= 24 or self.secagg_clip <= 0:
            raise ConfigError("secagg_bits must be in [1, 24] and secagg_clip positive")
        if self.uses_secagg and self.secagg_impl == "fedge" and self.strategy == "fedadam":
            # fedge SecAgg averages deltas; FedAdam's server optimizer runs on Flower's.
            raise ConfigError("fedadam runs under --secagg flower (fedge SecAgg: fedavg/fedprox)")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError("max_examples must be positive")
        if self.dp_noise_multiplier is not None:
            if self.dp_noise_multiplier <= 0 or self.max_delta_norm is None:
                raise ConfigError("central DP needs a positive noise multiplier and a norm bound")
            if self.secagg_kind != "fedge":
                raise ConfigError("central DP runs with fedge secure aggregation only")
        if self.secure_aggregation and self.strategy in ROBUST:
            raise ConfigError(
                f"{self.strategy} needs individual updates, so it cannot run under SecAgg+"
            )
        if self.secagg_timeout <= 0:
            raise ConfigError("secagg_timeout must be positive")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr_decay must be in (0, 1], got {self.lr_decay}")

    def lr_at(self, server_round: int) -> float:
        """The client learning rate for ``server_round`` (1-based)."""
        return self.lr * self.lr_decay ** max(0, server_round - 1)

    @property
    def secagg_kind(self) -> str | None:
        """``fedge`` or ``flower`` when rounds run securely, else ``None``."""
        if not self.uses_secagg:
            return None
        if self.secagg_impl is not None:
            return self.secagg_impl
        return "flower" if self.strategy == "fedadam" else "fedge"

    @property
    def uses_secagg(self) -> bool:
        """Whether rounds run under SecAgg+ (the default unless the strategy is robust)."""
        if self.secure_aggregation is None:
            return self.strategy not in ROBUST
        return self.secure_aggregation


@dataclass(frozen=True)
class RoundReport:
    """One round, as streamed to the CLI and stored in the version's metrics."""

    round: int
    accuracy: float
    loss: float
    participants: int
    rejected: int
    failed: int
    bytes_up: int
    bytes_down: int
    raw_bytes_up: int
    seconds: float
    version: str | None
    capped: int = 0
    epsilon: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class FederationResult:
    """A finished run."""

    run_id: str
    strategy: str
    initial_accuracy: float
    rounds: list[RoundReport] = field(default_factory=list)
    best_version: str | None = None
    quantization: dict[str, Any] | None = None
    deployable: bool = False
    secure_aggregation: str | None = None
    epsilon: float | None = None
    delta: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["rounds"] = [r.to_dict() for r in self.rounds]
        return out

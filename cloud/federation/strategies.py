"""Strategy factory: a name and participation settings → a Flower Message-API strategy."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Strategy,
)

from shared.errors import ConfigError


class StrategyName(StrEnum):
    """The aggregation strategies ``fedge cloud federate --strategy`` accepts."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDADAM = "fedadam"
    TRIMMED = "trimmed-mean"
    MEDIAN = "median"


#: Strategies that need every individual update in the clear (so no SecAgg+).
ROBUST = frozenset({StrategyName.TRIMMED, StrategyName.MEDIAN})


@dataclass(frozen=True)
class Participation:
    """k-of-n participation.

    Attributes:
        fraction: Share of connected clients sampled each round.
        min_clients: Never train with fewer (the round waits for this many to connect).
        min_available: Clients that must be connected before a round starts.
    """

    fraction: float = 1.0
    min_clients: int = 2
    min_available: int = 2


def make_strategy(
    name: str,
    participation: Participation,
    *,
    proximal_mu: float = 0.01,
    trim_beta: float = 0.2,
    server_lr: float = 0.01,
) -> Strategy:
    """Build the named strategy; federated evaluation stays off (the server evaluates).

    Args:
        name: One of :class:`StrategyName`.
        participation: Sampling fraction and minimum client counts.
        proximal_mu: FedProx's proximal weight (sent to clients as ``proximal-mu``).
        trim_beta: Share trimmed from each end by the trimmed mean.
        server_lr: FedAdam's server learning rate ``eta``.

    Raises:
        ConfigError: unknown name or impossible participation.
    """
    try:
        which = StrategyName(name)
    except ValueError:
        known = ", ".join(s.value for s in StrategyName)
        raise ConfigError(f"unknown strategy {name!r}; use one of {known}") from None
    if not 0.0 < participation.fraction <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {participation.fraction}")
    if participation.min_clients < 1 or participation.min_available < participation.min_clients:
        raise ConfigError("need 1 <= min_clients <= min_available")
    common = {
        "fraction_train": participation.fraction,
        "fraction_evaluate": 0.0,
        "min_train_nodes": participation.min_clients,
        "min_evaluate_nodes": 0,
        "min_available_nodes": participation.min_available,
    }
    if which is StrategyName.FEDPROX:
        return FedProx(**common, proximal_mu=proximal_mu)  # type: ignore[arg-type]
    if which is StrategyName.FEDADAM:
        return FedAdam(**common, eta=server_lr, eta_l=server_lr)  # type: ignore[arg-type]
    if which is StrategyName.TRIMMED:
        return FedTrimmedAvg(**common, beta=trim_beta)  # type: ignore[arg-type]
    if which is StrategyName.MEDIAN:
        return FedMedian(**common)  # type: ignore[arg-type]
    return FedAvg(**common)  # type: ignore[arg-type]

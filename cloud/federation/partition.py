"""Split a training set across simulated clients: IID or Dirichlet(α) label skew."""

from __future__ import annotations

import numpy as np

from shared.errors import ConfigError


def iid_partition(labels: np.ndarray, num_clients: int, *, seed: int = 0) -> list[np.ndarray]:
    """Shuffle and deal the indices into ``num_clients`` near-equal shares."""
    if num_clients < 1 or num_clients > len(labels):
        raise ConfigError(f"cannot split {len(labels)} samples across {num_clients} clients")
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    *,
    alpha: float,
    seed: int = 0,
    min_size: int = 2,
) -> list[np.ndarray]:
    """Label-skewed shares: each class is split by proportions drawn from Dir(α).

    Smaller ``alpha`` means more skew (α = 0.3 gives most clients a few dominant classes).
    Draws are repeated until every client holds at least ``min_size`` samples, as in the
    usual benchmark recipe, so no simulated device is empty.

    Raises:
        ConfigError: bad ``alpha`` or client count, or no valid draw in 100 attempts.
    """
    if alpha <= 0:
        raise ConfigError(f"dirichlet alpha must be > 0, got {alpha}")
    if num_clients < 1 or num_clients * min_size > len(labels):
        raise ConfigError(f"cannot split {len(labels)} samples across {num_clients} clients")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(100):
        shares: list[list[int]] = [[] for _ in range(num_clients)]
        for cls in classes:
            idx = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients)) * len(idx)).astype(int)[:-1]
            for client, part in enumerate(np.split(idx, cuts)):
                shares[client].extend(int(i) for i in part)
        if min(len(s) for s in shares) >= min_size:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shares]
    raise ConfigError(f"no Dirichlet(α={alpha}) split gave every client {min_size} samples")


def partition(
    labels: np.ndarray, num_clients: int, *, alpha: float | None = None, seed: int = 0
) -> list[np.ndarray]:
    """IID when ``alpha`` is None, else Dirichlet(α) label skew."""
    if alpha is None:
        return iid_partition(labels, num_clients, seed=seed)
    return dirichlet_partition(labels, num_clients, alpha=alpha, seed=seed)

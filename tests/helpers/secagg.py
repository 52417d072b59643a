"""The one check both SecAgg+ tests make: the new global model is the weighted mean."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cloud.federation.secagg import SecAggConfig


def assert_weighted_mean_within_quantization_error(
    before: Sequence[np.ndarray],
    after: Sequence[np.ndarray],
    updates: Sequence[tuple[Sequence[np.ndarray], int]],
    server_round: int,
    settings: SecAggConfig | None = None,
) -> None:
    """Assert ``after == before + weighted mean of the devices' deltas`` within SecAgg+'s
    quantization bound; that the unweighted mean is outside it (so the check can tell);
    and that the model moved far more than the bound (so the round did something).

    Args:
        before: Global weights the devices trained from.
        after: Global weights the server produced.
        updates: Each device's ``(delta tensors, example count)``.
        server_round: For the failure message.
        settings: The SecAgg+ parameters the run used.
    """
    settings = settings or SecAggConfig()
    step = 2 * settings.clipping_range / settings.quantization_range
    counts = np.array([n for _, n in updates], dtype=np.float64)
    # Flower weights each device by round(n / max_weight * Q) / Q.
    weights = np.round(counts / settings.max_weight * settings.quantization_range)
    weights /= settings.quantization_range
    # Stochastic rounding moves each device's value by < 1 step; the sum of k of them is
    # divided by sum(weights). Float32 storage and thread-count noise in local training
    # add a little on top.
    bound = len(updates) * step / weights.sum() + 1e-5
    worst, unweighted = 0.0, 0.0
    for t, (g, a) in enumerate(zip(before, after, strict=True)):
        deltas = np.stack([u[t] for u, _ in updates]).astype(np.float64)
        expected = g + np.tensordot(weights, deltas, axes=1) / weights.sum()
        assert np.all(np.abs(deltas) * weights.max() < settings.clipping_range)
        worst = max(worst, float(np.max(np.abs(a - expected))))
        unweighted = max(unweighted, float(np.max(np.abs(a - g - deltas.mean(axis=0)))))
    assert worst <= bound, f"round {server_round}: off by {worst:.2e} > {bound:.2e}"
    assert unweighted > bound, f"sizes {counts} too even to test the weighting"
    moved = max(float(np.max(np.abs(a - g))) for g, a in zip(before, after, strict=True))
    assert moved > 20 * bound

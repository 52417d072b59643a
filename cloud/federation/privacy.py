"""Central differential privacy accounting for the Gaussian mechanism (ours, no dependency).

With central DP on (``FederationPlan.dp_noise_multiplier = z``), every device's delta is
clipped to L2 norm ``C = max_delta_norm`` and the server adds ``N(0, (z*C)^2)`` to each
coordinate of the unmasked *sum* before dividing by the survivors' weight. Adding or
removing one device changes the sum by at most ``C`` (its weight is at most 1), so each
round is a Gaussian mechanism with sensitivity ``C`` and noise multiplier ``z``.

Accounting by Rényi DP (Mironov 2017): a Gaussian mechanism with multiplier ``z`` is
``(α, α / (2 z^2))``-RDP for every ``α > 1``; ``T`` rounds compose additively; and
``(α, ρ)``-RDP implies ``(ρ + log(1/δ) / (α - 1), δ)``-DP. We minimise over a grid of
orders. No subsampling amplification is claimed (every sampled device trains each round),
so the bound is conservative. Noise is added by the server after unmasking: the released
models are DP; the server itself is trusted with the (securely aggregated) sum.
"""

from __future__ import annotations

import math

__all__ = ["gaussian_epsilon"]

_ORDERS = [1.0 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(11, 257)]


def gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε of ``rounds`` compositions of the Gaussian mechanism at ``delta``.

    Args:
        noise_multiplier: Noise std divided by the L2 sensitivity (``z``).
        rounds: Rounds composed (``T``).
        delta: The δ of (ε, δ)-DP, in (0, 1).

    Raises:
        ValueError: non-positive multiplier or rounds, or δ outside (0, 1).
    """
    if noise_multiplier <= 0 or rounds < 0 or not 0 < delta < 1:
        raise ValueError("need z > 0, rounds >= 0 and 0 < delta < 1")
    if rounds == 0:
        return 0.0
    rdp = rounds / (2.0 * noise_multiplier**2)
    return min(rdp * a + math.log(1.0 / delta) / (a - 1.0) for a in _ORDERS)

"""The variant the agent and coordinator would choose, for ``benchmarks/edge_inference.py``.

The agent times each variant it is asked to try with ``edge.inference.time_variant`` (its
own interpreter, the profile's threads, a bounded budget); the coordinator's chooser
(``cloud.deployment.variants.choose``: exclusions, pin, then lowest measured median) picks
from those medians. Every variant the benchmark built counts as approved (it judges speed,
not accuracy: the pipeline's budget does that). The choice is then checked against this
run's own interleaved medians: chosen / fastest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cloud.deployment.variants import Limits, Variant, choose
from shared.profiles import DeviceProfile


def agent_choice(
    files: dict[str, Path], *, threads: int, budget_s: float, profile: DeviceProfile
) -> dict[str, Any]:
    """Time every variant as the agent does; choose unconstrained and for ``profile``.

    Returns:
        ``chosen`` (any approved variant: what a device whose profile accepts all four
        gets), ``profile_chosen`` (under the profile's accepts/size/pin), the agent's
        measurements and both choices explained.
    """
    from edge.inference.timing import time_variant

    measured: dict[str, dict[str, float]] = {}
    variants = []
    for precision, path in files.items():
        runs, median, p99 = time_variant(path, threads=threads, budget_s=budget_s)
        measured[precision] = {"runs": runs, "median_us": median, "p99_us": p99}
        data = path.read_bytes()
        variants.append(Variant(precision, hashlib.sha256(data).hexdigest(), len(data)))
    medians = {p: m["median_us"] for p, m in measured.items()}
    free = choose(variants, Limits(), medians)
    pinned = choose(
        variants,
        Limits(
            accepts=frozenset(str(p) for p in profile.precisions),
            max_model_bytes=profile.max_model_bytes,
            pin=str(profile.pin_precision) if profile.pin_precision else None,
        ),
        medians,
    )
    if free.variant is None:
        raise RuntimeError(f"no variant chosen: {free.explain()}")
    return {
        "rule": "cloud.deployment.variants.choose (C1 exclusions, C2 pin, C3 lowest median)",
        "approved": sorted(files),
        "agent_threads": threads,
        "agent_budget_s": budget_s,
        "agent_measured": measured,
        "chosen": free.variant.precision,
        "chosen_explain": free.explain(),
        "profile": profile.name,
        "profile_accepts": sorted(str(p) for p in profile.precisions),
        "profile_chosen": pinned.variant.precision if pinned.variant else None,
        "profile_explain": pinned.explain(),
    }

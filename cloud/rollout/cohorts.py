"""Deterministic cohort assignment: the same devices and rollout id give the same cohorts.

Devices are ordered by ``sha256(rollout_id || device_id)`` — a stable shuffle, so the
canary is not always the alphabetically first device, and a different rollout samples a
different canary — then cut by the policy's cumulative cohort sizes. The assignment is
stored with the rollout when it is created; a resumed coordinator reads it back rather
than recomputing it, and recomputing would give the same answer anyway.
"""

from __future__ import annotations

import hashlib
import math

from cloud.rollout.policy import CohortSpec
from shared.errors import ConfigError

__all__ = ["assign_cohorts", "cohort_sizes"]


def cohort_sizes(total: int, cohorts: list[CohortSpec]) -> list[int]:
    """How many devices each cohort gets out of ``total`` (the last takes the rest).

    A ``percent`` is cumulative (of the whole fleet, rounded up); a ``count`` is the cohort's
    own size. A cohort whose cumulative size is already reached gets nobody (an empty
    cohort is skipped by the engine), so a short fleet never waits on empty cohorts.
    """
    sizes: list[int] = []
    reached = 0
    for i, spec in enumerate(cohorts):
        if i == len(cohorts) - 1:
            goal = total
        elif spec.count is not None:
            goal = reached + spec.count
        else:
            goal = math.ceil(total * float(spec.percent or 0.0) / 100.0 - 1e-9)
        goal = min(max(goal, reached), total)
        sizes.append(goal - reached)
        reached = goal
    return sizes


def _order_key(rollout_id: str, device_id: str) -> bytes:
    return hashlib.sha256(f"{rollout_id}\x00{device_id}".encode()).digest()


def assign_cohorts(
    rollout_id: str, device_ids: list[str], cohorts: list[CohortSpec]
) -> list[list[str]]:
    """The devices of each cohort (each list sorted by id for reading).

    Raises:
        ConfigError: no devices (code ``empty_target``).
    """
    unique = sorted(set(device_ids))
    if not unique:
        raise ConfigError("the rollout's target matches no enrolled device", code="empty_target")
    ordered = sorted(unique, key=lambda d: _order_key(rollout_id, d))
    out: list[list[str]] = []
    start = 0
    for size in cohort_sizes(len(ordered), cohorts):
        out.append(sorted(ordered[start : start + size]))
        start += size
    return out

"""The deployment plane, simulated: staged rollouts of each new model over the fleet's links.

Each release (a round's global model) is rolled out under the scenario's
:class:`cloud.rollout.policy.RolloutPolicy` — the product's own policy type, with its
cohorts assigned by :func:`cloud.rollout.cohorts.assign_cohorts` (the same stable
``sha256(rollout id, device id)`` order the rollout engine uses) and its per-cohort
thresholds from :meth:`RolloutPolicy.cohort`. Per device:

* when it is reachable (its availability trace); a churned device never answers;
* at most ``max_concurrent_downloads`` devices of a cohort are served at once: the next one
  starts when a slot frees (a device commits or times out);
* wire bytes: the signed manifest, then the int8 model compressed with the product's own
  zstd settings, cut into ``chunk_bytes`` chunks with a per-chunk envelope
  (:data:`CHUNK_OVERHEAD`) — the model size is *measured* on the release's weights;
* transfer time over its link, paused by a broker outage window;
* install cost: the per-device CPU one install took in the OTA benchmark
  (``benchmarks/results/ota*.json``, ``device_work_alone_ms.total_ms``) times the kind's
  ``install_scale``; without a result file, :data:`FALLBACK_INSTALL_MS` (an assumption,
  reported as such in the output's ``install_cost.source``);
* the outcome: committed; failed (``install_failure_rate``: the A/B updater rolls back);
  reverted in probation (every device given a release injected with
  ``canary_failure_release``); or timed out after ``device_timeout_s`` (offline or churned),
  which counts as a failure or is skipped per the policy's ``offline`` rule.

A cohort's install gate aborts the rollout when its failed share reaches the cohort's
``failure_threshold`` or its committed share stays below ``success_threshold``; the
simulation's accuracy gate (``max_accuracy_drop``, the field gate's stand-in) aborts a
release whose server-side accuracy fell too far. Passing cohorts bake ``bake_s`` before
the next. On abort the remaining cohorts never start and the fleet keeps its model.
Targets match on groups and device ids (profile tags are not labels of the simulated fleet).
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from cloud.rollout.cohorts import assign_cohorts
from cloud.rollout.policy import OfflinePolicy, RolloutPolicy
from shared.errors import ConfigError
from simulations.population import Fleet, SimDevice
from simulations.scenario import FaultSection, RolloutSection

__all__ = [
    "FALLBACK_INSTALL_MS",
    "InstallCost",
    "Release",
    "RolloutReport",
    "int8_payload_bytes",
    "load_install_cost",
    "simulate_rollout",
    "targeted",
]

#: Per-device install CPU assumed when no OTA benchmark result exists (ms, Cortex-A53
#: class: verify + decrypt + decompress + fsync'ed slot write + probe of a ~100 KB model).
FALLBACK_INSTALL_MS = 250.0
#: Signed manifest bytes (the manifest of ``shared.artifacts`` plus its Ed25519 signature).
MANIFEST_BYTES = 2048
#: Per-chunk envelope: AEAD nonce + tag, index and artifact id framing.
CHUNK_OVERHEAD = 64
RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


class Outcome(StrEnum):
    """What happened on one device."""

    COMMITTED = "committed"
    FAILED = "failed"
    REVERTED = "reverted"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class InstallCost:
    """Per-device install CPU and where the number comes from."""

    ms: float
    source: str


def load_install_cost(results_dir: Path = RESULTS_DIR) -> InstallCost:
    """The measured per-device install cost from the newest OTA benchmark result, or the
    documented fallback when there is none (or it is unreadable)."""
    for path in sorted(
        results_dir.glob("ota*.json"), key=lambda p: p.stat().st_mtime, reverse=True
    ):
        try:
            total = json.loads(path.read_text())["device_work_alone_ms"]["total_ms"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(total, int | float) and total > 0:
            return InstallCost(float(total), f"measured: {path.name} device_work_alone_ms")
    return InstallCost(FALLBACK_INSTALL_MS, "fallback: no benchmarks/results/ota*.json")


def int8_payload_bytes(weights: dict[str, np.ndarray]) -> int:
    """Bytes of a model as delivered: symmetric per-tensor int8, zstd with the product's
    artifact settings (a stand-in for the int8 ``.tflite``, measured on the real weights)."""
    from shared.artifacts.compression import compress

    parts = []
    for w in weights.values():
        scale = float(np.max(np.abs(w))) / 127 or 1.0
        parts.append(np.clip(np.round(w / scale), -127, 127).astype(np.int8).tobytes())
    return len(compress(b"".join(parts))) + 8 * len(weights)  # + one scale per tensor


@dataclass(frozen=True)
class Release:
    """A model to roll out: a learning round's global model."""

    index: int
    version: str
    strategy: str
    round: int
    accuracy: float
    model_bytes: int
    ready_s: float


@dataclass
class StageReport:
    """One cohort of a rollout."""

    cohort: int
    devices: int
    committed: int
    failed: int
    reverted: int
    timed_out: int
    started_s: float
    finished_s: float
    gate_passed: bool
    reason: str = ""


@dataclass
class RolloutReport:
    """One release's rollout: stages, bytes, outcome."""

    release: int
    version: str
    state: str
    started_s: float
    finished_s: float
    bytes_down: int
    installed: int
    model_bytes: int
    stages: list[StageReport] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _next_online(device: SimDevice, t: float) -> float:
    if device.online(t):
        return t
    position = (t / device.period_s + device.phase) % 1.0
    return t + (1.0 - position) * device.period_s + 1e-6


def _through_outage(start: float, end: float, faults: FaultSection, origin: float) -> float:
    """End time of a transfer ``[start, end]`` when nothing moves during the outage."""
    if faults.broker_outage is None:
        return end
    lo = origin + faults.broker_outage.start_s
    hi = lo + faults.broker_outage.duration_s
    if end <= lo or start >= hi:
        return end
    return end + (hi - max(start, lo))


def targeted(fleet: Fleet, policy: RolloutPolicy) -> list[SimDevice]:
    """The devices a policy's target selects (by group or device id).

    Raises:
        ConfigError: the target selects nobody (code ``empty_target``).
    """
    groups, ids = set(policy.target.groups), set(policy.target.devices)
    chosen = [d for d in fleet.devices if groups & set(d.groups) or d.device_id in ids]
    if not chosen:
        raise ConfigError("the rollout's target matches no simulated device", code="empty_target")
    return chosen


def simulate_rollout(
    release: Release,
    fleet: Fleet,
    section: RolloutSection,
    faults: FaultSection,
    *,
    start_s: float,
    current_accuracy: float | None,
    install: InstallCost,
    rng: np.random.Generator,
    origin_s: float = 0.0,
) -> RolloutReport:
    """Roll ``release`` out over ``fleet`` cohort by cohort (see the module docstring).

    Args:
        release: What to deliver.
        fleet: Every device (inference-only ones too: they all run the model).
        section: The policy plus chunking, install failure rate and accuracy gate.
        faults: Churn, broker outage, canary failure.
        start_s: Simulated time the rollout starts.
        current_accuracy: Server-side accuracy of the model the fleet runs (``None``: none).
        install: Per-device install cost.
        rng: Outcome draws.
        origin_s: Time the outage window is relative to (the first rollout's start).
    """
    policy = section.policy
    chunks = max(1, math.ceil(release.model_bytes / section.chunk_bytes))
    wire = MANIFEST_BYTES + release.model_bytes + chunks * CHUNK_OVERHEAD
    bad = faults.canary_failure_release == release.index
    devices = {d.device_id: d for d in targeted(fleet, policy)}
    cohorts = assign_cohorts(f"sim-{release.version}", list(devices), policy.cohorts)
    report = RolloutReport(
        release.index, release.version, "completed", start_s, start_s, 0, 0, release.model_bytes
    )
    drop = 100 * (current_accuracy - release.accuracy) if current_accuracy is not None else 0.0
    t = start_s
    for k, ids in enumerate(cohorts):
        if not ids:
            continue
        cohort = policy.cohort(k)
        counts = dict.fromkeys(Outcome, 0)
        slots = [t] * min(policy.max_concurrent_downloads, len(ids))
        for device_id in ids:
            device = devices[device_id]
            begin = heapq.heappop(slots)
            end = _next_online(device, begin)
            churned = rng.random() < faults.churn
            if not churned:
                end = _through_outage(
                    end, end + device.transfer_s(wire, up=False), faults, origin_s
                )
                end += install.ms * device.install_scale / 1000
            if churned or end - begin > cohort.device_timeout_s:
                counts[Outcome.TIMED_OUT] += 1
                end = begin + cohort.device_timeout_s
            else:
                report.bytes_down += wire
                if bad:
                    counts[Outcome.REVERTED] += 1
                elif rng.random() < section.install_failure_rate:
                    counts[Outcome.FAILED] += 1
                else:
                    counts[Outcome.COMMITTED] += 1
            heapq.heappush(slots, end)
        finished = max(slots)
        timed_out = counts[Outcome.TIMED_OUT]
        skip = policy.offline is OfflinePolicy.SKIP
        considered = len(ids) - (timed_out if skip else 0)
        failed = counts[Outcome.FAILED] + counts[Outcome.REVERTED] + (0 if skip else timed_out)
        success = counts[Outcome.COMMITTED] / considered if considered else 0.0
        failure = failed / considered if considered else 0.0
        reason = ""
        if considered and failure >= cohort.failure_threshold:
            reason = f"cohort {k}: {failure:.0%} failed >= threshold {cohort.failure_threshold:.0%}"
        elif success < cohort.success_threshold:
            reason = (
                f"cohort {k}: {success:.0%} committed < threshold {cohort.success_threshold:.0%}"
            )
        elif drop > section.max_accuracy_drop:
            reason = f"cohort {k}: accuracy drop {drop:.2f} pts > {section.max_accuracy_drop}"
        if counts[Outcome.REVERTED]:
            reason += f" ({counts[Outcome.REVERTED]} reverted in probation)"
        report.stages.append(
            StageReport(
                k,
                len(ids),
                counts[Outcome.COMMITTED],
                counts[Outcome.FAILED],
                counts[Outcome.REVERTED],
                timed_out,
                round(t, 3),
                round(finished, 3),
                gate_passed=not reason,
                reason=reason,
            )
        )
        if reason:
            report.state, report.reason = "aborted", reason
            t = finished
            break
        report.installed += counts[Outcome.COMMITTED]
        t = finished + cohort.bake_s
    report.finished_s = round(t, 3)
    return report

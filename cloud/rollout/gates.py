"""Gates: pure functions from field evidence to a decision that carries its evidence.

Every :class:`Decision` records the values it compared, the thresholds and the sample
counts, so the rollout's event timeline says exactly why a cohort advanced or aborted.
A verdict is ``pass``, ``fail`` or ``wait`` (not enough evidence yet: the engine keeps
baking, up to the policy's evidence timeout).

Latency over several telemetry windows: a window reports percentiles, not samples, so the
p95 of a set of windows is estimated as the request-weighted median of their p95s — robust
to one noisy window, and the same estimator on both sides of every comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cloud.rollout.policy import FieldGate, OfflinePolicy, ResolvedCohort, ShadowGate

__all__ = [
    "Decision",
    "DeviceProgress",
    "ShadowWindow",
    "TelemetryWindow",
    "Verdict",
    "field_gate",
    "install_gate",
    "shadow_gate",
    "weighted_median",
]


class Verdict(StrEnum):
    """A gate's answer."""

    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"


class DeviceProgress(StrEnum):
    """Where one device of a rollout is."""

    PENDING = "pending"  # not sent yet
    SENT = "sent"  # manifest sent, no outcome yet
    SHADOWING = "shadowing"  # holds the candidate in shadow (purpose=shadow reached)
    COMMITTED = "committed"  # serves the target: never sent again
    FAILED = "failed"  # refused or reverted in probation
    TIMEOUT = "timeout"  # no outcome within the per-device timeout
    SKIPPED = "skipped"  # timed out under offline=skip
    ROLLED_BACK = "rolled_back"  # a signed rollback command was answered
    ROLLBACK_FAILED = "rollback_failed"  # the rollback was refused or not answered
    DROPPED = "dropped"  # held the candidate in shadow; it is dropped (drop_candidate answered)
    DROP_FAILED = "drop_failed"  # drop_candidate refused or not answered: may still hold it


@dataclass(frozen=True)
class Decision:
    """A gate's decision with the evidence it rests on."""

    gate: str
    verdict: Verdict
    reason: str
    values: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the event timeline stores this)."""
        return {
            "gate": self.gate,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "values": dict(self.values),
            "thresholds": dict(self.thresholds),
            "samples": dict(self.samples),
        }


@dataclass(frozen=True)
class TelemetryWindow:
    """One telemetry window of a device (from the ``telemetry`` table)."""

    device_id: str
    at: float
    requests: int
    errors: int
    p95_ms: float
    latency_count: int


@dataclass(frozen=True)
class ShadowWindow:
    """One shadow report of a device (from the ``shadow_reports`` table)."""

    device_id: str
    at: float
    samples: int
    agreement: float | None
    mean_abs_diff: float | None
    candidate_p95_ms: float
    serving_p95_ms: float
    errors: int
    timeouts: int


def weighted_median(pairs: list[tuple[float, int]]) -> float | None:
    """The median of values weighted by counts (None when the weights sum to zero)."""
    items = sorted((v, w) for v, w in pairs if w > 0)
    total = sum(w for _, w in items)
    if total == 0:
        return None
    half, seen = total / 2.0, 0
    for value, weight in items:
        seen += weight
        if seen >= half:
            return value
    return items[-1][0]  # pragma: no cover - the loop always returns


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def install_gate(
    progress: dict[str, DeviceProgress], cohort: ResolvedCohort, offline: OfflinePolicy
) -> Decision:
    """Install + probation outcomes of one cohort against its thresholds.

    Failed devices (and timed-out ones under ``offline=fail``) count toward the failure
    rate; skipped devices are left out of both rates. Abort as soon as the failure rate
    reaches the threshold (even while others are still installing); pass once nobody is
    pending and the success rate reaches its threshold; anything else with nobody pending
    cannot advance and fails.
    """
    counts = {str(p): 0 for p in DeviceProgress}
    for state in progress.values():
        counts[str(state)] += 1
    committed = counts["committed"]
    failed = counts["failed"] + (counts["timeout"] if offline is OfflinePolicy.FAIL else 0)
    skipped = counts["skipped"] + (counts["timeout"] if offline is OfflinePolicy.SKIP else 0)
    pending = counts["pending"] + counts["sent"] + counts["shadowing"]
    counted = len(progress) - skipped
    fail_rate = failed / counted if counted else 0.0
    success_rate = committed / counted if counted else 0.0
    thresholds = {
        "success_threshold": cohort.success_threshold,
        "failure_threshold": cohort.failure_threshold,
        "offline": str(offline),
    }
    values = {"success_rate": _round(success_rate), "failure_rate": _round(fail_rate)}
    samples = {
        "devices": len(progress),
        "committed": committed,
        "failed": failed,
        "skipped": skipped,
        "pending": pending,
    }

    def decide(verdict: Verdict, reason: str) -> Decision:
        return Decision("install", verdict, reason, values, thresholds, samples)

    if failed and fail_rate >= cohort.failure_threshold:
        return decide(Verdict.FAIL, "failure_threshold_reached")
    if pending:
        return decide(Verdict.WAIT, "devices_pending")
    if counted == 0:
        return decide(Verdict.FAIL, "no_device_answered")
    if success_rate >= cohort.success_threshold:
        return decide(Verdict.PASS, "success_threshold_reached")
    return decide(Verdict.FAIL, "below_success_threshold")


def shadow_gate(windows: list[ShadowWindow], gate: ShadowGate) -> Decision:
    """Shadow evidence of a cohort: agreement, candidate vs serving p95 on the same
    requests, candidate error rate; ``wait`` below ``min_samples``."""
    samples = sum(w.samples for w in windows)
    errors = sum(w.errors + w.timeouts for w in windows)
    attempts = samples + errors
    classified = [(w.agreement, w.samples) for w in windows if w.agreement is not None]
    regressed = [(w.mean_abs_diff, w.samples) for w in windows if w.mean_abs_diff is not None]
    agreement = (
        sum(a * n for a, n in classified) / sum(n for _, n in classified)
        if classified and sum(n for _, n in classified)
        else None
    )
    mad = (
        sum(d * n for d, n in regressed) / sum(n for _, n in regressed)
        if regressed and sum(n for _, n in regressed)
        else None
    )
    cand = weighted_median([(w.candidate_p95_ms, w.samples) for w in windows])
    serv = weighted_median([(w.serving_p95_ms, w.samples) for w in windows])
    ratio = cand / serv if cand is not None and serv else None
    error_rate = errors / attempts if attempts else 0.0
    values = {
        "agreement": _round(agreement),
        "mean_abs_diff": _round(mad),
        "candidate_p95_ms": _round(cand),
        "serving_p95_ms": _round(serv),
        "latency_ratio": _round(ratio),
        "error_rate": _round(error_rate),
    }
    thresholds = {
        "min_agreement": gate.min_agreement,
        "max_mean_abs_diff": gate.max_mean_abs_diff,
        "max_latency_factor": gate.max_latency_factor,
        "max_error_rate": gate.max_error_rate,
        "min_samples": gate.min_samples,
    }
    counts = {
        "samples": samples,
        "errors": errors,
        "windows": len(windows),
        "devices": len({w.device_id for w in windows}),
    }

    def decide(verdict: Verdict, reason: str) -> Decision:
        return Decision("shadow", verdict, reason, values, thresholds, counts)

    if attempts and samples == 0 and errors >= gate.min_samples:
        return decide(Verdict.FAIL, "candidate_errors")
    if samples < gate.min_samples:
        return decide(Verdict.WAIT, "insufficient_samples")
    if agreement is not None and agreement < gate.min_agreement:
        return decide(Verdict.FAIL, "agreement_below_threshold")
    if gate.max_mean_abs_diff is not None and mad is not None and mad > gate.max_mean_abs_diff:
        return decide(Verdict.FAIL, "output_difference_above_threshold")
    if ratio is not None and ratio > gate.max_latency_factor:
        return decide(Verdict.FAIL, "latency_above_threshold")
    if error_rate > gate.max_error_rate:
        return decide(Verdict.FAIL, "error_rate_above_threshold")
    return decide(Verdict.PASS, "within_thresholds")


def _summary(windows: list[TelemetryWindow]) -> tuple[int, int, float | None]:
    requests = sum(w.requests for w in windows)
    errors = sum(w.errors for w in windows)
    p95 = weighted_median([(w.p95_ms, w.latency_count) for w in windows])
    return requests, errors, p95


def field_gate(
    before: list[TelemetryWindow], after: list[TelemetryWindow], gate: FieldGate
) -> Decision:
    """A cohort's telemetry after install against the same devices' windows before the
    rollout: error rate ≤ before + margin, p95 ≤ factor × before; ``wait`` while either
    side has fewer than ``min_requests`` requests."""
    req_b, err_b, p95_b = _summary(before)
    req_a, err_a, p95_a = _summary(after)
    rate_b = err_b / req_b if req_b else None
    rate_a = err_a / req_a if req_a else None
    ratio = p95_a / p95_b if p95_a is not None and p95_b else None
    values = {
        "error_rate_before": _round(rate_b),
        "error_rate_after": _round(rate_a),
        "p95_ms_before": _round(p95_b),
        "p95_ms_after": _round(p95_a),
        "latency_ratio": _round(ratio),
    }
    thresholds = {
        "error_margin": gate.error_margin,
        "max_latency_factor": gate.max_latency_factor,
        "min_requests": gate.min_requests,
    }
    samples = {
        "requests_before": req_b,
        "requests_after": req_a,
        "windows_before": len(before),
        "windows_after": len(after),
    }

    def decide(verdict: Verdict, reason: str) -> Decision:
        return Decision("field", verdict, reason, values, thresholds, samples)

    if req_b < gate.min_requests:
        return decide(Verdict.WAIT, "insufficient_baseline")
    if req_a < gate.min_requests:
        return decide(Verdict.WAIT, "insufficient_samples")
    assert rate_a is not None and rate_b is not None  # both sides have requests
    if rate_a > rate_b + gate.error_margin:
        return decide(Verdict.FAIL, "error_rate_above_threshold")
    if ratio is not None and ratio > gate.max_latency_factor:
        return decide(Verdict.FAIL, "latency_above_threshold")
    return decide(Verdict.PASS, "within_thresholds")

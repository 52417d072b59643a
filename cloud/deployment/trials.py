"""Trials before a choice (``docs/protocol.md`` §15, rule C5): time the unmeasured variants.

:func:`cloud.deployment.measured.trial_queue` says which devices time which variants
(from what their hardware class has measured); :func:`run_trials` sends the trials.

Given, per device, the variants it should time, the devices are sent ``trial`` manifests in
rounds: in round *r* every device gets its *r*-th variant (one retained manifest topic per
device, so a device times one variant at a time); devices sent the same variant share one
release. A round ends when each of its devices has a timing of its trial artifact in its
status (``variants``), has refused it, or ``timeout_s`` passed. A device that refuses with
``trial_not_supported`` or times out is sent no further trials (it falls back to the
static preference, recorded); a variant that *fails* there (``model_load_failed``…) is
``trial_failed`` for the device's class and never sent to it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cloud.deployment.evidence import Attribution, DeviceStatus
from cloud.deployment.link import CoordinatorTransport
from cloud.deployment.release import Plan
from cloud.deployment.report import DeviceResult, Outcome, PublishReport
from cloud.deployment.session import PublishSession
from cloud.deployment.variants import Variant

__all__ = ["TrialResult", "run_trials"]

logger = logging.getLogger(__name__)

#: Refusals that say "this device cannot run trials", not "this variant fails here".
NOT_A_VARIANT_FAILURE = frozenset({"trial_not_supported", "replay", "older_than_installed"})


@dataclass
class TrialResult:
    """What the trials did, per device.

    Attributes:
        timed: Precisions each device timed.
        failed: Precision → refusal code, per device (the variant cannot run there).
        refused: Devices that cannot run trials at all, with the code.
        timed_out: Precisions each device did not answer for in time.
    """

    timed: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    timed_out: dict[str, list[str]] = field(default_factory=dict)

    @property
    def devices(self) -> set[str]:
        """Every device that was sent a trial."""
        return {*self.timed, *self.failed, *self.refused, *self.timed_out}

    def summary(self, device_id: str) -> dict[str, object]:
        """JSON-ready trial outcome of one device (for the publish report)."""
        return {
            "timed": list(self.timed.get(device_id, [])),
            "failed": dict(self.failed.get(device_id, {})),
            "refused": self.refused.get(device_id),
            "timed_out": list(self.timed_out.get(device_id, [])),
        }


def _single(
    make_plan: Callable[[Variant, list[str]], Plan], batch: dict[str, Variant], device_id: str
) -> Plan:
    """O3 for a trial: one device's full plan (trials are never deltas; kept for safety)."""
    return make_plan(batch[device_id], [device_id])


def run_trials(
    transport: CoordinatorTransport,
    attribution: Attribution,
    queue: Mapping[str, Sequence[Variant]],
    *,
    make_plan: Callable[[Variant, list[str]], Plan],
    timeout_s: float,
    observe: Callable[[DeviceStatus], None],
) -> TrialResult:
    """Send every device its queued trials, round by round; see the module docstring.

    Args:
        transport: The coordinator's broker connection (shared with the publish).
        attribution: The publish's status attribution (drop counters cover trials too).
        queue: Device id → variants to time, in order.
        make_plan: Builds the signed ``trial`` plan of one variant for some devices.
        timeout_s: Longest wait of one round.
        observe: Receives every attributed status (records its timings).
    """
    result = TrialResult()
    pending = {d: list(v) for d, v in queue.items() if v}
    while pending:
        batch = {d: variants.pop(0) for d, variants in pending.items()}
        pending = {d: v for d, v in pending.items() if v}
        by_variant: dict[Variant, list[str]] = {}
        for device_id, variant in sorted(batch.items()):
            by_variant.setdefault(variant, []).append(device_id)
        plans = [make_plan(v, members) for v, members in by_variant.items()]
        report = PublishReport("trial", "", {d: DeviceResult(d) for d in batch})
        PublishSession(
            transport,
            plans,
            report,
            attribution=attribution,
            full_plan=functools.partial(_single, make_plan, dict(batch)),
            observe=observe,
        ).wait(timeout_s)
        for device_id, outcome in report.devices.items():
            precision = batch[device_id].precision
            if outcome.outcome is Outcome.COMMITTED:
                result.timed.setdefault(device_id, []).append(precision)
                continue
            if outcome.outcome is Outcome.TIMEOUT:
                logger.warning("%s: trial of %s timed out", device_id, precision)
                result.timed_out.setdefault(device_id, []).append(precision)
            elif outcome.reason in NOT_A_VARIANT_FAILURE:
                result.refused[device_id] = outcome.reason or "refused"
            else:
                logger.warning("%s: %s fails there (%s)", device_id, precision, outcome.reason)
                result.failed.setdefault(device_id, {})[precision] = outcome.reason or "failed"
                continue  # the device answers: its other variants are still worth timing
            pending.pop(device_id, None)  # unresponsive or unable: no more trials
    return result

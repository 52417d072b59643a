"""The publisher's variant bookkeeping (``docs/protocol.md`` §15): timings in, choices out.

:class:`Measurements` records the timings a target's status carries under the hardware
class of its *enrollment record* (never the payload's) and reads a class's medians back;
:func:`choice_for` applies C1-C4 with the class's medians and the trials' failures;
:func:`trial_queue` (C5) says which devices time which variants before a choice: every
eligible variant their class has not measured, on a bounded sample of the class (an explicit
``trial`` publish asks every device, everything); a device that will not install the
version anyway (Q1 served, Q2 below its floor) is not asked. Both
treat the database as advisory: a failure to read or write measurements is logged and the
publish falls back to the static preference, it never stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from cloud.deployment.discovery import already_served, below_floor
from cloud.deployment.evidence import DeviceStatus
from cloud.deployment.report import Outcome, PublishReport
from cloud.deployment.trials import TrialResult
from cloud.deployment.variants import (
    Choice,
    Limits,
    Variant,
    choose,
    class_medians,
    needs_trial,
    sample,
)
from cloud.fleet.store import FleetStore
from cloud.keys import DeviceRecord
from cloud.registry.registry import ArtifactInfo, VersionInfo
from shared.artifacts import Purpose
from shared.errors import FedgeError

__all__ = ["Measurements", "choice_for", "limits", "trial_outcomes", "trial_queue"]

logger = logging.getLogger(__name__)


def limits(heard: DeviceStatus | None, failed: frozenset[str] = frozenset()) -> Limits:
    """What the device takes, as its status advertises it (nothing advertised: no limit)."""
    status = heard.status if heard is not None else None
    if status is None:
        return Limits(failed=failed)
    return Limits(
        accepts=frozenset(str(p) for p in status.accepts) if status.accepts is not None else None,
        max_model_bytes=status.max_model_bytes,
        pin=str(status.pin_precision) if status.pin_precision is not None else None,
        failed=failed,
    )


class Measurements:
    """Variant timings of one publish's targets, kept in the fleet database.

    Args:
        fleet: Opens the fleet store (called on first use).
        records: The targets' enrollment records (their ``hardware_id`` is the class).
        clock: Wall clock for ``measured_at``.
    """

    def __init__(
        self,
        fleet: Callable[[], FleetStore],
        records: Mapping[str, DeviceRecord],
        clock: Callable[[], float],
    ) -> None:
        self._fleet, self._records, self._clock = fleet, records, clock
        self.sizes: dict[str, int] = {}  # trial artifact id -> variant file size
        # One query per class and version per publish (a fleet has few classes, many
        # devices); a recorded timing invalidates its class.
        self._cache: dict[tuple[str, str, int], dict[str, float]] = {}

    def record(self, status: DeviceStatus) -> None:
        """Store the timings a target's status carries, under its enrolled hardware class."""
        record = self._records.get(status.device_id)
        variants = status.status.variants
        if record is None or variants is None or not variants.timings:
            return
        self._cache = {k: v for k, v in self._cache.items() if k[0] != record.hardware_id}
        try:
            self._fleet().record_variant_timings(
                status.device_id,
                hardware_id=record.hardware_id,  # the enrollment record, never the payload
                timings=variants.timings,
                cpu_features=variants.cpu_features,
                sizes=self.sizes,
                now=self._clock(),
            )
        except FedgeError as exc:  # measurements are advisory: the publish goes on
            logger.warning("cannot record variant timings of %s: %s", status.device_id, exc)

    def medians(self, hardware_id: str, model_id: str, version: int) -> dict[str, float]:
        """Precision → class median for one model version (empty if unreadable)."""
        key = (hardware_id, model_id, version)
        if key not in self._cache:
            try:
                rows = self._fleet().variant_measurements(hardware_id, model_id, version)
            except FedgeError as exc:
                logger.warning("cannot read variant measurements: %s", exc)
                return {}
            self._cache[key] = class_medians((m.device_id, m.precision, m.median_us) for m in rows)
        return dict(self._cache[key])


def choice_for(
    variants: list[Variant],
    record: DeviceRecord,
    records: Mapping[str, DeviceRecord],
    heard: DeviceStatus | None,
    trials: TrialResult,
    medians: Mapping[str, float],
) -> Choice:
    """Q3 for one device: C1-C4 with its class's medians and its class's trial failures.

    A class whose sampled devices produced no timing at all is noted (``trial_timeout`` or
    the devices' refusal, e.g. ``trial_not_supported``): it falls back to C4, logged.
    """
    members = [d for d, r in records.items() if r.hardware_id == record.hardware_id]
    failed = frozenset(p for d in members for p in trials.failed.get(d, {}))
    note = None
    sampled = [d for d in members if d in trials.devices]
    if sampled and not any(trials.timed.get(d) for d in sampled):
        reasons = {trials.refused.get(d, "trial_timeout") for d in sampled}
        note = reasons.pop() if len(reasons) == 1 else "trial_timeout"
    choice = choose(variants, limits(heard, failed), medians, note=note)
    if note is not None and choice.variant is not None:
        logger.warning(
            "%s: no timings for its class (%s); static preference %s",
            record.device_id,
            note,
            choice.variant.precision,
        )
    return choice


def trial_outcomes(report: PublishReport, trials: TrialResult) -> None:
    """Outcomes of an explicit ``trial`` publish: every queued timing in, or why not."""
    for device_id, result in report.devices.items():
        if device_id in trials.refused:
            result.outcome, result.reason = Outcome.FAILED, trials.refused[device_id]
        elif trials.timed_out.get(device_id):
            result.outcome = Outcome.TIMEOUT
        elif device_id in trials.timed or device_id in trials.failed:
            result.outcome = Outcome.COMMITTED
        else:
            result.outcome, result.reason = Outcome.FAILED, "nothing_to_trial"


def trial_queue(
    info: VersionInfo,
    approved: Sequence[ArtifactInfo],
    heard: Mapping[str, DeviceStatus],
    purpose: Purpose,
    *,
    records: Mapping[str, DeviceRecord],
    book: Measurements,
    sample_size: int,
) -> dict[str, list[Variant]]:
    """C5: device id → the variants it should time, in order (empty: no trials).

    Args:
        info: The version published.
        approved: Its approved TFLite artifacts (the variant set).
        heard: What discovery heard from each target.
        purpose: The publish's purpose; ``trial`` times every eligible variant on every
            device, whatever is measured.
        records: The targets' enrollment records (their ``hardware_id`` is the class).
        book: The class medians measured so far.
        sample_size: Devices per hardware class that time the unmeasured variants.
    """
    variants = [Variant(a.precision, a.sha256, a.bytes) for a in approved]
    classes: dict[str, list[str]] = {}
    queue_: dict[str, list[Variant]] = {}
    for device_id, record in records.items():
        status = heard.get(device_id)
        if below_floor(info.number, status) is not None or already_served(
            info, approved, status, purpose
        ):
            continue  # Q1/Q2: it will not install this version anyway
        medians = (
            {}
            if purpose is Purpose.TRIAL
            else book.medians(record.hardware_id, info.model, info.number)
        )
        wanted = needs_trial(variants, limits(status), medians)
        if wanted:
            queue_[device_id] = wanted
            classes.setdefault(record.hardware_id, []).append(device_id)
    if purpose is not Purpose.TRIAL:  # an explicit trial asks every device
        chosen = {d for ids in classes.values() for d in sample(ids, sample_size)}
        queue_ = {d: v for d, v in queue_.items() if d in chosen}
    return queue_

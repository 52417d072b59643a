"""The device's retained status message, built in one place for every host of an updater.

``docs/protocol.md`` §9: a status names exactly what the device serves (``serving``: model
id, version, artifact id, sha256, precision, slot), its anti-rollback floor and what its
profile accepts, so the coordinator never has to guess a commit from a version string.
§15: it also names the shadow candidate held beside the serving model (``candidate``) and
the timings of the variants the device tried (``variants``, with its CPU features).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from functools import cache

from edge.updater.state import UpdaterState
from shared.precision import Precision
from shared.protocol.messages import (
    DeviceState,
    ServingInfo,
    StatusMessage,
    UpdateInfo,
    VariantReport,
    VariantTiming,
)

__all__ = ["build_status", "candidate_info", "serving_info", "variant_report"]

logger = logging.getLogger(__name__)

_FEATURE = re.compile(r"^[a-z0-9_]{1,32}$")  # the wire's CpuFeature


def _clean(features: Iterable[str]) -> tuple[str, ...]:
    """Lowercase, sorted, unique flags the wire accepts (others are dropped, not fatal)."""
    return tuple(sorted({f.lower() for f in features if _FEATURE.match(f.lower())}))[:64]


@cache
def _detected_cpu_features() -> tuple[str, ...]:
    """This CPU's kernel-relevant feature flags, via the inference package when it has them.

    Imported lazily so the status can be built on a host whose inference package lacks the
    probe; the flags are informational (the coordinator's class is the ``hardware_id``).
    """
    try:
        from edge.inference.cpu import cpu_features
    except ImportError:
        return ()
    try:
        return _clean(cpu_features())
    except Exception:  # a probe failure must not stop the status
        logger.exception("cpu feature probe failed")
        return ()


def candidate_info(state: UpdaterState | None) -> ServingInfo | None:
    """The shadow candidate held in the inactive slot (§15), or None."""
    held = state.candidate if state is not None else None
    if held is None:
        return None
    record = held.record
    if record.artifact_id is None or record.precision is None:  # never so for a candidate
        return None
    return ServingInfo(
        model_id=record.model_id,
        version=record.version,
        artifact_id=record.artifact_id,
        sha256=record.sha256,
        precision=Precision(record.precision),
        slot=held.slot.value,
    )


def variant_report(
    hardware_id: str,
    timings: Sequence[VariantTiming],
    cpu_features: Iterable[str] | None = None,
) -> VariantReport | None:
    """The ``variants`` of a status: the device's timings with its hardware (None if none).

    ``cpu_features`` defaults to what this CPU reports (``edge.inference.cpu``).
    """
    if not timings:
        return None
    features = _detected_cpu_features() if cpu_features is None else _clean(cpu_features)
    return VariantReport(hardware_id=hardware_id, cpu_features=features, timings=tuple(timings))


def serving_info(state: UpdaterState | None) -> ServingInfo | None:
    """What the committed active slot holds, or None (nothing installed by the updater).

    A slot record written by an older agent may lack its artifact id or precision: such a
    device cannot name its artifact exactly, so it claims nothing (the coordinator then
    treats it as serving an unknown model and sends the full artifact).
    """
    if state is None or state.active is None:
        return None
    record = state.active_record
    if record is None or record.artifact_id is None or record.precision is None:
        return None
    return ServingInfo(
        model_id=record.model_id,
        version=record.version,
        artifact_id=record.artifact_id,
        sha256=record.sha256,
        precision=Precision(record.precision),
        slot=state.active.value,
    )


def build_status(
    *,
    device_id: str,
    hardware_id: str,
    state: DeviceState,
    sent_at: float,
    updater_state: UpdaterState | None = None,
    precisions: Iterable[str] | None = None,
    max_model_bytes: int | None = None,
    model_label: str | None = None,
    update: UpdateInfo | None = None,
    last_error: str | None = None,
    timings: Sequence[VariantTiming] = (),
    cpu_features: Iterable[str] | None = None,
    pin_precision: str | None = None,
) -> StatusMessage:
    """The status message of one device.

    Args:
        device_id, hardware_id: This device (the topic names the same id).
        state: Lifecycle state.
        sent_at: Unix seconds.
        updater_state: The updater's committed state (None without an updater).
        precisions, max_model_bytes: The profile's limits (rules P1, P2), advertised so a
            coordinator can refuse an artifact up front instead of sending it.
        model_label: Label of the model serving, when it was not installed by the updater.
        update: The updater's latest outcome, when this status announces one.
        last_error: Short description of the last error.
        timings: The updater's variant timings (``Updater.timings``), reported as
            ``variants`` with ``cpu_features`` (default: detected on this CPU).
        pin_precision: The profile's pinned precision (§15), advertised like ``accepts``.
    """
    serving = serving_info(updater_state)
    active = updater_state.active if updater_state is not None else None
    return StatusMessage(
        device_id=device_id,
        sent_at=sent_at,
        state=state,
        model_version=str(serving.version) if serving is not None else model_label,
        slot=active.value if active is not None else None,
        hardware_id=hardware_id,
        last_error=last_error,
        update=update,
        serving=serving,
        floor=updater_state.floor if updater_state is not None else None,
        accepts=tuple(Precision(p) for p in precisions) if precisions is not None else None,
        max_model_bytes=max_model_bytes,
        candidate=candidate_info(updater_state),
        variants=variant_report(hardware_id, timings, cpu_features),
        pin_precision=Precision(pin_precision) if pin_precision is not None else None,
    )

"""Quantize a registry version: float32 reference, then int8 → dynamic-int8 → float16 → float32.

Every artifact is evaluated in LiteRT on the version's held-out split. An artifact whose
accuracy drop against the float torch model exceeds the budget is stored as ``rejected`` —
kept for the record, never deployable. Every precision of the chain is tried and every one
within the budget is kept as ``approved``: devices accept different precisions (their
profiles' ``precisions``), and the publisher sends each device the smallest approved
artifact it accepts (``docs/protocol.md`` Q3). ``selected`` is the first approved one in
the order int8, dynamic-int8, float16, float32;
:func:`profile_coverage` says which profiles no approved artifact serves. The reasons
steps failed or were rejected are kept in the version's metrics. All artifacts of one run
are committed together, or none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from cloud.data import split_from_record
from cloud.quantization import sequence as seq
from cloud.quantization.convert import (
    FALLBACK_CHAIN,
    export_float_tflite,
    input_layout,
    model_input_shape,
    quantize_tflite,
    to_layout,
)
from cloud.quantization.litert_eval import evaluate_tflite
from cloud.quantization.quiet import native_output_captured
from cloud.registry import ArtifactStatus, Registry
from cloud.registry.registry import NewArtifact
from cloud.training import ModelSpec, evaluate_torch
from cloud.training.sequence_models import SEQUENCE_ARCHS
from cloud.training.serialize import model_from_bytes
from shared.artifacts.compression import compress
from shared.errors import QuantizationError, RegistryError
from shared.precision import Precision, precision_rank

log = logging.getLogger(__name__)

#: Called with a short description of the step being started.
StepCallback = Callable[[str], None]


@dataclass(frozen=True)
class Attempt:
    """One step of the fallback chain."""

    precision: str
    outcome: Literal["approved", "rejected", "failed"]
    reason: str | None = None
    accuracy: float | None = None


@dataclass
class QuantizationReport:
    """Result of :func:`quantize_version`."""

    version: str
    float_accuracy: float
    max_drop: float
    selected: str | None
    attempts: list[Attempt] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    #: The artifacts' input layout (:class:`~cloud.quantization.convert.InputLayout`).
    input_layout: str = "as-trained"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["attempts"] = [asdict(a) for a in self.attempts]
        return out


def profile_coverage(
    report: QuantizationReport, profiles: dict[str, list[str]]
) -> dict[str, str | None]:
    """For each profile (name → accepted precisions), the preferred approved artifact it
    accepts, or None when no approved artifact can ever be sent to devices of that profile."""
    approved = {a["precision"] for a in report.artifacts if a["status"] == "approved"}
    out: dict[str, str | None] = {}
    for name, accepted in sorted(profiles.items()):
        fits = [p for p in accepted if p in approved]
        out[name] = min(fits, key=precision_rank) if fits else None
    return out


def _parent_channels_last(registry: Registry, parent: str | None) -> bool:
    """Whether the parent's TFLite artifacts are channels-last (True without any)."""
    if parent is None:
        return True
    layouts = {
        # Artifacts from before layouts were recorded were converted in torch's NCHW.
        a.metrics.get("input_layout", "NCHW")
        for a in registry.get_version(parent).artifacts
        if a.format == "tflite"
    }
    return "NCHW" not in layouts


def quantize_version(
    registry: Registry,
    ref: str,
    *,
    max_drop: float = 1.0,
    calibration_samples: int = 256,
    on_step: StepCallback | None = None,
    channels_last: bool | None = None,
) -> QuantizationReport:
    """Convert and quantize version ``ref``; store every produced artifact with its metrics.

    Args:
        registry: Where the version lives and the artifacts go.
        ref: ``MODEL@N`` or ``MODEL`` (latest).
        max_drop: Accuracy budget, in percentage points below the float torch model.
        calibration_samples: Training samples used to calibrate int8 activations.
        on_step: Progress callback.
        channels_last: Image models take NHWC input (no TRANSPOSE at the graph's input);
            False keeps torch's NCHW. None (the default): the parent version's layout, so
            an update never changes the input shape local callers send; NHWC for a
            version without a quantized parent. Recorded in every artifact's metrics.

    Raises:
        QuantizationError: no precision at all could be produced.
        RegistryError: the version has TFLite artifacts already.
    """
    step = on_step or (lambda _msg: None)
    version = registry.get_version(ref)
    if any(a.format == "tflite" for a in version.artifacts):
        raise RegistryError(f"{version.ref} is quantized already; see `fedge models show`")
    spec = ModelSpec.from_dict(version.spec)
    model = model_from_bytes(spec, registry.read_artifact(version.artifact("torch", "fp32")))
    split = split_from_record(version.data)
    float_acc, _ = evaluate_torch(model, split.test_x, split.test_y)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(split.train_x), min(calibration_samples, len(split.train_x)), False)
    if channels_last is None:
        channels_last = _parent_channels_last(registry, version.parent)
    layout = input_layout(spec.input_shape, channels_last=channels_last)
    # Calibration and evaluation data go in as the device will be sent them.
    calibration = to_layout(split.train_x[np.sort(pick)], layout)
    test_x = to_layout(split.test_x, layout)
    io_metrics = {
        "input_layout": str(layout),
        "input_shape": list(model_input_shape(spec.input_shape, layout)),
    }

    step(f"convert to float32 TFLite ({layout} input)")
    with native_output_captured():
        float_model = export_float_tflite(model, spec.input_shape, layout=layout)
    # Sequence models get their own edge forms, each evaluated in LiteRT (quantization/sequence.py).
    is_sequence = spec.arch in SEQUENCE_ARCHS
    forms: list[dict[str, Any]] = []
    # The quantizer needs tensor names; the shipped sequence files have them stripped.
    float_artifact = seq.strip_tensor_names(float_model) if is_sequence else float_model
    report = QuantizationReport(
        version.ref, float_acc, max_drop, selected=None, input_layout=str(layout)
    )
    new: list[NewArtifact] = []

    def judge(precision: Precision, data: bytes) -> bool:
        step(f"evaluate {precision} in LiteRT")
        evaluation = evaluate_tflite(data, test_x, split.test_y)
        drop = (float_acc - evaluation.accuracy) * 100.0
        ok = drop <= max_drop
        reason = None if ok else f"accuracy drop {drop:.2f} points exceeds budget {max_drop:.2f}"
        metrics = {
            **evaluation.to_dict(),
            "accuracy_drop_points": round(drop, 4),
            # What an over-the-air update pays: the delivery plane's zstd of the file.
            "wire_bytes": len(compress(data)),
            **io_metrics,
        }
        status = ArtifactStatus.APPROVED if ok else ArtifactStatus.REJECTED
        new.append(NewArtifact("tflite", str(precision), data, status, reason, metrics))
        report.attempts.append(
            Attempt(str(precision), "approved" if ok else "rejected", reason, evaluation.accuracy)
        )
        log.info(
            "%s %s: accuracy %.4f (%s)",
            version.ref,
            precision,
            evaluation.accuracy,
            "approved" if ok else reason,
        )
        return ok

    approved: dict[str, int] = {}
    if judge(Precision.FLOAT32, float_artifact):
        approved[str(Precision.FLOAT32)] = len(float_artifact)
    for precision in FALLBACK_CHAIN:
        if precision is Precision.FLOAT32:
            continue  # judged above, as the reference every other precision is held to
        step(f"quantize to {precision}")
        try:
            if is_sequence:
                best, tried = seq.best_form(
                    float_model,
                    precision,
                    calibration,
                    test_x,
                    split.test_y,
                    min_accuracy=float_acc - max_drop / 100.0,
                )
                forms.extend(r.to_dict() for r in tried)
                if best is None:
                    raise QuantizationError(f"every {precision} form failed: {tried}")
                data = best
            else:
                with native_output_captured():
                    data = quantize_tflite(float_model, precision, calibration)
        except QuantizationError as exc:
            report.attempts.append(Attempt(str(precision), "failed", str(exc)))
            log.warning("%s: %s", version.ref, exc)
            continue
        if judge(precision, data):
            approved[str(precision)] = len(data)
    # The preferred precision (Precision's order: full int8 first) among the approved ones,
    # as the chain always chose; the publisher may still send another approved one (Q3).
    report.selected = min(approved, key=precision_rank) if approved else None
    if is_sequence:  # full int8 can be larger or slower than float here: measured choice
        report.selected = seq.choose_variant(
            [
                (
                    a.precision,
                    a.status is ArtifactStatus.APPROVED,
                    len(a.data),
                    float(a.metrics["latency_median_ms"]),
                )
                for a in new
            ]
        )

    summary = {
        "quantization": {
            "float_accuracy": float_acc,
            "max_drop": max_drop,
            "selected": report.selected,
            **io_metrics,
            "attempts": [asdict(a) for a in report.attempts],
            **({"sequence_forms": forms} if is_sequence else {}),
        }
    }
    stored = registry.add_artifacts(version.ref, new, metrics=summary)
    report.artifacts = [a.to_dict() for a in stored.artifacts if a.format == "tflite"]
    return report

"""Real conversion with litert-torch, real int8 quantization, real evaluation in LiteRT."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.data import split_from_record
from cloud.quantization import LiteRTRunner, quantize_version
from cloud.quantization.convert import quantize_tflite, to_layout
from shared.errors import NotDeployableError, QuantizationError, RegistryError
from shared.precision import Precision


def test_int8_artifact_is_full_integer_and_accurate(quantized_digits) -> None:  # type: ignore[no-untyped-def]
    reg, version, report = quantized_digits
    assert report.selected == "int8"
    int8 = version.artifact("tflite", "int8")
    fp32 = version.artifact("tflite", "float32")
    assert int8.status == "approved"
    assert int8.metrics["input_dtype"] == "int8"
    assert int8.bytes < fp32.bytes
    drop = report.float_accuracy - int8.metrics["accuracy"]
    assert drop * 100 <= 1.0
    # The stored file really runs in LiteRT with int8 tensors and agrees with its metrics.
    runner = LiteRTRunner(reg.read_artifact(int8))
    assert np.dtype(runner.input["dtype"]) == np.int8
    assert np.dtype(runner.output["dtype"]) == np.int8
    split = split_from_record(version.data)
    # Sent the way the recorded layout says (NHWC by default for images).
    test_x = to_layout(split.test_x, int8.metrics["input_layout"])
    preds = [int(np.argmax(runner.predict(test_x[i : i + 1]))) for i in range(len(split.test_y))]
    assert np.mean(np.array(preds) == split.test_y) == pytest.approx(int8.metrics["accuracy"])
    assert "FULLY_CONNECTED" in int8.metrics["ops"] or "DELEGATE" in int8.metrics["ops"]
    assert reg.deployable_artifact(version.ref).precision == "int8"


def test_report_lists_every_artifact(quantized_digits) -> None:  # type: ignore[no-untyped-def]
    _, version, report = quantized_digits
    stored = {a.sha256 for a in version.artifacts if a.format == "tflite"}
    assert {a["sha256"] for a in report.artifacts} == stored
    assert version.metrics["quantization"]["selected"] == "int8"


def test_quantizing_twice_is_refused(quantized_digits) -> None:  # type: ignore[no-untyped-def]
    reg, version, _ = quantized_digits
    with pytest.raises(RegistryError, match="quantized already"):
        quantize_version(reg, version.ref)


def test_over_budget_artifacts_are_rejected_and_never_deployable(trained_digits) -> None:  # type: ignore[no-untyped-def]
    reg, version = trained_digits
    # A fresh version with the same weights, so the session's quantized one stays intact.
    from cloud.registry import ArtifactStatus, VersionSource
    from cloud.registry.registry import NewArtifact

    torch_art = version.artifact("torch", "fp32")
    clone = reg.create_version(
        "budget-test",
        spec=version.spec,
        source=VersionSource.IMPORTED,
        data=version.data,
        artifacts=[
            NewArtifact("torch", "fp32", reg.read_artifact(torch_art), ArtifactStatus.SOURCE)
        ],
    )
    # A budget no artifact can meet: it must beat the float model by 50 points.
    report = quantize_version(reg, clone.ref, max_drop=-50.0)
    assert report.selected is None
    outcomes = {a.precision: a.outcome for a in report.attempts}
    assert outcomes["int8"] == "rejected" and outcomes["float32"] == "rejected"
    assert all(a["status"] == "rejected" for a in report.artifacts)
    assert all("exceeds budget" in a["reason"] for a in report.artifacts)
    with pytest.raises(NotDeployableError):
        reg.deployable_artifact(clone.ref)


def test_int8_without_calibration_fails_clearly() -> None:
    with pytest.raises(QuantizationError, match="calibration"):
        quantize_tflite(b"irrelevant", Precision.INT8, None)


def test_garbage_model_bytes_fail_clearly() -> None:
    with pytest.raises(QuantizationError):
        quantize_tflite(b"\x00" * 64, Precision.DYNAMIC_INT8)

"""Sequence models through the edge pipeline, distillation lineage, device classes."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.data import split_from_record
from cloud.quantization import LiteRTRunner, quantize_version
from cloud.quantization.device_fit import plan_classes
from cloud.quantization.sequence import choose_variant, strip_tensor_names
from cloud.registry import ArtifactStatus, Registry, VersionSource
from cloud.registry.registry import NewArtifact
from cloud.training import TrainConfig
from cloud.training.distill import DistillRequest, distill_and_register, student_width
from cloud.training.models import ModelSpec
from cloud.training.workflow import TrainRequest, train_and_register
from shared.errors import ConfigError
from shared.profiles import profile_from_mapping


def _profile(name: str, max_bytes: int, ram_mb: int = 64, **extra: object):  # type: ignore[no-untyped-def]
    return profile_from_mapping(
        {
            "name": name,
            "device_class": "sensor",
            "hardware_id": "hw-1",
            "inference_threads": 1,
            "ram_mb": ram_mb,
            "storage_mb": 16,
            "max_model_bytes": max_bytes,
            "precisions": ["int8", "dynamic-int8", "float32"],
            "telemetry_interval_s": 10.0,
            **extra,
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gru", "lstm", "transformer"])
def test_sequence_family_trains_converts_and_runs_in_litert(arch: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "artifacts")
    try:
        request = TrainRequest(
            data="aeon:ItalyPowerDemand",
            arch=arch,
            width=16,
            config=TrainConfig(epochs=2, batch_size=64, learning_rate=3e-3),
        )
        version = train_and_register(reg, request)
        assert version.metrics["input_reading"].startswith("sequence (T, F) = 24x1")
        # Few calibration samples: static int8 calibration of an unrolled graph is slow.
        report = quantize_version(reg, version.ref, calibration_samples=24)
        version = reg.get_version(version.ref)
        fp32 = version.artifact("tflite", "float32")
        assert fp32.status == "approved"
        forms = version.metrics["quantization"]["sequence_forms"]
        assert {f["form"] for f in forms} >= {"static-int8", "dynamic-int8", "weight-only-int8"}
        assert report.selected is not None
        # The chosen file really runs in LiteRT on (1, T, F) and matches its recorded accuracy.
        chosen = version.artifact("tflite", report.selected)
        runner = LiteRTRunner(reg.read_artifact(chosen))
        split = split_from_record(version.data)
        preds = [
            int(np.argmax(runner.predict(split.test_x[i : i + 1])))
            for i in range(len(split.test_y))
        ]
        assert np.mean(np.array(preds) == split.test_y) == pytest.approx(chosen.metrics["accuracy"])
        assert chosen.metrics["wire_bytes"] < chosen.bytes
    finally:
        reg.close()


def test_choose_variant_prefers_small_but_never_slower_than_float() -> None:
    rows = [
        ("float32", True, 300, 1.0),
        ("int8", True, 100, 3.0),  # smallest, but 3x slower: XNNPACK partitions
        ("dynamic-int8", True, 110, 0.9),
        ("float16", False, 150, 1.0),
    ]
    assert choose_variant(rows) == "dynamic-int8"
    assert choose_variant([("float32", True, 300, 1.0), ("int8", True, 100, 3.0)]) == "float32"


@pytest.mark.slow
def test_stripping_names_keeps_the_model_runnable_and_smaller(quantized_digits) -> None:  # type: ignore[no-untyped-def]
    reg, version, _ = quantized_digits
    data = reg.read_artifact(version.artifact("tflite", "float32"))
    stripped = strip_tensor_names(data)
    assert len(stripped) < len(data)
    x = np.zeros(LiteRTRunner(data).input["shape"], np.float32)
    np.testing.assert_allclose(LiteRTRunner(stripped).predict(x), LiteRTRunner(data).predict(x))


@pytest.mark.slow
def test_distillation_records_lineage(registry) -> None:  # type: ignore[no-untyped-def]
    teacher = train_and_register(
        registry, TrainRequest(data="digits", arch="cnn", width=16, config=TrainConfig(epochs=2))
    )
    student = distill_and_register(
        registry,
        DistillRequest(teacher=teacher.ref, width=4, config=TrainConfig(epochs=1), baseline=True),
    )
    assert student.parent == teacher.ref
    assert student.metrics["distilled_from"] == teacher.ref
    assert student.data == teacher.data  # the same data and split
    assert "distill_gain_points" in student.metrics
    assert isinstance(student.metrics["teacher_clearly_better"], bool)
    assert ModelSpec.from_dict(student.spec).width == 4
    assert registry.get_version(student.ref).parent == teacher.ref


def test_student_is_sized_to_the_profile_or_refused() -> None:
    teacher = ModelSpec("resnet", (1, 28, 28), 10)
    roomy = student_width("cnn", teacher, _profile("hub", 8 * 1024 * 1024, ram_mb=64))
    tight = student_width("cnn", teacher, _profile("tiny", 120 * 1024, ram_mb=16))
    assert roomy is not None and tight is not None and tight < roomy
    with pytest.raises(ConfigError, match="no cnn student fits profile nano"):
        student_width("cnn", teacher, _profile("nano", 2048, ram_mb=16))


def test_too_small_device_class_gets_no_model_and_a_reason(tmp_path) -> None:  # type: ignore[no-untyped-def]
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "artifacts")
    try:
        version = reg.create_version(
            "m",
            spec={"arch": "cnn", "input_shape": [1, 8, 8], "num_classes": 10},
            source=VersionSource.TRAINED,
            artifacts=[NewArtifact("torch", "fp32", b"w", ArtifactStatus.SOURCE)],
        )
        metrics = {"accuracy": 0.9, "latency_median_ms": 0.5}
        reg.add_artifacts(
            version.ref,
            [
                NewArtifact(
                    "tflite", "float32", b"f" * 40_000, ArtifactStatus.APPROVED, None, metrics
                ),
                NewArtifact(
                    "tflite", "int8", b"i" * 12_000, ArtifactStatus.APPROVED, None, metrics
                ),
            ],
        )
        plans = {
            p.profile: p
            for p in plan_classes(
                reg,
                [version.ref],
                [
                    _profile("roomy", 65_536),
                    _profile("small", 16_384),
                    _profile("tiny", 8_192),
                    _profile("slow", 65_536, latency_target_ms=0.1),
                ],
            )
        }
        assert plans["roomy"].chosen is not None and plans["roomy"].chosen.precision == "int8"
        assert plans["small"].chosen is not None and plans["small"].chosen.bytes == 12_000
        assert plans["tiny"].chosen is None
        assert "12,000 bytes > max_model_bytes 8,192" in (plans["tiny"].reason or "")
        assert "40,000 bytes > max_model_bytes 8,192" in (plans["tiny"].reason or "")
        assert plans["slow"].chosen is None
        assert "latency_target_ms 0.1" in (plans["slow"].reason or "")
    finally:
        reg.close()

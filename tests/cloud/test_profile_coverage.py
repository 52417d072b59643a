"""What quantize approves, a device must accept (issue 9, class 12): the coverage check."""

from __future__ import annotations

from cloud.quantization.pipeline import QuantizationReport, profile_coverage


def _report(*approved: tuple[str, int]) -> QuantizationReport:
    report = QuantizationReport("m@1", 0.98, 1.0, selected=None)
    report.artifacts = [{"precision": p, "status": "approved", "bytes": n} for p, n in approved] + [
        {"precision": "int8", "status": "rejected", "bytes": 10}
    ]
    return report


def test_a_profile_that_accepts_no_approved_precision_is_named() -> None:
    """int8 missed the budget: dynamic-int8 is smallest, but only int8-only devices exist."""
    report = _report(("dynamic-int8", 30), ("float16", 50), ("float32", 100))
    coverage = profile_coverage(
        report,
        {"air_quality_node": ["int8"], "smart_camera": ["int8", "float16"], "hub": ["float32"]},
    )
    assert coverage == {"air_quality_node": None, "hub": "float32", "smart_camera": "float16"}


def test_each_profile_gets_its_preferred_accepted_approved_artifact() -> None:
    report = _report(("float32", 100), ("float16", 50))
    assert profile_coverage(report, {"p": ["float32", "float16"]}) == {"p": "float16"}

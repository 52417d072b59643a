"""Variant timing on this CPU (real LiteRT invokes) and the CPU feature flags reported with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.inference import cpu_features, time_variant
from edge.inference.cpu import KERNEL_FEATURES, cpu_features_from_text
from edge.inference.runtime import make_interpreter
from edge.inference.timing import random_inputs
from shared.errors import ModelLoadError
from tests.helpers.models import BuiltModels

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme pse sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512_vnni msr
processor\t: 1
flags\t\t: fpu
"""
ARM64 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm
CPU implementer\t: 0x41
"""


def test_time_variant_counts_runs_within_bounds(models: BuiltModels) -> None:
    runs, median_us, p99_us = time_variant(models.int8_a, threads=1, budget_s=0.2, max_runs=50)
    assert 1 <= runs <= 50
    assert 0 < median_us <= p99_us


def test_time_variant_stops_at_max_runs(models: BuiltModels) -> None:
    # A large budget: only the run cap can end it early.
    runs, _, _ = time_variant(models.float_a, threads=1, budget_s=60.0, max_runs=7)
    assert runs == 7


def test_random_inputs_are_seeded_and_match_the_model(models: BuiltModels) -> None:
    interpreter = make_interpreter(models.int8_a.read_bytes(), num_threads=1)
    detail = interpreter.get_input_details()[0]
    (index, a), (_, b) = (
        random_inputs(interpreter, seed=3)[0],
        random_inputs(interpreter, seed=3)[0],
    )
    assert index == detail["index"]
    assert a.dtype == np.dtype(detail["dtype"]) and a.shape == tuple(detail["shape"])
    np.testing.assert_array_equal(a, b)
    other = random_inputs(interpreter, seed=4)[0][1]
    assert not np.array_equal(a, other)


def test_time_variant_refuses_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError):
        time_variant(bad, threads=1, budget_s=0.1)
    with pytest.raises(ModelLoadError):
        time_variant(tmp_path / "missing.tflite", threads=1, budget_s=0.1)


@pytest.mark.parametrize("kw", [{"threads": 0}, {"budget_s": 0.0}, {"max_runs": 0}])
def test_time_variant_refuses_non_positive_bounds(
    models: BuiltModels, kw: dict[str, float]
) -> None:
    args: dict[str, float] = {"threads": 1, "budget_s": 0.1, **kw}
    with pytest.raises(ValueError):
        time_variant(models.int8_a, **args)  # type: ignore[arg-type]


def test_cpu_features_from_x86_and_arm_cpuinfo() -> None:
    assert cpu_features_from_text(X86) == (
        "avx",
        "avx2",
        "avx512_vnni",
        "avx512f",
        "f16c",
        "fma",
        "sse4_1",
        "sse4_2",
    )
    assert cpu_features_from_text(ARM64) == ("asimd", "asimddp", "asimdhp", "fphp", "i8mm")
    assert cpu_features_from_text("") == ()


def test_cpu_features_of_this_machine_are_sorted_known_flags(tmp_path: Path) -> None:
    flags = cpu_features()
    assert list(flags) == sorted(flags) and set(flags) <= KERNEL_FEATURES
    assert cpu_features(tmp_path / "missing") == ()

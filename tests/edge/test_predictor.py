"""Predictor on real .tflite files: quantized I/O, validation, hot swap, bad models."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edge.inference import LoadedModel, Predictor
from shared.errors import InferenceError, ModelLoadError, RequestError
from shared.profiles import DeviceProfile
from tests.helpers.models import INPUT_SHAPE, BuiltModels


@pytest.fixture()
def predictor(models: BuiltModels) -> Predictor:
    p = Predictor()
    p.load(models.int8_a, "a")
    return p


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(INPUT_SHAPE, dtype=np.float32)


def test_int8_model_reports_quantized_io(predictor: Predictor) -> None:
    info = predictor.active
    assert info is not None
    assert (info.input_dtype, info.output_dtype, info.precision) == ("int8", "int8", "int8")
    assert info.input_quant is not None and info.input_quant.scale > 0
    assert info.version == "a"


def test_float_input_is_quantized_like_a_manual_pipeline(
    predictor: Predictor, models: BuiltModels
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    x = _x()
    interp = Interpreter(model_path=str(models.int8_a))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    q = np.clip(np.round(x / s_in) + z_in, -128, 127).astype(np.int8)
    interp.set_tensor(inp["index"], q)
    interp.invoke()
    expected = (interp.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out

    got = predictor.predict(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2 * s_out)
    # Pre-quantized int8 input gives the same result; raw output is the int8 tensor.
    raw = predictor.predict(q, dequantize=False)
    assert raw.dtype == np.int8
    np.testing.assert_allclose((raw.astype(np.float32) - z_out) * s_out, expected, atol=2 * s_out)


def test_float_model_matches_int8_model_roughly(models: BuiltModels) -> None:
    fp, q = Predictor(), Predictor()
    fp.load(models.float_a)
    q.load(models.int8_a)
    x = _x(3)
    assert fp.active is not None and fp.active.precision == "float32"
    np.testing.assert_allclose(fp.predict(x), q.predict(x), atol=0.05)


def test_batch_dimension_may_be_omitted(predictor: Predictor) -> None:
    x = _x()
    np.testing.assert_array_equal(predictor.predict(x[0]), predictor.predict(x))


@pytest.mark.parametrize(
    ("x", "code"),
    [
        (np.zeros((1, 28, 28, 1), np.float32), "wrong_shape"),
        (np.zeros((2, 1, 28, 28), np.float32), "wrong_shape"),
        (np.zeros(INPUT_SHAPE, np.float64), "wrong_dtype"),
        (np.zeros(INPUT_SHAPE, np.int32), "wrong_dtype"),
        (np.full(INPUT_SHAPE, np.nan, np.float32), "not_finite"),
        ([[0.0] * 28] * 28, "bad_request"),
    ],
)
def test_bad_requests_are_typed_errors_and_counted(
    predictor: Predictor, x: object, code: str
) -> None:
    with pytest.raises(RequestError) as info:
        predictor.predict(x)
    assert info.value.code == code
    snap = predictor.stats.snapshot()
    assert (snap.requests, snap.errors) == (1, 1)
    assert predictor.predict(_x()).shape == (1, 10)  # still serving


def test_no_model_is_an_inference_error() -> None:
    with pytest.raises(InferenceError) as info:
        Predictor().predict(_x())
    assert info.value.code == "no_model"


def test_stats_percentiles(predictor: Predictor) -> None:
    for _ in range(50):
        predictor.predict(_x())
    snap = predictor.stats.snapshot()
    assert snap.requests == 50 and snap.errors == 0 and snap.latency_count == 50
    assert 0 < snap.p50_ms <= snap.p95_ms <= snap.p99_ms <= snap.max_ms
    assert predictor.stats.snapshot().requests == 0  # a new window
    assert predictor.stats.snapshot().requests_total == 50


def _bad_files(tmp_path: Path, models: BuiltModels) -> dict[str, Path]:
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00not a flatbuffer" * 100)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(models.int8_b.read_bytes()[:5000])
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    return {"garbage": garbage, "truncated": truncated, "empty": empty, "missing": tmp_path / "no"}


def test_bad_model_never_becomes_active(
    predictor: Predictor, models: BuiltModels, tmp_path: Path
) -> None:
    x = _x()
    before = predictor.predict(x)
    for name, path in _bad_files(tmp_path, models).items():
        with pytest.raises(ModelLoadError):
            predictor.load(path, name)
        assert predictor.active is not None and predictor.active.version == "a"
        np.testing.assert_array_equal(predictor.predict(x), before)


def test_probe_failure_rejects_the_candidate(predictor: Predictor, models: BuiltModels) -> None:
    def probe(candidate: LoadedModel) -> None:
        raise ValueError("accuracy below budget")

    with pytest.raises(ModelLoadError, match="accuracy below budget"):
        predictor.load(models.int8_b, "b", probe=probe)
    assert predictor.active is not None and predictor.active.version == "a"


def test_profile_limits_reject_models(models: BuiltModels, profile: DeviceProfile) -> None:
    small = profile.model_copy(update={"max_model_bytes": 2048})
    with pytest.raises(ModelLoadError) as too_big:
        Predictor.from_profile(small).load(models.int8_a)
    assert too_big.value.code == "model_too_large"
    int8_only = profile.model_copy(update={"precisions": ("int8",)})
    p = Predictor.from_profile(int8_only)
    with pytest.raises(ModelLoadError) as wrong:
        p.load(models.float_a)
    assert wrong.value.code == "precision_not_accepted"
    assert p.active is None
    assert p.load(models.int8_a).num_threads == profile.inference_threads


def test_hot_swap_under_load_drops_nothing(predictor: Predictor, models: BuiltModels) -> None:
    """Four threads hammer the predictor while the model is swapped twice."""
    stop = threading.Event()
    failures: list[BaseException] = []
    served: list[set[str]] = [set() for _ in range(4)]
    counts = [0] * 4

    def worker(i: int) -> None:
        x = _x(i)
        while not stop.is_set():
            try:
                out, version = predictor.predict_versioned(x)
                assert out.shape == (1, 10) and np.isfinite(out).all()
                served[i].add(version)
                counts[i] += 1
            except BaseException as exc:  # record everything: the assertion is "none"
                failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for path, version in ((models.int8_b, "b"), (models.int8_a, "a2")):
            done = sum(counts)
            while sum(counts) < done + 200:  # let real traffic run on the current model
                threading.Event().wait(0.005)
            predictor.load(path, version)
        done = sum(counts)
        while sum(counts) < done + 200:
            threading.Event().wait(0.005)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert set().union(*served) == {"a", "b", "a2"}
    assert predictor.active is not None and predictor.active.version == "a2"


def test_replicas_serve_concurrently(models: BuiltModels) -> None:
    p = Predictor(replicas=2)
    p.load(models.int8_a)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(p.predict(_x(1)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    for r in results:
        np.testing.assert_array_equal(r, results[0])

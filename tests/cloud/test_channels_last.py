"""Channels-last I/O: image models take NHWC input with no TRANSPOSE at the graph's edges.

Real conversions with litert-torch, real runs in LiteRT; the digits pipeline test uses the
session's quantized digits model (``quantized_digits``), the NCHW comparison a clone of it.
"""

from __future__ import annotations

import http.client
import io
import json

import numpy as np
import pytest
import torch

from cloud.data import split_from_record
from cloud.quantization import LiteRTRunner, quantize_version
from cloud.quantization.convert import (
    InputLayout,
    boundary_ops,
    export_float_tflite,
    input_layout,
    model_input_shape,
    quantize_tflite,
    to_layout,
)
from cloud.training.models import CompactCNN
from shared.errors import QuantizationError
from shared.precision import Precision

RGB = (3, 12, 12)  # three channels: NCHW input then needs a real TRANSPOSE, not a RESHAPE


@pytest.fixture(scope="module")
def rgb_pair() -> tuple[torch.nn.Module, bytes, bytes]:
    """One seeded 3-channel CNN converted both ways."""
    torch.manual_seed(0)
    model = CompactCNN(RGB, 5).eval()
    nchw = export_float_tflite(model, RGB, layout=InputLayout.NCHW)
    nhwc = export_float_tflite(model, RGB)  # the default for images
    return model, nchw, nhwc


def test_layout_defaults_and_shapes() -> None:
    assert input_layout((1, 8, 8)) is InputLayout.NHWC
    assert input_layout((1, 8, 8), channels_last=False) is InputLayout.NCHW
    assert input_layout((64,)) is InputLayout.AS_TRAINED  # the flag never applies to vectors
    assert input_layout((64,), channels_last=True) is InputLayout.AS_TRAINED
    assert model_input_shape((3, 12, 10), InputLayout.NHWC) == (1, 12, 10, 3)
    assert model_input_shape((3, 12, 10), InputLayout.NCHW) == (1, 3, 12, 10)
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    y = to_layout(x, "NHWC")
    assert y.shape == (2, 4, 5, 3) and y.flags.c_contiguous
    assert y[1, 2, 3, 0] == x[1, 0, 2, 3]
    assert to_layout(x, InputLayout.NCHW) is x
    with pytest.raises(QuantizationError, match="NHWC"):
        to_layout(x[0], InputLayout.NHWC)
    with pytest.raises(QuantizationError, match="unknown input layout 'NWHC'"):
        to_layout(x, "NWHC")


@pytest.mark.slow
def test_nhwc_model_has_no_transpose_at_its_edges(rgb_pair) -> None:  # type: ignore[no-untyped-def]
    _, nchw, nhwc = rgb_pair
    before, after = boundary_ops(nchw), boundary_ops(nhwc)
    # The NCHW graph pays a TRANSPOSE on every request; that is what channels-last removes.
    assert before.inputs == ["TRANSPOSE"] and before.input_shape == (1, 3, 12, 12)
    assert after.input_shape == (1, 12, 12, 3)
    assert "TRANSPOSE" not in after.inputs and "TRANSPOSE" not in after.outputs
    assert after.inputs == ["CONV_2D"]  # the first convolution reads the input directly
    assert after.transposes() == 0


@pytest.mark.slow
def test_nhwc_outputs_equal_nchw_outputs(rgb_pair) -> None:  # type: ignore[no-untyped-def]
    model, nchw, nhwc = rgb_pair
    images = np.random.default_rng(1).random((16, *RGB), dtype=np.float32)
    first, last = LiteRTRunner(nchw), LiteRTRunner(nhwc)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images)).numpy()
    channels_last = to_layout(images, InputLayout.NHWC)
    for i in range(len(images)):
        a = first.predict(images[i : i + 1])
        b = last.predict(channels_last[i : i + 1])
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b[0], expected[i], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_calibration_in_the_wrong_layout_is_refused(rgb_pair) -> None:  # type: ignore[no-untyped-def]
    _, _, nhwc = rgb_pair
    nchw_samples = np.zeros((4, *RGB), dtype=np.float32)
    with pytest.raises(QuantizationError, match=r"calibration samples have shape \[3, 12, 12\]"):
        quantize_tflite(nhwc, Precision.INT8, nchw_samples)


def test_nhwc_is_refused_for_a_feature_vector_model() -> None:
    with pytest.raises(QuantizationError, match="image samples"):
        export_float_tflite(torch.nn.Linear(8, 2), (8,), layout=InputLayout.NHWC)


@pytest.mark.slow
def test_pipeline_records_the_layout_and_serves_nhwc_on_the_edge(quantized_digits) -> None:  # type: ignore[no-untyped-def]
    from edge.inference import InferenceServer, Predictor

    reg, version, report = quantized_digits
    assert report.input_layout == "NHWC"
    assert version.metrics["quantization"]["input_layout"] == "NHWC"
    tflite = [a for a in version.artifacts if a.format == "tflite"]
    assert {a.precision for a in tflite} >= {"int8", "float32"}
    split = split_from_record(version.data)
    images = to_layout(split.test_x, InputLayout.NHWC)
    for art in tflite:
        assert art.metrics["input_layout"] == "NHWC"
        assert art.metrics["input_shape"] == [1, 8, 8, 1]
        edges = boundary_ops(reg.read_artifact(art))
        assert edges.input_shape == (1, 8, 8, 1)
        # One channel: NCHW would start with a RESHAPE; NHWC starts at the convolution.
        assert not {"TRANSPOSE", "RESHAPE"} & set(edges.inputs), (art.precision, edges)
    # The edge reads the shape from the input tensor: NHWC samples are served, NCHW refused.
    int8 = version.artifact("tflite", "int8")
    predictor = Predictor(num_threads=1)
    info = predictor.load_bytes(reg.read_artifact(int8), "digits-nhwc")
    assert info.input_shape == (1, 8, 8, 1)
    correct = sum(
        int(np.argmax(predictor.predict(images[i])) == split.test_y[i]) for i in range(len(images))
    )
    assert correct / len(images) == pytest.approx(int8.metrics["accuracy"])
    server = InferenceServer(predictor, port=0)
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/v1/health")
        health = json.loads(conn.getresponse().read())
        assert health["model"]["input"]["shape"] == [1, 8, 8, 1]
        for sample, status in ((images[:1], 200), (split.test_x[:1], 422)):
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(sample, dtype=np.float32))
            headers = {"Content-Type": "application/x-npy"}
            conn.request("POST", "/v1/infer", body=buf.getvalue(), headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == status, body
            if status == 422:
                assert b"wrong_shape" in body
        conn.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_nchw_flag_keeps_torch_layout_int8_accuracy_and_lineage(quantized_digits) -> None:  # type: ignore[no-untyped-def]
    from cloud.registry import ArtifactStatus, VersionSource
    from cloud.registry.registry import NewArtifact

    reg, version, nhwc_report = quantized_digits
    torch_art = version.artifact("torch", "fp32")
    clone = reg.create_version(
        "digits-nchw",
        spec=version.spec,
        source=VersionSource.IMPORTED,
        data=version.data,
        artifacts=[
            NewArtifact("torch", "fp32", reg.read_artifact(torch_art), ArtifactStatus.SOURCE)
        ],
    )
    report = quantize_version(reg, clone.ref, max_drop=1.0, channels_last=False)
    assert report.input_layout == "NCHW"
    # A new version of an NCHW model stays NCHW: an update must not change the input
    # shape the device's callers send (hot swap, shadow evaluation beside the old one).
    child = reg.create_version(
        "digits-nchw",
        spec=version.spec,
        source=VersionSource.IMPORTED,
        data=version.data,
        parent=clone.ref,
        artifacts=[
            NewArtifact("torch", "fp32", reg.read_artifact(torch_art), ArtifactStatus.SOURCE)
        ],
    )
    assert quantize_version(reg, child.ref, max_drop=100.0).input_layout == "NCHW"
    nchw_int8 = reg.get_version(clone.ref).artifact("tflite", "int8")
    assert nchw_int8.metrics["input_shape"] == [1, 1, 8, 8]
    assert boundary_ops(reg.read_artifact(nchw_int8)).input_shape == (1, 1, 8, 8)
    # Same weights, same calibration samples: the layout must not cost int8 accuracy.
    nhwc_int8 = version.artifact("tflite", "int8")
    assert nchw_int8.status == nhwc_int8.status == "approved"
    gap = abs(nchw_int8.metrics["accuracy"] - nhwc_int8.metrics["accuracy"]) * 100
    assert gap <= nhwc_report.max_drop

"""Model files and runners for ``benchmarks/edge_inference.py``: LiteRT variants and peers.

Everything is built from ONE torch model in the same run:

* LiteRT: float32 / float16 / dynamic-int8 / int8 (the variant set ``quantize`` keeps),
  each in NCHW and in channels-last NHWC input layout, through ``cloud.quantization.convert``;
* onnxruntime: ``torch.onnx.export`` (the dynamo exporter, torch 2.13's default) in float32,
  and its int8 QDQ form from ``onnxruntime.quantization.quantize_static``, calibrated on the
  same samples as the LiteRT int8 file;
* ExecuTorch with the XNNPACK backend, float32 and PT2E int8 (same calibration samples),
  ``torch.export`` → ``to_edge_transform_and_lower``.

A peer that cannot be installed, built or run is returned as the exact reason (a string)
instead of a runner, so the benchmark reports it rather than failing. Peers are optional
dependencies (onnx, onnxscript, onnxruntime in ``dev``; executorch in ``bench``, which
``make bench`` installs); the edge extra never pulls them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud.quantization.convert import (
    InputLayout,
    export_float_tflite,
    quantize_tflite,
    to_layout,
)
from shared.precision import Precision

log = logging.getLogger(__name__)

#: A zero-argument call that runs one inference (input prepared beforehand).
Call = Callable[[], object]

VARIANTS = (Precision.FLOAT32, Precision.FLOAT16, Precision.DYNAMIC_INT8, Precision.INT8)


@dataclass(frozen=True)
class LiteRTFile:
    """One converted LiteRT variant."""

    precision: str
    layout: str
    path: Path

    @property
    def key(self) -> str:
        """``float32/NHWC`` …"""
        return f"{self.precision}/{self.layout}"


@contextlib.contextmanager
def _quiet() -> Any:
    """Converters print progress lines; keep the benchmark's output readable."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def build_litert(
    model: Any,
    sample_shape: tuple[int, ...],
    calibration: np.ndarray,
    out: Path,
    *,
    precisions: tuple[Precision, ...] = VARIANTS,
    stem: str = "cnn",
) -> list[LiteRTFile]:
    """Every variant in both layouts; files are reused when ``out`` holds them already.

    Args:
        model: Eval-mode torch model on ``(1, *sample_shape)``.
        sample_shape: One sample's torch shape ``(C, H, W)``.
        calibration: Float calibration samples ``(N, C, H, W)`` for int8.
        out: Directory for the ``.tflite`` files.
    """
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for layout in (InputLayout.NCHW, InputLayout.NHWC):
        paths = {p: out / f"{stem}_{p}_{layout.lower()}.tflite" for p in precisions}
        if not all(p.exists() for p in paths.values()):
            with _quiet():
                base = export_float_tflite(model, sample_shape, layout=layout)
                calib = to_layout(calibration, layout)
                for precision, path in paths.items():
                    path.write_bytes(quantize_tflite(base, precision, calib))
        files += [LiteRTFile(str(p), str(layout), path) for p, path in paths.items()]
    return files


def litert_raw(path: Path, x: np.ndarray, threads: int) -> tuple[Call, str]:
    """``set_tensor + invoke + get_tensor`` with the input already in the model's dtype.

    Returns:
        The call and the input dtype the model takes (``int8`` input is pre-quantized).
    """
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=path.read_bytes(), num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    dtype = np.dtype(inp["dtype"])
    shaped = x.reshape(tuple(int(d) for d in inp["shape"]))
    if dtype == np.int8:
        scale, zero = inp["quantization"]
        shaped = np.clip(np.rint(shaped / scale) + zero, -128, 127).astype(np.int8)
    prepared = np.ascontiguousarray(shaped.astype(dtype))
    i_in, i_out = inp["index"], out["index"]

    def call() -> object:
        interp.set_tensor(i_in, prepared)
        interp.invoke()
        return interp.get_tensor(i_out)

    return call, dtype.name


def litert_from_frame(path: Path, frame: np.ndarray, threads: int) -> Call:
    """A float NCHW model fed a camera's NHWC frame: the caller transposes on every call."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=path.read_bytes(), num_threads=threads)
    interp.allocate_tensors()
    i_in = interp.get_input_details()[0]["index"]
    i_out = interp.get_output_details()[0]["index"]

    def call() -> object:
        interp.set_tensor(i_in, np.ascontiguousarray(frame.transpose(0, 3, 1, 2)))
        interp.invoke()
        return interp.get_tensor(i_out)

    return call


def build_onnx(model: Any, x: np.ndarray, calibration: np.ndarray, out: Path) -> Path | str:
    """Export to ONNX float32 and its int8 QDQ twin; returns the float path or the reason."""
    try:
        import onnxruntime  # noqa: F401  (checked here so the reason names the package)
        import torch
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        return f"not installed: {exc} (pip install -e '.[bench]')"
    fp32, prep, qdq = out / "cnn_fp32.onnx", out / "cnn_prep.onnx", out / "cnn_int8_qdq.onnx"
    if fp32.exists() and qdq.exists():
        return fp32

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, name: str) -> None:
            self._it = iter({name: s[None].astype(np.float32)} for s in calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    try:
        with _quiet():
            # torch 2.13 exports through torch.export (dynamo=True is the default); opset 18.
            torch.onnx.export(model, (torch.from_numpy(x),), str(fp32), dynamo=True)
            quant_pre_process(str(fp32), str(prep))
            import onnx

            name = onnx.load(str(prep)).graph.input[0].name
            quantize_static(
                str(prep),
                str(qdq),
                Reader(name),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
    except Exception as exc:  # exporters raise many unrelated types
        return f"export/quantization failed: {exc!r}"[:300]
    return fp32


def onnx_call(path: Path, x: np.ndarray, threads: int) -> Call:
    """One ``InferenceSession.run`` on CPU with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    names = [session.get_outputs()[0].name]
    return lambda: session.run(names, feed)


def _et_int8(model: Any, tx: Any, calibration: np.ndarray) -> Any:
    """PT2E static int8 (XNNPACK's symmetric per-channel config), calibrated on the samples."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, (tx,)).module(), quantizer)
    for sample in calibration:
        prepared(torch.from_numpy(sample[None].astype(np.float32)))
    return torch.export.export(convert_pt2e(prepared), (tx,))


def executorch_call(
    model: Any, x: np.ndarray, threads: int, out: Path, *, calibration: np.ndarray | None = None
) -> Call | str:
    """ExecuTorch + XNNPACK ``forward`` (int8 when ``calibration`` is given); else the reason."""
    try:
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )
        from executorch.exir import to_edge_transform_and_lower
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime
    except Exception as exc:  # an ABI mismatch with torch surfaces as OSError/ImportError
        return f"not installed or not importable: {exc!r}"[:300] + " (pip install -e '.[bench]')"
    pte = out / ("cnn_xnnpack_int8.pte" if calibration is not None else "cnn_xnnpack.pte")
    tx = torch.from_numpy(np.ascontiguousarray(x))
    try:
        if not pte.exists():
            with _quiet():
                exported = (
                    _et_int8(model, tx, calibration)
                    if calibration is not None
                    else torch.export.export(model, (tx,))
                )
                lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
                pte.write_bytes(lowered.to_executorch().buffer)
        runtime = Runtime.get()
        if "XnnpackBackend" not in runtime.backend_registry.registered_backend_names:
            return "the executorch wheel has no XnnpackBackend registered"
        portable_lib._unsafe_reset_threadpool(threads)
        # The Program borrows the buffer and the Method borrows the Program: both must
        # outlive every call (a dropped one is a use-after-free, seen here as a segfault).
        buffer = pte.read_bytes()
        program = runtime.load_program(buffer)
        method = program.load_method("forward")
        if method is None:
            return "the program has no forward method"
        got = method.execute([tx])[0]
        with torch.inference_mode():
            want = model(tx)
        # float32 must match torch; int8 within a few quantization steps of the logits.
        tol = 1e-4 if calibration is None else 0.05 * float(want.abs().max())
        if not torch.allclose(got, want, atol=tol):
            return f"ExecuTorch output differs from torch (max abs diff > {tol:.2g})"
    except Exception as exc:  # export/lowering/runtime raise many unrelated types
        return f"ExecuTorch build/run failed: {exc!r}"[:300]
    inputs = [tx]
    keep = (buffer, program, method)

    def call() -> object:
        return keep[2].execute(inputs)

    return call


def package_versions() -> dict[str, str | None]:
    """Versions of every runtime measured (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("ai-edge-litert", "litert-torch", "torch", "onnxruntime", "executorch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> dict[str, Any]:
    """CPU model name and the SIMD features that decide which precision is fastest."""
    name, flags = "unknown", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "f16c")
    return {"model": name, "cpus": os.cpu_count(), "features": [f for f in wanted if f in flags]}

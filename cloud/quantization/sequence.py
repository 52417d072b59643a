"""Edge forms for sequence models (GRU, LSTM, Transformer): small and fast in LiteRT.

What was measured (``benchmarks/model_plane.py``) and why this module exists: litert-torch
emits no fused recurrent op, so a recurrence is unrolled into per-step ops, and full int8
adds a scale and zero point to every unrolled tensor (the file can grow past float) while
the quantize/dequantize pairs around attention's ``BATCH_MATMUL``/``SOFTMAX`` split the
XNNPACK graph into many partitions (slower than float). So, per precision slot, several
*forms* are produced and each is evaluated in LiteRT; the slot keeps the form that stays
within the accuracy budget and runs fastest (then smallest):

- ``int8`` slot: full static int8; static int8 with attention matmul/softmax left in float
  (a per-op ai-edge-quantizer recipe).
- ``dynamic-int8`` slot: dynamic-range int8 (int8 weights, activations quantized on the
  fly inside the kernels); weight-only int8 (int8 weights dequantized once, float compute).
- ``float16``: float16 weights (the shared recipe).

Every form then has its tensor names stripped (graph input/output names and the signature
are kept, the edge runtime finds tensors by index): in a small unrolled graph the names
litert-torch writes (full module paths) are a fifth of the file.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud.quantization.convert import _signature_input, quantize_tflite
from cloud.quantization.litert_eval import TfliteEvaluation, evaluate_tflite
from cloud.quantization.quiet import native_output_captured
from shared.errors import QuantizationError
from shared.precision import Precision

log = logging.getLogger(__name__)

#: The forms tried for each precision slot, best guess first.
FORMS: dict[Precision, tuple[str, ...]] = {
    Precision.INT8: ("static-int8", "static-int8-float-attention"),
    Precision.DYNAMIC_INT8: ("dynamic-int8", "weight-only-int8"),
    Precision.FLOAT16: ("float16",),
}
#: Latency noise allowed when a quantized form is held to "no slower than float" (a loaded
#: two-core host measures a few percent of jitter between identical runs).
LATENCY_TOLERANCE = 1.10


@dataclass(frozen=True)
class FormResult:
    """One form of one precision slot, as LiteRT measured it."""

    form: str
    precision: str
    bytes: int
    accuracy: float | None
    latency_median_ms: float | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def strip_tensor_names(model: bytes) -> bytes:
    """Drop intermediate tensor names and the model description; keep graph I/O names and
    the signature (which maps names to tensor *indices*, not to tensor names)."""
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    obj.description = None
    for subgraph in obj.subgraphs:
        keep = set(subgraph.inputs.tolist()) | set(subgraph.outputs.tolist())
        for index, tensor in enumerate(subgraph.tensors):
            if index not in keep:
                tensor.name = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def _recipe(form: str) -> object:
    from ai_edge_quantizer import qtyping, recipe, recipe_manager

    if form == "weight-only-int8":
        return recipe.weight_only_wi8_afp32()
    if form == "static-int8-float-attention":
        manager = recipe_manager.RecipeManager()
        manager.add_static_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            activation_num_bits=8,
            weight_num_bits=8,
        )
        for op in (qtyping.TFLOperationName.BATCH_MATMUL, qtyping.TFLOperationName.SOFTMAX):
            manager.add_quantization_config(
                regex=".*", operation_name=op, algorithm_key=recipe.AlgorithmName.NO_QUANTIZE
            )
        return manager.get_quantization_recipe()
    raise ValueError(f"no recipe for form {form!r}")


def quantize_form(float_model: bytes, form: str, calibration: np.ndarray) -> bytes:
    """Produce one form from the (stripped or not) float model; names are stripped after.

    Raises:
        QuantizationError: the quantizer failed for this form.
    """
    if form in ("static-int8", "dynamic-int8", "float16"):
        data = quantize_tflite(float_model, Precision(form.removeprefix("static-")), calibration)
        return strip_tensor_names(data)
    from ai_edge_quantizer import quantizer

    with tempfile.TemporaryDirectory(prefix="fedge-seq-") as tmp:
        src, dst = Path(tmp) / "float.tflite", Path(tmp) / "q.tflite"
        src.write_bytes(float_model)
        try:
            q = quantizer.Quantizer(str(src))
            q.load_quantization_recipe(_recipe(form))
            if form.startswith("static"):
                signature, name = _signature_input(float_model)
                samples = [{name: s[None, ...].astype(np.float32)} for s in calibration]
                result = q.quantize(q.calibrate({signature: samples}))
            else:
                result = q.quantize()
            result.export_model(str(dst), overwrite=True)
        except Exception as exc:  # the quantizer raises many unrelated types
            raise QuantizationError(f"{form} quantization failed: {exc!r}") from exc
        return strip_tensor_names(dst.read_bytes())


Evaluator = Callable[[bytes], TfliteEvaluation]


def best_form(
    float_model: bytes,
    precision: Precision,
    calibration: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    min_accuracy: float,
    latency_runs: int = 200,
) -> tuple[bytes | None, list[FormResult]]:
    """Try every form of ``precision``'s slot, evaluate each in LiteRT on ``(x, y)``, and
    return the fastest (then smallest) one reaching ``min_accuracy`` — or, when none does,
    the most accurate one, which the pipeline then records as rejected — with all results.
    """
    results: list[FormResult] = []
    produced: dict[str, tuple[bytes, TfliteEvaluation]] = {}
    for form in FORMS[precision]:
        try:
            with native_output_captured():
                data = quantize_form(float_model, form, calibration)
            ev = evaluate_tflite(data, x, y, latency_runs=latency_runs)
        except QuantizationError as exc:
            results.append(FormResult(form, str(precision), 0, None, None, str(exc)))
            continue
        produced[form] = (data, ev)
        results.append(
            FormResult(form, str(precision), ev.bytes, ev.accuracy, ev.latency_median_ms)
        )
        log.info(
            "%s form %s: %d bytes, accuracy %.4f, %.3f ms",
            precision,
            form,
            ev.bytes,
            ev.accuracy,
            ev.latency_median_ms,
        )
    if not produced:
        return None, results
    ok = {f: v for f, v in produced.items() if v[1].accuracy >= min_accuracy}
    pool = ok or produced
    if ok:
        chosen = min(pool, key=lambda f: (pool[f][1].latency_median_ms, pool[f][1].bytes))
    else:
        chosen = max(pool, key=lambda f: pool[f][1].accuracy)
    return pool[chosen][0], results


def choose_variant(candidates: list[tuple[str, bool, int, float]]) -> str | None:
    """The deployable variant of a sequence model from ``(precision, approved, bytes,
    latency_median_ms)`` rows: the smallest approved one whose LiteRT latency is no worse
    than float32's (within :data:`LATENCY_TOLERANCE`); float32 when no quantized one is."""
    approved = [c for c in candidates if c[1]]
    floats = [c for c in approved if c[0] == str(Precision.FLOAT32)]
    if not floats:
        return min(approved, key=lambda c: c[2])[0] if approved else None
    limit = floats[0][3] * LATENCY_TOLERANCE
    return min((c for c in approved if c[3] <= limit), key=lambda c: c[2])[0]

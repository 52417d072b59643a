"""torch → ``.tflite`` (litert-torch) and ``.tflite`` → quantized ``.tflite`` (ai-edge-quantizer).

Precisions, from most to least compressed:

- ``int8``: full-integer — int8 weights and activations, int8 input/output tensors, calibrated
  on real training samples (the edge runtime quantizes inputs with the input tensor's
  scale/zero point).
- ``dynamic-int8``: int8 weights, float activations quantized on the fly.
- ``float16``: weights stored as float16, computed in float32.
- ``float32``: the plain converted model.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.errors import QuantizationError
from shared.precision import Precision

log = logging.getLogger(__name__)

# Converting on a GPU host must not grab the GPU through PJRT (litert-torch traces with it).
os.environ.setdefault("PJRT_DEVICE", "CPU")


#: The order the pipeline tries precisions in (``float32`` is always produced as the reference).
FALLBACK_CHAIN = (Precision.INT8, Precision.DYNAMIC_INT8, Precision.FLOAT16, Precision.FLOAT32)


def export_float_tflite(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """Convert an eval-mode torch model with batch-1 input ``(1, *input_shape)`` to ``.tflite``.

    Raises:
        QuantizationError: litert-torch could not convert the model.
    """
    import litert_torch

    model = model.cpu().eval()
    sample = torch.zeros(1, *input_shape, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="fedge-convert-") as tmp:
        path = Path(tmp) / "model.tflite"
        try:
            litert_torch.convert(model, (sample,)).export(str(path))
        except Exception as exc:  # the converter raises many unrelated types
            raise QuantizationError(f"litert-torch could not convert the model: {exc!r}") from exc
        return path.read_bytes()


def _recipe(precision: Precision) -> object:
    from ai_edge_quantizer import qtyping, recipe, recipe_manager

    if precision is Precision.INT8:
        return recipe.static_wi8_ai8()
    if precision is Precision.DYNAMIC_INT8:
        return recipe.dynamic_wi8_afp32()
    if precision is Precision.FLOAT16:
        manager = recipe_manager.RecipeManager()
        manager.add_quantization_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            op_config=qtyping.OpQuantizationConfig(
                weight_tensor_config=qtyping.TensorQuantizationConfig(
                    num_bits=16, dtype=qtyping.TensorDataType.FLOAT
                ),
                compute_precision=qtyping.ComputePrecision.FLOAT,
                explicit_dequantize=True,
            ),
            algorithm_key=recipe.AlgorithmName.FLOAT_CASTING,
        )
        return manager.get_quantization_recipe()
    raise ValueError(f"no recipe for {precision}")


def quantize_tflite(
    float_model: bytes, precision: Precision, calibration: np.ndarray | None = None
) -> bytes:
    """Quantize a float ``.tflite`` to ``precision``.

    Args:
        float_model: The ``float32`` model bytes from :func:`export_float_tflite`.
        precision: Target precision; ``float32`` returns the input unchanged.
        calibration: Float samples ``(N, *input_shape)``; required for ``int8``.

    Raises:
        QuantizationError: the quantizer failed; the message says at which precision.
    """
    if precision is Precision.FLOAT32:
        return float_model
    if precision is Precision.INT8 and (calibration is None or len(calibration) == 0):
        raise QuantizationError("int8 quantization needs calibration samples")
    from ai_edge_quantizer import quantizer

    with tempfile.TemporaryDirectory(prefix="fedge-quantize-") as tmp:
        src, dst = Path(tmp) / "float.tflite", Path(tmp) / "quantized.tflite"
        src.write_bytes(float_model)
        try:
            q = quantizer.Quantizer(str(src))
            q.load_quantization_recipe(_recipe(precision))
            if precision is Precision.INT8:
                assert calibration is not None
                signature, input_name = _signature_input(float_model)
                samples = [
                    {input_name: sample[None, ...].astype(np.float32)} for sample in calibration
                ]
                result = q.quantize(q.calibrate({signature: samples}))
            else:
                result = q.quantize()
            result.export_model(str(dst), overwrite=True)
        except Exception as exc:  # the quantizer raises many unrelated types
            raise QuantizationError(f"{precision} quantization failed: {exc!r}") from exc
        return dst.read_bytes()


def _signature_input(model: bytes) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_content=model).get_signature_list()
    if len(signatures) != 1:
        raise QuantizationError(f"expected one signature, found {list(signatures)}")
    ((name, io),) = signatures.items()
    if len(io["inputs"]) != 1:
        raise QuantizationError(f"expected one input, found {io['inputs']}")
    return name, io["inputs"][0]

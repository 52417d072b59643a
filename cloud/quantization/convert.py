"""torch → ``.tflite`` (litert-torch) and ``.tflite`` → quantized ``.tflite`` (ai-edge-quantizer).

Precisions, from most to least compressed:

- ``int8``: full-integer — int8 weights and activations, int8 input/output tensors, calibrated
  on real training samples (the edge runtime quantizes inputs with the input tensor's
  scale/zero point).
- ``dynamic-int8``: int8 weights, float activations quantized on the fly.
- ``float16``: weights stored as float16, computed in float32.
- ``float32``: the plain converted model.

Input layout: torch image models compute in NCHW, but cameras and image pipelines deliver
NHWC (channels-last), and TFLite's kernels are NHWC too. Converting an NCHW model as-is
leaves a TRANSPOSE (a RESHAPE for one channel) at the graph's input that every request
pays for, and makes the caller transpose its frames first. Image models are therefore
exported channels-last by default (:class:`InputLayout`): litert-torch's
``to_channel_last_io`` wraps the model with a permute that its layout pass folds into the
first convolution, so the converted graph starts at the convolution. Feature-vector models
keep the shape they were trained on. The layout is recorded in every artifact's metrics
(``input_layout``, ``input_shape``) by the pipeline; the edge reads the shape from the
model's input tensor.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

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


class InputLayout(StrEnum):
    """How a converted model takes its input tensor."""

    #: Images as torch computes them: ``(N, C, H, W)``.
    NCHW = "NCHW"
    #: Images channels-last, as cameras and image pipelines deliver them: ``(N, H, W, C)``.
    NHWC = "NHWC"
    #: Not an image: the sample shape the model was trained on, batch first.
    AS_TRAINED = "as-trained"


def input_layout(input_shape: tuple[int, ...], *, channels_last: bool = True) -> InputLayout:
    """The layout a model with torch sample shape ``input_shape`` is exported in.

    Image models (``(C, H, W)`` samples) are channels-last unless ``channels_last`` is False;
    other models keep their shape whatever the flag says.
    """
    if len(input_shape) != 3:
        return InputLayout.AS_TRAINED
    return InputLayout.NHWC if channels_last else InputLayout.NCHW


def model_input_shape(input_shape: tuple[int, ...], layout: InputLayout) -> tuple[int, ...]:
    """The converted model's batch-1 input shape for torch sample shape ``input_shape``."""
    if layout is InputLayout.NHWC:
        _check_image(input_shape)
        c, h, w = input_shape
        return (1, h, w, c)
    return (1, *input_shape)


def to_layout(x: np.ndarray, layout: InputLayout | str) -> np.ndarray:
    """Put a torch-layout batch ``(N, *input_shape)`` into the model's ``layout``.

    NHWC batches come back C-contiguous: the interpreter copies the buffer as it is.

    Raises:
        QuantizationError: an unknown layout, or an NHWC batch that is not ``(N, C, H, W)``.
    """
    try:
        layout = InputLayout(layout)
    except ValueError:
        choices = ", ".join(v.value for v in InputLayout)
        raise QuantizationError(f"unknown input layout {layout!r}: use {choices}") from None
    if layout is not InputLayout.NHWC:
        return x
    if x.ndim != 4:
        raise QuantizationError(f"an NHWC model takes (N, C, H, W) batches, got {x.shape}")
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _check_image(input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise QuantizationError(
            f"channels-last input needs image samples (C, H, W), got {input_shape}"
        )


def export_float_tflite(
    model: nn.Module, input_shape: tuple[int, ...], *, layout: InputLayout | None = None
) -> bytes:
    """Convert an eval-mode torch model on samples of ``input_shape`` to ``.tflite``.

    Args:
        model: The torch model; it takes ``(1, *input_shape)``.
        input_shape: One sample's torch shape, e.g. ``(C, H, W)``.
        layout: The converted model's input layout; default :func:`input_layout` (NHWC
            for images). With NHWC the model takes ``(1, H, W, C)`` and returns what the
            torch model returns.

    Raises:
        QuantizationError: litert-torch could not convert the model, or NHWC was asked for
            a model whose samples are not images.
    """
    import litert_torch

    layout = layout or input_layout(input_shape)
    model = model.cpu().eval()
    if layout is InputLayout.NHWC:
        _check_image(input_shape)
        # The permute NHWC -> NCHW inside the graph meets the converter's own NCHW -> NHWC
        # rewrite of the first convolution; the two cancel, leaving no op at the input.
        model = litert_torch.to_channel_last_io(model, args=[0]).eval()
    sample = torch.zeros(*model_input_shape(input_shape, layout), dtype=torch.float32)
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
        calibration: Float samples in the model's input layout (``(N, H, W, C)`` for an
            NHWC model: see :func:`to_layout`); required for ``int8``.

    Raises:
        QuantizationError: the quantizer failed (the message says at which precision), or
            the calibration samples do not have the model's input shape.
    """
    if precision is Precision.FLOAT32:
        return float_model
    if precision is Precision.INT8 and (calibration is None or len(calibration) == 0):
        raise QuantizationError("int8 quantization needs calibration samples")
    if precision is Precision.INT8:
        assert calibration is not None
        expected = boundary_ops(float_model).input_shape[1:]
        if tuple(calibration.shape[1:]) != expected:
            # Calibrating NCHW samples into an NHWC model would "work" and be wrong.
            raise QuantizationError(
                f"calibration samples have shape {list(calibration.shape[1:])}, the model "
                f"takes {list(expected)}: put them in the model's layout first"
            )
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


@dataclass(frozen=True)
class BoundaryOps:
    """The operators at a graph's edges, read from the flatbuffer without delegates."""

    #: Shape of the (single) input tensor.
    input_shape: tuple[int, ...]
    #: Operators that read a graph input.
    inputs: list[str]
    #: Operators that write a graph output.
    outputs: list[str]

    def transposes(self) -> int:
        """TRANSPOSE ops at the input plus at the output: the layout work each request pays."""
        return self.inputs.count("TRANSPOSE") + self.outputs.count("TRANSPOSE")


def boundary_ops(model: bytes) -> BoundaryOps:
    """Which operators consume the graph's inputs and produce its outputs.

    Raises:
        QuantizationError: LiteRT cannot load the model.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        # Without the default XNNPACK delegate, so the op list is the file's, not a DELEGATE.
        interp = Interpreter(
            model_content=model,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        interp.allocate_tensors()
    except Exception as exc:  # the runtime raises RuntimeError/ValueError by case
        raise QuantizationError(f"LiteRT cannot load the model: {exc!r}") from exc
    ins = {int(d["index"]) for d in interp.get_input_details()}
    outs = {int(d["index"]) for d in interp.get_output_details()}
    ops: list[dict[str, Any]] = interp._get_ops_details()  # the public API lists no ops
    shape = tuple(int(d) for d in interp.get_input_details()[0]["shape"])
    return BoundaryOps(
        input_shape=shape,
        inputs=[str(op["op_name"]) for op in ops if ins & {int(i) for i in op["inputs"]}],
        outputs=[str(op["op_name"]) for op in ops if outs & {int(i) for i in op["outputs"]}],
    )

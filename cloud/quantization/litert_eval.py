"""Evaluate a ``.tflite`` artifact the way a device will run it: in the LiteRT interpreter.

Cloud-side twin of the edge runtime (cloud/ may not import edge/): accuracy on held-out
data, file size, operator list and single-thread latency, with int8 inputs quantized using
the input tensor's own scale and zero point.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shared.errors import QuantizationError


@dataclass(frozen=True)
class TfliteEvaluation:
    """What the interpreter measured."""

    accuracy: float
    bytes: int
    ops: list[str]
    input_dtype: str
    latency_median_ms: float
    latency_p99_ms: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class LiteRTRunner:
    """A single-sample LiteRT runner that handles quantized input and output."""

    def __init__(self, model: bytes, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_content=model, num_threads=threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise QuantizationError(f"LiteRT cannot load the model: {exc!r}") from exc
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._in_scale, self._in_zero = self.input["quantization"]
        self._out_scale, self._out_zero = self.output["quantization"]

    def quantize_input(self, sample: np.ndarray) -> np.ndarray:
        """Float sample ``(1, ...)`` → the input tensor's dtype."""
        dtype = self.input["dtype"]
        if np.issubdtype(dtype, np.integer) and self._in_scale:
            info = np.iinfo(dtype)
            q = np.round(sample / self._in_scale + self._in_zero)
            return np.asarray(np.clip(q, info.min, info.max).astype(dtype))
        return np.asarray(sample.astype(dtype))

    def run(self, prepared: np.ndarray) -> np.ndarray:
        """Invoke on an already prepared input; return float logits."""
        self.interpreter.set_tensor(self.input["index"], prepared)
        self.interpreter.invoke()
        out = np.asarray(self.interpreter.get_tensor(self.output["index"]))
        if np.issubdtype(out.dtype, np.integer) and self._out_scale:
            return np.asarray((out.astype(np.float32) - self._out_zero) * self._out_scale)
        return out.astype(np.float32)

    def predict(self, sample: np.ndarray) -> np.ndarray:
        """Float sample ``(1, ...)`` → float logits ``(1, C)``."""
        return self.run(self.quantize_input(sample))

    def ops(self) -> list[str]:
        """Sorted distinct operator names in the graph."""
        details = self.interpreter._get_ops_details()  # public API has no op listing
        return sorted({d["op_name"] for d in details})


def evaluate_tflite(
    model: bytes, x: np.ndarray, y: np.ndarray, *, latency_runs: int = 300, threads: int = 1
) -> TfliteEvaluation:
    """Accuracy over ``(x, y)`` and single-sample latency, in LiteRT with ``threads`` threads."""
    runner = LiteRTRunner(model, threads=threads)
    correct = 0
    for i in range(len(x)):
        logits = runner.predict(x[i : i + 1])
        correct += int(np.argmax(logits) == y[i])
    prepared = runner.quantize_input(x[:1])
    for _ in range(20):  # warm-up: first invokes allocate and prepare kernels
        runner.run(prepared)
    timings = np.empty(latency_runs)
    for i in range(latency_runs):
        start = time.perf_counter_ns()
        runner.run(prepared)
        timings[i] = time.perf_counter_ns() - start
    return TfliteEvaluation(
        accuracy=correct / len(y),
        bytes=len(model),
        ops=runner.ops(),
        input_dtype=str(np.dtype(runner.input["dtype"])),
        latency_median_ms=float(np.median(timings) / 1e6),
        latency_p99_ms=float(np.percentile(timings, 99) / 1e6),
    )

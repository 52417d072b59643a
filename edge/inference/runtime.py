"""The one place that imports a TFLite interpreter.

``ai-edge-litert`` (the maintained LiteRT wheel) is preferred; ``tflite-runtime`` is the
fallback for older firmware images that ship only that wheel. Nothing else in fedge may
import either package, so swapping runtimes is a one-file change.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.errors import ModelLoadError

__all__ = ["RUNTIME_NAME", "make_interpreter"]

logger = logging.getLogger(__name__)

_Interpreter: Any = None
RUNTIME_NAME = "none"
try:
    from ai_edge_litert import interpreter as _litert

    _Interpreter, RUNTIME_NAME = _litert.Interpreter, "ai-edge-litert"
except ImportError:  # pragma: no cover - exercised only on images without ai-edge-litert
    try:
        from tflite_runtime import interpreter as _tflite

        _Interpreter, RUNTIME_NAME = _tflite.Interpreter, "tflite-runtime"
    except ImportError:
        pass


def make_interpreter(model_content: bytes, *, num_threads: int) -> Any:
    """Create an interpreter for a model held in memory and allocate its tensors.

    The model is passed as bytes rather than a path so a later overwrite of the file (by a
    careless installer) cannot change a model that is already serving.

    Raises:
        ModelLoadError: no runtime is installed, or the bytes are not a loadable model.
    """
    if _Interpreter is None:
        raise ModelLoadError(
            "no TFLite runtime installed: install ai-edge-litert (or tflite-runtime)",
            code="no_runtime",
        )
    try:
        interpreter = _Interpreter(model_content=model_content, num_threads=num_threads)
        interpreter.allocate_tensors()
    except Exception as exc:  # the runtime raises ValueError/RuntimeError; keep our type
        raise ModelLoadError(f"the runtime cannot load the model: {exc}") from exc
    return interpreter

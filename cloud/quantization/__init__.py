"""torch → int8 TFLite with a fallback chain, verified in the LiteRT interpreter."""

from cloud.quantization.convert import FALLBACK_CHAIN
from cloud.quantization.litert_eval import LiteRTRunner, TfliteEvaluation, evaluate_tflite
from cloud.quantization.pipeline import Attempt, QuantizationReport, quantize_version
from shared.precision import Precision

__all__ = [
    "FALLBACK_CHAIN",
    "Attempt",
    "LiteRTRunner",
    "Precision",
    "QuantizationReport",
    "TfliteEvaluation",
    "evaluate_tflite",
    "quantize_version",
]

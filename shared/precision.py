"""The one vocabulary for a TFLite model's numeric precision.

Used by the quantization pipeline (what it produced), the registry (what is stored), the
manifest (what is shipped) and device profiles (what a device accepts), so a value means
the same thing at every hop.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Precision", "precision_rank"]


class Precision(StrEnum):
    """Numeric precision of a TFLite model, most compressed first."""

    INT8 = "int8"  # full integer: int8 weights, activations, inputs and outputs
    DYNAMIC_INT8 = "dynamic-int8"  # int8 weights, float activations quantized on the fly
    FLOAT16 = "float16"  # float16 weights, float32 compute
    FLOAT32 = "float32"


def precision_rank(value: str) -> int:
    """Preference of a precision for deployment: 0 for int8, … 3 for float32.

    The order of :class:`Precision` (most compressed first); an unknown value ranks last.
    """
    try:
        return list(Precision).index(Precision(value))
    except ValueError:
        return len(Precision)

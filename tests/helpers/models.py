"""Real ``.tflite`` files for tests and benchmarks, built from tiny torch models.

Kept in one place so the lead can later switch it to the cloud quantization pipeline.
Conversion runs ``litert_torch`` (float) and ``ai_edge_quantizer`` (static int8 weights
and activations: the resulting model has int8 input AND output tensors). Importing this
module does not import torch; the builders import it lazily, so tests that only need
the files can share a session-scoped cache.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INPUT_SHAPE = (1, 1, 28, 28)
NUM_CLASSES = 10


@dataclass(frozen=True)
class BuiltModels:
    """Paths of the models one build produced."""

    float_a: Path
    int8_a: Path
    int8_b: Path
    float_other_shape: Path


def _cnn(seed: int) -> Any:
    """A small CNN on 1x28x28 (~100k parameters), seeded so versions differ."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, NUM_CLASSES),
    )
    return model.eval()


def torch_cnn(seed: int = 0) -> Any:
    """The float torch model used for reference timings (benchmarks)."""
    return _cnn(seed)


def convert_float(model: Any, sample_shape: tuple[int, ...], out: Path) -> Path:
    """Convert a torch module to a float32 ``.tflite`` file."""
    import litert_torch
    import torch

    sample = torch.zeros(*sample_shape)
    litert_torch.convert(model, (sample,)).export(str(out))
    return out


def quantize_int8(float_path: Path, sample_shape: tuple[int, ...], out: Path) -> Path:
    """Statically quantize a float ``.tflite`` to int8 weights and activations."""
    from ai_edge_quantizer import quantizer, recipe

    rng = np.random.default_rng(0)
    calib = [{"args_0": rng.random(sample_shape, dtype=np.float32)} for _ in range(8)]
    q = quantizer.Quantizer(str(float_path))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    result = q.quantize(q.calibrate({"serving_default": calib}))
    result.export_model(str(out), overwrite=True)
    return out


def build_models(out_dir: Path) -> BuiltModels:
    """Build (or reuse, if already present) the test models into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = BuiltModels(
        float_a=out_dir / "cnn_a_float.tflite",
        int8_a=out_dir / "cnn_a_int8.tflite",
        int8_b=out_dir / "cnn_b_int8.tflite",
        float_other_shape=out_dir / "mlp_other_shape.tflite",
    )
    if all(p.exists() for p in vars(paths).values()):
        return paths
    # Keep the converter's thread pools small: the CI machine has two cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from torch import nn

    convert_float(_cnn(0), INPUT_SHAPE, paths.float_a)
    quantize_int8(paths.float_a, INPUT_SHAPE, paths.int8_a)
    tmp_b = out_dir / "cnn_b_float.tflite"
    convert_float(_cnn(1), INPUT_SHAPE, tmp_b)
    quantize_int8(tmp_b, INPUT_SHAPE, paths.int8_b)
    convert_float(nn.Sequential(nn.Linear(8, 3)).eval(), (1, 8), paths.float_other_shape)
    return paths


if __name__ == "__main__":  # python -m tests.helpers.models OUT_DIR
    print(build_models(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fedge-models")))

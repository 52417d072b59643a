"""Models for ``benchmarks/ota.py``: a ~1 MB int8 CNN, one fine-tuning epoch, delta sizes.

A model is trained on ``data`` with ``cloud.training``, quantized to int8 with
``cloud.quantization`` (v1), fine-tuned one more epoch from those weights and quantized
again (v2). :func:`delta_report` measures what each OTA encoding costs for v1 → v2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["build_models", "delta_report", "wide_cnn"]


def wide_cnn(input_shape: tuple[int, ...], num_classes: int) -> Any:
    """A CNN with a wide dense head (~1 M parameters, so ~1 MB as int8).

    Used through ``cloud.training`` as the factory ``benchmarks.ota_models:wide_cnn``.
    """
    from torch import nn

    channels, height, width = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (height // 4) * (width // 4), 320),
        nn.ReLU(),
        nn.Linear(320, num_classes),
    )


def _fine_tune_one_epoch(model: Any, split: Any, *, lr: float, seed: int) -> Any:
    """One more epoch from the trained weights (AdamW, constant ``lr``)."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    order = np.random.default_rng(seed).permutation(len(split.train_x))
    for i in range(0, len(order), 64):
        idx = order[i : i + 64]
        xb, yb = torch.from_numpy(split.train_x[idx]), torch.from_numpy(split.train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()
    return model.eval()


def build_models(data: str, epochs: int, seed: int, cache: Path | None) -> dict[str, Any]:
    """Train → int8 (v1), fine-tune one epoch → int8 (v2); returns both and their metrics."""
    if cache is not None and (cache / "v1.tflite").exists() and (cache / "v2.tflite").exists():
        meta = json.loads((cache / "models.json").read_text())
        return meta | {
            "v1": (cache / "v1.tflite").read_bytes(),
            "v2": (cache / "v2.tflite").read_bytes(),
        }
    import torch

    from cloud.data import load_dataset, stratified_split
    from cloud.quantization.convert import (
        export_float_tflite,
        input_layout,
        quantize_tflite,
        to_layout,
    )
    from cloud.training import ModelSpec, TrainConfig, train
    from cloud.training.trainer import evaluate_torch
    from shared.precision import Precision

    torch.set_num_threads(2)
    dataset = load_dataset(data)
    split = stratified_split(dataset, seed=seed)
    spec = ModelSpec("benchmarks.ota_models:wide_cnn", dataset.input_shape, dataset.num_classes)
    started = time.perf_counter()
    result = train(split, spec, TrainConfig(epochs=epochs, seed=seed, device="cpu"))
    # Calibrate in the layout the models are exported in (NHWC for images).
    calib = to_layout(split.train_x[:128], input_layout(dataset.input_shape))
    v1 = quantize_tflite(
        export_float_tflite(result.model, dataset.input_shape), Precision.INT8, calib
    )
    tuned = _fine_tune_one_epoch(result.model, split, lr=5e-4, seed=seed + 1)
    acc2, _ = evaluate_torch(tuned, split.test_x, split.test_y)
    v2 = quantize_tflite(export_float_tflite(tuned, dataset.input_shape), Precision.INT8, calib)
    meta = {
        "data": data,
        "arch": spec.arch,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "train_epochs": epochs,
        "test_accuracy_v1_float": result.metrics["test_accuracy"],
        "test_accuracy_v2_float": acc2,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "v1.tflite").write_bytes(v1)
        (cache / "v2.tflite").write_bytes(v2)
        (cache / "models.json").write_text(json.dumps(meta))
    return meta | {"v1": v1, "v2": v2}


def delta_report(v1: bytes, v2: bytes) -> dict[str, Any]:
    """Sizes of v2 as a full zstd artifact and as each delta against v1, and why.

    Every encoding is decoded again and compared with v2, so a size is only reported for
    an encoding that round-trips.
    """
    import numpy as np

    from shared.artifacts import ArtifactBuilder, BaseArtifact
    from shared.artifacts.compression import (
        bytediff_compress,
        bytediff_decompress_bounded,
        compress,
        decompress_bounded,
        delta_compress,
    )

    full = compress(v2)
    dict_delta = delta_compress(v2, v1)
    bytediff = bytediff_compress(v2, v1)
    assert decompress_bounded(full, len(v2)) == v2
    assert decompress_bounded(dict_delta, len(v2), base=v1) == v2
    assert bytediff_decompress_bounded(bytediff, len(v2), base=v1) == v2
    encoding, encoded = ArtifactBuilder().encode(v2, BaseArtifact(1, v1))
    same_len = len(v1) == len(v2)
    out: dict[str, Any] = {
        "raw_bytes_v1": len(v1),
        "raw_bytes_v2": len(v2),
        "full_zstd_bytes": len(full),
        "zstd_delta_bytes": len(dict_delta),
        "zstd_bytediff_bytes": len(bytediff),
        "zstd_delta_over_full": round(len(dict_delta) / len(full), 3),
        "zstd_bytediff_over_full": round(len(bytediff) / len(full), 3),
        "builder_picks": str(encoding),
        "sent_over_full": round(len(encoded) / len(full), 3),
        "full_over_raw": round(len(full) / len(v2), 3),
        "same_length": same_len,
        "target_delta_over_full": 0.5,
    }
    if same_len:
        a = np.frombuffer(v1, np.uint8)
        d = (np.frombuffer(v2, np.uint8) - a).view(np.int8)  # signed step per byte
        out["bytes_changed_fraction"] = round(float(np.mean(d != 0)), 3)
        out["bytes_within_one_step_fraction"] = round(float(np.mean(np.abs(d) <= 1)), 3)
    return out

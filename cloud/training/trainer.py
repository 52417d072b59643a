"""Train a model with torch: CUDA with automatic mixed precision when present, CPU otherwise."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from cloud.data import Split
from cloud.training.models import ModelSpec, build_model
from shared.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cpu", "cuda"]
#: Called after each epoch with (epoch, epochs, train_loss).
EpochCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    device: DeviceChoice = "auto"
    seed: int = 0


@dataclass
class TrainResult:
    """A trained model and what was measured while training it."""

    model: nn.Module
    spec: ModelSpec
    metrics: dict[str, float | int | str] = field(default_factory=dict)


def resolve_device(choice: DeviceChoice) -> torch.device:
    """Map ``auto|cpu|cuda`` to a device, refusing ``cuda`` where there is none."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
    if choice not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {choice!r}: use auto, cpu or cuda")
    return torch.device(choice)


def _batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
    return [
        (
            torch.from_numpy(x[order[i : i + batch_size]]),
            torch.from_numpy(y[order[i : i + batch_size]]),
        )
        for i in range(0, len(x), batch_size)
    ]


def train(
    split: Split,
    spec: ModelSpec,
    config: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train a freshly built model on ``split.train_*`` and evaluate on ``split.test_*``.

    Raises:
        TrainingError: the loss became NaN or infinite.
    """
    if config.epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {config.epochs}")
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = build_model(spec).to(device)
    use_amp = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(len(split.train_x) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    loss_value = float("nan")
    for epoch in range(config.epochs):
        model.train()
        total, count = 0.0, 0
        for xb, yb in _batches(split.train_x, split.train_y, config.batch_size, rng):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                loss = loss_fn(model(xb), yb)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += float(loss.detach()) * len(yb)
            count += len(yb)
        loss_value = total / count
        if not math.isfinite(loss_value):
            raise TrainingError(f"training loss became {loss_value} in epoch {epoch + 1}")
        log.debug("epoch %d/%d loss %.4f", epoch + 1, config.epochs, loss_value)
        if on_epoch is not None:
            on_epoch(epoch + 1, config.epochs, loss_value)
    seconds = time.perf_counter() - started
    model = model.cpu().eval()
    train_acc, _ = evaluate_torch(model, split.train_x, split.train_y)
    test_acc, test_loss = evaluate_torch(model, split.test_x, split.test_y)
    metrics: dict[str, float | int | str] = {
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "train_loss": loss_value,
        "test_loss": test_loss,
        "epochs": config.epochs,
        "seconds": round(seconds, 3),
        "device": device.type,
        "amp": use_amp,
        "seed": config.seed,
        "train_samples": len(split.train_x),
        "test_samples": len(split.test_x),
    }
    log.info("trained %s: test accuracy %.4f in %.1fs on %s", spec.arch, test_acc, seconds, device)
    return TrainResult(model=model, spec=spec, metrics=metrics)


@torch.no_grad()
def evaluate_torch(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` (on its current device) over ``x, y``."""
    model.eval()
    device = next(model.parameters()).device
    correct, loss_sum = 0, 0.0
    for xb, yb in _batches(x, y, 512, None):
        logits = model(xb.to(device)).float().cpu()
        loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return correct / len(y), loss_sum / len(y)

"""Train a model with torch, in one process or as one rank of a DistributedDataParallel run.

- Devices: CUDA with automatic mixed precision (bf16 where the GPU supports it, else fp16
  with a gradient scaler) and channels-last memory for image models; CPU otherwise.
- Distributed: when ``torch.distributed`` is initialized (``fedge cloud train --nproc``
  launches ranks through torchrun), the model is wrapped in DDP and each step's global
  batch of ``batch_size`` samples is divided among the ranks. Every rank draws the same
  permutation, so N ranks see exactly the batches one process would: the runs differ only
  by float summation order (and dropout draws).
- Gradient accumulation: ``accumulate`` micro-batches per optimizer step (DDP syncs
  gradients only on the last).
- Checkpoints every epoch in ``checkpoint_dir``; ``resume`` continues from the last one.
- Distillation: with a ``teacher``, the loss is ``(1 - alpha) * CE + alpha * T^2 * KL``
  between temperature-softened teacher and student distributions (Hinton et al., 2015).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cloud.data import Split
from cloud.training import checkpoint
from cloud.training.models import ModelSpec, build_model
from shared.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cpu", "cuda"]
#: Called after each epoch with (epoch, epochs, train_loss).
EpochCallback = Callable[[int, int, float], None]
#: Called after each optimizer step with (epoch, step); may raise to abort (tests use it
#: to stop a run mid-epoch).
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (``batch_size`` is the global batch)."""

    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    device: DeviceChoice = "auto"
    seed: int = 0
    accumulate: int = 1
    temperature: float = 4.0
    distill_alpha: float = 0.7


@dataclass
class TrainResult:
    """A trained model and what was measured while training it."""

    model: nn.Module
    spec: ModelSpec
    metrics: dict[str, float | int | str] = field(default_factory=dict)


def resolve_device(choice: DeviceChoice) -> torch.device:
    """Map ``auto|cpu|cuda`` to a device, refusing ``cuda`` where there is none.

    Under DDP on CUDA each rank takes the GPU of its ``LOCAL_RANK``.
    """
    if choice not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {choice!r}: use auto, cpu or cuda")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if dist.is_initialized():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cuda")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that support it, fp16 on other GPUs, none on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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


def _rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float, alpha: float
) -> torch.Tensor:
    """``(1 - alpha) * CE(student, labels) + alpha * t^2 * KL(teacher_t || student_t)``."""
    ce = nn.functional.cross_entropy(student, labels)
    kl = nn.functional.kl_div(
        nn.functional.log_softmax(student / t, dim=1),
        nn.functional.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - alpha) * ce + alpha * t * t * kl


def train(
    split: Split,
    spec: ModelSpec,
    config: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
    on_step: StepCallback | None = None,
    teacher: nn.Module | None = None,
    initial: nn.Module | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``initial`` (or a freshly built model) on ``split.train_*``, evaluate on
    ``split.test_*``.

    Raises:
        TrainingError: the loss became NaN or infinite.
        ConfigError: bad hyper-parameters, or a checkpoint that does not match.
    """
    if config.epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {config.epochs}")
    if config.accumulate < 1:
        raise ConfigError(f"accumulate must be >= 1, got {config.accumulate}")
    rank, world = _rank_world()
    if config.batch_size < world:
        raise ConfigError(f"batch size {config.batch_size} is smaller than {world} ranks")
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = (initial if initial is not None else build_model(spec)).to(device)
    channels_last = device.type == "cuda" and len(spec.input_shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    # The teacher is frozen and the inputs are not augmented, so its logits are computed
    # once for the whole training set instead of once per batch per epoch.
    soft_targets = None if teacher is None else _logits(teacher, split.train_x, device)
    half = amp_dtype(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    batches_per_epoch = math.ceil(len(split.train_x) / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.accumulate)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch
    )
    scaler = torch.amp.GradScaler("cuda", enabled=half is torch.float16)
    rng = np.random.default_rng(config.seed)
    key = checkpoint.fingerprint(
        {
            "spec": spec.to_dict(),
            "config": asdict(config),
            "world": world,
            "train": len(split.train_x),
            "distill": teacher is not None,
        }
    )
    start_epoch = 0
    if resume:
        if checkpoint_dir is None:
            raise ConfigError("--resume needs a checkpoint directory")
        saved = checkpoint.load(checkpoint_dir, key)
        if saved is not None:
            model.load_state_dict(saved.state["model"])
            optimizer.load_state_dict(saved.state["optimizer"])
            scheduler.load_state_dict(saved.state["scheduler"])
            scaler.load_state_dict(saved.state["scaler"])
            rng.bit_generator.state = saved.state["numpy_rng"]
            torch.set_rng_state(saved.state["torch_rng"])
            start_epoch = saved.epoch
            log.info("resuming after epoch %d from %s", start_epoch, checkpoint_dir)
    started = time.perf_counter()
    loss_value = float("nan")
    epoch_seconds: list[float] = []
    for epoch in range(start_epoch, config.epochs):
        net.train()
        epoch_started = time.perf_counter()
        total = torch.zeros(2, dtype=torch.float64)
        order = rng.permutation(len(split.train_x))
        # A last global batch smaller than the rank count would leave a rank idle (DDP
        # needs every rank in every step): drop it.
        batches = [
            idx[rank::world]
            for idx in (
                order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)
            )
            if len(idx) >= world
        ]
        for i, idx in enumerate(batches):
            xb = torch.from_numpy(split.train_x[idx]).to(device)
            yb = torch.from_numpy(split.train_y[idx]).to(device)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            last_micro = (i + 1) % config.accumulate == 0 or i + 1 == len(batches)
            sync = (
                cast(nn.parallel.DistributedDataParallel, net).no_sync()
                if world > 1 and not last_micro
                else _null()
            )
            with sync:
                with torch.autocast(device.type, dtype=half, enabled=half is not None):
                    logits = net(xb)
                soft = None if soft_targets is None else soft_targets[idx].to(device)
                if soft is not None:
                    loss = distill_loss(
                        logits.float(),
                        soft.float(),
                        yb,
                        config.temperature,
                        config.distill_alpha,
                    )
                else:
                    loss = nn.functional.cross_entropy(logits.float(), yb)
                scaler.scale(loss / config.accumulate).backward()  # type: ignore[no-untyped-call]
            total += torch.tensor([float(loss.detach()) * len(yb), len(yb)], dtype=torch.float64)
            if last_micro:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if on_step is not None:
                    on_step(epoch + 1, i // config.accumulate + 1)
        if world > 1:
            dist.all_reduce(total)
        loss_value = float(total[0] / total[1])
        if not math.isfinite(loss_value):
            raise TrainingError(f"training loss became {loss_value} in epoch {epoch + 1}")
        epoch_seconds.append(time.perf_counter() - epoch_started)
        if checkpoint_dir is not None and rank == 0:
            checkpoint.save(
                checkpoint_dir,
                epoch + 1,
                key,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "numpy_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                },
            )
        if world > 1:
            dist.barrier()  # no rank runs ahead of the checkpoint it may resume from
        log.debug("epoch %d/%d loss %.4f", epoch + 1, config.epochs, loss_value)
        if on_epoch is not None:
            on_epoch(epoch + 1, config.epochs, loss_value)
    seconds = time.perf_counter() - started
    model = model.cpu().eval()
    if channels_last:
        model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    train_acc, _ = evaluate_torch(model, split.train_x, split.train_y)
    test_acc, test_loss = evaluate_torch(model, split.test_x, split.test_y)
    metrics: dict[str, float | int | str] = {
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "train_loss": loss_value,
        "test_loss": test_loss,
        "epochs": config.epochs,
        "resumed_after_epoch": start_epoch,
        "seconds": round(seconds, 3),
        "seconds_per_epoch": round(float(np.mean(epoch_seconds)), 3) if epoch_seconds else 0.0,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": str(half).removeprefix("torch.") if half is not None else "off",
        "channels_last": channels_last,
        "world_size": world,
        "accumulate": config.accumulate,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_samples": len(split.train_x),
        "test_samples": len(split.test_x),
    }
    log.info("trained %s: test accuracy %.4f in %.1fs on %s", spec.arch, test_acc, seconds, device)
    return TrainResult(model=model, spec=spec, metrics=metrics)


class _null:
    """A no-op context manager (``contextlib.nullcontext`` without its generic typing)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@torch.no_grad()
def _logits(model: nn.Module, x: np.ndarray, device: torch.device) -> torch.Tensor:
    """``model``'s float logits over ``x`` (on the CPU), in eval mode, in chunks."""
    model = model.to(device).eval()
    return torch.cat(
        [model(xb.to(device)).float().cpu() for xb, _ in _batches(x, x[:, :0], 256, None)]
    )


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

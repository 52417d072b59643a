"""Global magnitude pruning: zero the smallest weights, fine-tune, make it permanent.

``torch.nn.utils.prune.global_unstructured`` ranks the weights of every ``Conv``/``Linear``
layer *together* by magnitude (so layers with many redundant weights lose more), masks the
smallest ``amount`` of them, and fine-tuning lets the rest compensate while the mask holds
the zeros. ``prune.remove`` then folds the mask into plain weights. Sparse weights do not
shrink a ``.tflite`` file (it stores them dense), but they compress: the delivery plane's
zstd turns runs of zero bytes into almost nothing, which is what an over-the-air update
pays.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from cloud.data import Split
from cloud.training.models import ModelSpec
from cloud.training.trainer import EpochCallback, TrainConfig, train
from shared.errors import ConfigError

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class PruneResult:
    """The pruned, fine-tuned model and what the pruning reached."""

    model: nn.Module
    amount: float
    sparsity: float
    metrics: dict[str, float | int | str]


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` for every convolution and linear layer."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over the prunable weights."""
    zeros = total = 0
    for module, name in prunable_weights(model):
        weight: torch.Tensor = getattr(module, name)
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / total if total else 0.0


def prune_and_finetune(
    model: nn.Module,
    split: Split,
    spec: ModelSpec,
    amount: float,
    config: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
) -> PruneResult:
    """Prune ``amount`` (0..1) of the weights globally by L1 magnitude, fine-tune for
    ``config.epochs`` with the mask held, and remove the reparametrization. ``model`` is
    copied, not changed.

    Raises:
        ConfigError: ``amount`` outside ``(0, 1)`` or a model with nothing to prune.
    """
    if not 0.0 < amount < 1.0:
        raise ConfigError(f"--prune must be in (0, 1), got {amount}")
    model = copy.deepcopy(model)  # the caller's model stays as it was
    targets = prunable_weights(model)
    if not targets:
        raise ConfigError(f"{spec.arch} has no convolution or linear layer to prune")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    result = train(split, spec, config, on_epoch=on_epoch, initial=model)
    tuned = result.model
    for module, name in prunable_weights(tuned):
        prune.remove(module, name)  # type: ignore[no-untyped-call]
    reached = sparsity(tuned)
    metrics = {
        **result.metrics,
        "prune_amount": amount,
        "sparsity": round(reached, 6),
        "finetune_epochs": config.epochs,
    }
    return PruneResult(tuned.eval(), amount, reached, metrics)

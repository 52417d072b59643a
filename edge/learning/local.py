"""Local training on the device: a few epochs of SGD, optionally with FedProx's proximal term."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edge.learning.data import LocalData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalTrainConfig:
    """Hyper-parameters the server sends for one round.

    Attributes:
        epochs: Passes over the local data.
        batch_size: Mini-batch size.
        lr: SGD learning rate (momentum 0.9).
        proximal_mu: FedProx weight; ``0`` is plain local SGD (FedAvg).
        seed: Shuffling and dropout seed, so a round is reproducible.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    proximal_mu: float = 0.0
    seed: int = 0


def train_local(model: nn.Module, data: LocalData, config: LocalTrainConfig) -> float:
    """Train ``model`` in place on ``data``; return the mean training loss of the last epoch.

    With ``proximal_mu > 0`` the loss gets ``mu/2 * ||w - w_global||^2`` (FedProx), which
    keeps a client on skewed data from drifting far from the global model it started at.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    global_params = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x_all, y_all = torch.from_numpy(data.x), torch.from_numpy(data.y)
    model.train()
    mean_loss = float("nan")
    for _ in range(config.epochs):
        order = torch.from_numpy(rng.permutation(len(data)))
        total, count = 0.0, 0
        for start in range(0, len(data), config.batch_size):
            idx = order[start : start + config.batch_size]
            xb, yb = x_all[idx], y_all[idx]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            if config.proximal_mu > 0:
                prox = sum(
                    ((p - g) ** 2).sum()
                    for p, g in zip(model.parameters(), global_params, strict=True)
                )
                loss = loss + (config.proximal_mu / 2) * prox
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(yb)
            count += len(yb)
        mean_loss = total / count
        if not math.isfinite(mean_loss):
            log.warning("local loss became %s; the server will reject this update", mean_loss)
            break
    return mean_loss


@torch.no_grad()
def evaluate_local(model: nn.Module, data: LocalData) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``data``."""
    model.eval()
    logits = model(torch.from_numpy(data.x))
    labels = torch.from_numpy(data.y)
    loss = float(nn.functional.cross_entropy(logits, labels))
    accuracy = float((logits.argmax(1) == labels).float().mean())
    return accuracy, loss

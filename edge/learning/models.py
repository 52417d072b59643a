"""The trainable architectures, built from the spec the server sends in its config.

These mirror ``cloud/training/models.py`` layer for layer (the same ``state_dict`` keys and
shapes) because edge may not import cloud. ``tests/federation/test_model_parity.py`` fails if
the two drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LocalModelSpec:
    """What the server says to build: ``cnn`` or ``mlp``, one sample's shape, class count."""

    arch: str
    input_shape: tuple[int, ...]
    num_classes: int


class CompactCNN(nn.Module):
    """Two conv blocks and a small head; pools only while the map is at least 4 wide."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        c_in = channels
        for c_out in (16, 32):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
            if min(height, width) >= 4:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * height * width, 64),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


class MLP(nn.Module):
    """Two hidden layers for feature vectors."""

    def __init__(self, num_features: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # type: ignore[no-any-return]


def build_local_model(spec: LocalModelSpec) -> nn.Module:
    """Build an untrained model for ``spec``.

    Raises:
        ValueError: an architecture a device cannot build (user factories are cloud-only).
    """
    if spec.arch == "cnn" and len(spec.input_shape) == 3:
        c, h, w = spec.input_shape
        return CompactCNN((c, h, w), spec.num_classes)
    if spec.arch == "mlp":
        return MLP(math.prod(spec.input_shape), spec.num_classes)
    raise ValueError(f"a device cannot build architecture {spec.arch!r} {spec.input_shape}")

"""The model zoo: shapes and class counts come from the data, never hard-coded.

A :class:`ModelSpec` is everything needed to rebuild a model from its saved weights: the
architecture (``cnn``, ``mlp``, ``resnet``, ``gru``, ``lstm``, ``transformer`` or a user's
``module:function`` factory), the input shape of one sample, the class count and, for the
built-in families, an optional width (how students are sized to a device class's budget).
It is stored with every registry version.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from cloud.training.resnet import ResNetTeacher
from cloud.training.sequence_models import SEQUENCE_ARCHS, build_sequence_model
from shared.errors import ModelSpecError

IMAGE_ARCHS = ("cnn", "resnet")
BUILTIN_ARCHS = ("cnn", "mlp", "resnet", *SEQUENCE_ARCHS)


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model.

    Attributes:
        arch: One of :data:`BUILTIN_ARCHS` or ``"package.module:function"``.
        input_shape: One sample's shape: ``(C, H, W)``, ``(T, F)`` or ``(F,)``.
        num_classes: Output logits.
        width: Size knob of a built-in family (``cnn``: first conv channels, default 16;
            ``resnet``: stem channels, default 64; ``gru``/``lstm``: hidden units and
            ``transformer``: model dimension, default 64). ``None`` is the default.
    """

    arch: str
    input_shape: tuple[int, ...]
    num_classes: int
    width: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``width`` only when set, so older records read the same)."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        if self.width is None:
            del d["width"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            arch=str(data["arch"]),
            input_shape=tuple(int(d) for d in data["input_shape"]),
            num_classes=int(data["num_classes"]),
            width=None if data.get("width") is None else int(data["width"]),
        )


def default_arch(input_shape: tuple[int, ...]) -> str:
    """``cnn`` for images ``(C, H, W)``, ``gru`` for sequences ``(T, F)``, ``mlp`` for
    feature vectors ``(F,)``."""
    return {3: "cnn", 2: "gru"}.get(len(input_shape), "mlp")


class CompactCNN(nn.Module):
    """Two conv blocks and a small classifier head; sized for microcontroller-class budgets.

    Pooling is applied only while the feature map is at least 4 pixels wide, so the same
    network serves 28x28 MNIST and 8x8 digits.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, base: int = 16) -> None:
        super().__init__()
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        c_in = channels
        for c_out in (base, 2 * base):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
            if min(height, width) >= 4:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * height * width, 4 * base),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(4 * base, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


class MLP(nn.Module):
    """Two hidden layers for tabular/sensor feature vectors."""

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
        out: torch.Tensor = self.net(x.flatten(1))
        return out


def build_model(spec: ModelSpec) -> nn.Module:
    """Build an untrained model for ``spec``.

    Raises:
        ModelSpecError: unknown architecture, a shape the architecture cannot take, or a
            user factory that cannot be imported, fails, or returns no ``nn.Module``.
    """
    if spec.num_classes < 2:
        raise ModelSpecError(f"num_classes must be >= 2, got {spec.num_classes}")
    if spec.width is not None and spec.width < 1:
        raise ModelSpecError(f"width must be >= 1, got {spec.width}")
    if spec.arch in IMAGE_ARCHS:
        if len(spec.input_shape) != 3:
            raise ModelSpecError(
                f"{spec.arch} needs image inputs (C,H,W), got {spec.input_shape}; for "
                "(T, F) series use gru, lstm or transformer, or read them as images"
            )
        c, h, w = spec.input_shape
        if spec.arch == "resnet":
            return ResNetTeacher((c, h, w), spec.num_classes, width=spec.width or 64)
        return CompactCNN((c, h, w), spec.num_classes, base=spec.width or 16)
    if spec.arch in SEQUENCE_ARCHS:
        if len(spec.input_shape) != 2:
            raise ModelSpecError(
                f"{spec.arch} needs sequence inputs (T, F), got {spec.input_shape}"
            )
        t, f = spec.input_shape
        return build_sequence_model(spec.arch, (t, f), spec.num_classes, spec.width)
    if spec.arch == "mlp":
        return MLP(math.prod(spec.input_shape), spec.num_classes)
    if ":" in spec.arch:
        return _build_from_factory(spec)
    raise ModelSpecError(
        f"unknown model {spec.arch!r}: use one of {', '.join(BUILTIN_ARCHS)} or module:function"
    )


def _build_from_factory(spec: ModelSpec) -> nn.Module:
    module_name, _, func_name = spec.arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSpecError(
            f"cannot import {module_name!r} for --model {spec.arch}: {exc}"
        ) from exc
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ModelSpecError(f"{module_name!r} has no callable {func_name!r}")
    try:
        model = factory(input_shape=spec.input_shape, num_classes=spec.num_classes)
    except Exception as exc:  # a user's code may raise anything; report it, keep our type
        raise ModelSpecError(f"model factory {spec.arch} failed: {exc!r}") from exc
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"model factory {spec.arch} returned {type(model).__name__}, not a torch.nn.Module"
        )
    with torch.no_grad():
        try:
            out = model.eval()(torch.zeros(1, *spec.input_shape))
        except Exception as exc:
            raise ModelSpecError(f"model from {spec.arch} fails on a dummy input: {exc!r}") from exc
    if tuple(out.shape) != (1, spec.num_classes):
        raise ModelSpecError(
            f"model from {spec.arch} outputs shape {tuple(out.shape)}, "
            f"expected (1, {spec.num_classes})"
        )
    return model

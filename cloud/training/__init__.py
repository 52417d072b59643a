"""Centralized training in torch: the model zoo and the trainer."""

from cloud.training.models import ModelSpec, build_model, default_arch
from cloud.training.trainer import TrainConfig, TrainResult, evaluate_torch, train

__all__ = [
    "ModelSpec",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "default_arch",
    "evaluate_torch",
    "train",
]

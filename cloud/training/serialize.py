"""torch weights ↔ bytes, for the registry's ``torch`` artifacts."""

from __future__ import annotations

import io

import torch
from torch import nn

from cloud.training.models import ModelSpec, build_model
from shared.errors import ModelSpecError


def model_to_bytes(model: nn.Module) -> bytes:
    """Serialize a model's ``state_dict`` (tensors only, loadable with ``weights_only``)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def model_from_bytes(spec: ModelSpec, data: bytes) -> nn.Module:
    """Rebuild the model for ``spec`` and load weights saved by :func:`model_to_bytes`.

    Raises:
        ModelSpecError: the weights do not fit the architecture.
    """
    model = build_model(spec)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ModelSpecError(f"stored weights do not fit {spec.arch}: {exc}") from exc
    return model.eval()

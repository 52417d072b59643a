"""Edge learning: the device builds the cloud's architectures, and FedProx holds it close."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cloud.data import load_dataset
from cloud.training import ModelSpec, build_model
from edge.learning.data import LocalData
from edge.learning.local import LocalTrainConfig, evaluate_local, train_local
from edge.learning.models import LocalModelSpec, build_local_model


@pytest.mark.parametrize(
    ("arch", "shape"), [("cnn", (1, 8, 8)), ("cnn", (1, 28, 28)), ("mlp", (64,))]
)
def test_edge_models_match_cloud_state_dicts(arch: str, shape: tuple[int, ...]) -> None:
    cloud = build_model(ModelSpec(arch, shape, 10)).state_dict()
    edge = build_local_model(LocalModelSpec(arch, shape, 10))
    edge_state = edge.state_dict()
    assert {k: v.shape for k, v in edge_state.items()} == {k: v.shape for k, v in cloud.items()}
    edge.load_state_dict(cloud)  # the cloud's weights run on the device unchanged
    x = torch.zeros(2, *shape)
    assert edge.eval()(x).shape == (2, 10)


def _digits_share() -> LocalData:
    data = load_dataset("digits")
    return LocalData(data.x[:400], data.y[:400])


def _drift(mu: float) -> float:
    torch.manual_seed(0)
    model = build_local_model(LocalModelSpec("cnn", (1, 8, 8), 10))
    start = [p.detach().clone() for p in model.parameters()]
    train_local(model, _digits_share(), LocalTrainConfig(epochs=2, lr=0.05, proximal_mu=mu))
    return float(sum(((p - s) ** 2).sum() for p, s in zip(model.parameters(), start, strict=True)))


def test_fedprox_term_keeps_the_local_model_closer_to_the_global_one() -> None:
    assert _drift(mu=1.0) < 0.5 * _drift(mu=0.0)


def test_local_training_learns() -> None:
    data = _digits_share()
    torch.manual_seed(0)
    model = build_local_model(LocalModelSpec("cnn", (1, 8, 8), 10))
    before, _ = evaluate_local(model, data)
    loss = train_local(model, data, LocalTrainConfig(epochs=5, lr=0.05))
    after, _ = evaluate_local(model, data)
    assert np.isfinite(loss)
    assert after > before + 0.3

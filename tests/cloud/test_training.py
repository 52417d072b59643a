"""Real (short) torch training, the model zoo and user model factories."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cloud.data import load_dataset, stratified_split
from cloud.training import ModelSpec, TrainConfig, build_model, train
from cloud.training.serialize import model_from_bytes, model_to_bytes
from shared.errors import ConfigError, ModelSpecError


def test_trained_digits_model_is_registered_and_learns(trained_digits) -> None:  # type: ignore[no-untyped-def]
    reg, version = trained_digits
    assert version.source == "trained"
    assert version.metrics["test_accuracy"] > 0.9  # 10 classes: chance is 0.1
    assert version.metrics["device"] == "cpu" and version.metrics["epochs"] == 15
    assert version.data["source"] == "digits" and version.data["seed"] == 0
    weights = reg.read_artifact(version.artifact("torch", "fp32"))
    model = model_from_bytes(ModelSpec.from_dict(version.spec), weights)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_training_is_reproducible_by_seed() -> None:
    split = stratified_split(load_dataset("digits"), seed=1)
    spec = ModelSpec("mlp", (1, 8, 8), 10)
    a = train(split, spec, TrainConfig(epochs=1, seed=5))
    b = train(split, spec, TrainConfig(epochs=1, seed=5))
    assert model_to_bytes(a.model) == model_to_bytes(b.model)


@pytest.mark.parametrize(
    ("shape", "arch"), [((1, 28, 28), "cnn"), ((3, 8, 8), "cnn"), ((12,), "mlp")]
)
def test_zoo_shapes_follow_the_data(shape: tuple[int, ...], arch: str) -> None:
    model = build_model(ModelSpec(arch, shape, 7))
    assert model(torch.zeros(3, *shape)).shape == (3, 7)


def test_cuda_refused_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    split = stratified_split(load_dataset("digits"), seed=0)
    with pytest.raises(ConfigError, match="no CUDA device"):
        train(split, ModelSpec("mlp", (1, 8, 8), 10), TrainConfig(epochs=1, device="cuda"))


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent("""
        import torch
        def tiny(input_shape, num_classes):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_classes))
        def not_a_module(input_shape, num_classes):
            return "nope"
        def wrong_output(input_shape, num_classes):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        def explodes(input_shape, num_classes):
            raise RuntimeError("boom")
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_models"
    sys.modules.pop("my_models", None)


def test_user_factory_trains(user_module: str) -> None:
    split = stratified_split(load_dataset("digits"), seed=0)
    result = train(split, ModelSpec(f"{user_module}:tiny", (1, 8, 8), 10), TrainConfig(epochs=10))
    assert result.metrics["test_accuracy"] > 0.8


@pytest.mark.parametrize(
    ("func", "message"),
    [
        ("not_a_module", "returned str, not a torch.nn.Module"),
        ("wrong_output", "outputs shape (1, 3), expected (1, 10)"),
        ("explodes", "failed: RuntimeError('boom')"),
        ("missing", "has no callable 'missing'"),
    ],
)
def test_bad_user_factories(user_module: str, func: str, message: str) -> None:
    with pytest.raises(ModelSpecError) as info:
        build_model(ModelSpec(f"{user_module}:{func}", (1, 8, 8), 10))
    assert message in str(info.value)


def test_unknown_arch_and_module() -> None:
    with pytest.raises(ModelSpecError, match="unknown model 'vgg'"):
        build_model(ModelSpec("vgg", (1, 8, 8), 10))
    with pytest.raises(ModelSpecError, match="cannot import 'no_such_module_x'"):
        build_model(ModelSpec("no_such_module_x:f", (1, 8, 8), 10))
    with pytest.raises(ModelSpecError, match="cnn needs image inputs"):
        build_model(ModelSpec("cnn", (12,), 10))

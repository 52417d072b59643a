"""Training that scales out and resumes; pruning; distillation's loss and lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cloud.data import load_dataset, stratified_split
from cloud.training.distributed import Launch, run_distributed
from cloud.training.models import ModelSpec, build_model
from cloud.training.prune import prune_and_finetune, sparsity
from cloud.training.trainer import TrainConfig, distill_loss, train
from shared.errors import ConfigError


class _Crash(Exception):
    pass


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    data = load_dataset("digits")
    return data, stratified_split(data, seed=0)


def test_distill_loss_is_cross_entropy_when_student_matches_teacher() -> None:
    logits = torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    ce = torch.nn.functional.cross_entropy(logits, labels)
    loss = distill_loss(logits, logits.clone(), labels, t=4.0, alpha=0.7)
    torch.testing.assert_close(loss, 0.3 * ce)
    # A disagreeing teacher adds a positive KL term.
    assert distill_loss(logits, -logits, labels, t=4.0, alpha=0.7) > loss


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(digits) -> None:  # type: ignore[no-untyped-def]
    data, split = digits
    # The MLP has no dropout: the two runs see the same global batches and differ only
    # by float summation order.
    spec = ModelSpec("mlp", data.input_shape, data.num_classes)
    config = TrainConfig(epochs=3, device="cpu", seed=0)
    single = train(split, spec, config)
    ddp = run_distributed("digits", "image", spec, config, Launch(nproc=2), timeout_s=300)
    assert ddp.metrics["world_size"] == 2
    assert ddp.metrics["backend"] == "gloo"
    assert ddp.weights is not None
    diff = abs(float(ddp.metrics["test_accuracy"]) - float(single.metrics["test_accuracy"]))
    assert diff * 100 <= 0.5


@pytest.mark.slow
def test_run_stopped_mid_epoch_resumes_to_the_same_result(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, split = digits
    spec = ModelSpec("cnn", data.input_shape, data.num_classes, width=8)
    config = TrainConfig(epochs=3, device="cpu", seed=1)
    uninterrupted = train(split, spec, config)

    def crash_in_epoch_two(epoch: int, step: int) -> None:
        if epoch == 2 and step == 5:
            raise _Crash

    with pytest.raises(_Crash):
        train(split, spec, config, on_step=crash_in_epoch_two, checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").exists()
    resumed = train(split, spec, config, checkpoint_dir=tmp_path, resume=True)
    assert resumed.metrics["resumed_after_epoch"] == 1
    diff = abs(
        float(resumed.metrics["test_accuracy"]) - float(uninterrupted.metrics["test_accuracy"])
    )
    assert diff * 100 <= 0.5
    # Other hyper-parameters: the checkpoint is refused, not mixed in.
    with pytest.raises(ConfigError, match="other data, model or hyper-parameters"):
        train(
            split,
            spec,
            TrainConfig(epochs=4, device="cpu", seed=1),
            checkpoint_dir=tmp_path,
            resume=True,
        )


@pytest.mark.slow
def test_gradient_accumulation_trains(digits) -> None:  # type: ignore[no-untyped-def]
    data, split = digits
    spec = ModelSpec("mlp", data.input_shape, data.num_classes)
    result = train(split, spec, TrainConfig(epochs=2, batch_size=32, accumulate=2, device="cpu"))
    assert result.metrics["accumulate"] == 2
    assert float(result.metrics["test_accuracy"]) > 0.5


@pytest.mark.slow
def test_pruning_reaches_the_sparsity_it_claims(digits) -> None:  # type: ignore[no-untyped-def]
    data, split = digits
    spec = ModelSpec("cnn", data.input_shape, data.num_classes)
    model = train(split, spec, TrainConfig(epochs=2, device="cpu")).model.train()
    result = prune_and_finetune(model, split, spec, 0.8, TrainConfig(epochs=1, device="cpu"))
    measured = sparsity(result.model)
    assert result.sparsity == pytest.approx(measured)
    assert measured >= 0.8 - 1e-3  # global: 80% of all conv+linear weights are zero
    # Permanent: plain weights, no mask left, and the state dict loads into a fresh model.
    names = set(result.model.state_dict())
    assert not any(n.endswith(("weight_orig", "weight_mask")) for n in names)
    build_model(spec).load_state_dict(result.model.state_dict())
    with pytest.raises(ConfigError, match="must be in"):
        prune_and_finetune(model, split, spec, 1.5, TrainConfig(epochs=1))
    assert np.isfinite(result.metrics["test_accuracy"])

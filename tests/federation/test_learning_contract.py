"""The typed learning contract: symmetric converters, strict types, one set of defaults."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, MetricRecord

from cloud.federation import defaults
from cloud.federation.plan import FederationPlan
from edge.learning.client_app import local_train_config
from shared.protocol.learning import (
    LearningContractError,
    TrainInstruction,
    UpdateReply,
    train_instruction_from_config,
    train_instruction_to_config,
    update_reply_from_records,
    update_reply_to_records,
)

SPEC = {"arch": "cnn", "input-shape": [1, 8, 8], "num-classes": 10}


def test_train_instruction_round_trips_through_a_config_record() -> None:
    instruction = train_instruction_from_config(
        {**SPEC, "run-id": "run-1", "server-round": 3, "lr": 0.01, "max-examples": 500}
    )
    config = train_instruction_to_config(instruction)
    assert isinstance(config, ConfigRecord)
    assert config["input-shape"] == [1, 8, 8]
    assert train_instruction_from_config(config) == instruction


def test_update_reply_round_trips_through_records() -> None:
    reply = UpdateReply(
        run_id="run-1", server_round=2, mode="int8", payload=b"\x01\x02", num_examples=7
    )
    update, metrics = update_reply_to_records(reply)
    assert isinstance(update, ConfigRecord) and isinstance(metrics, MetricRecord)
    assert "num-examples" in metrics and "payload" in update
    assert update_reply_from_records(update, metrics) == reply


def test_a_config_without_hyper_parameters_trains_as_the_plan_says() -> None:
    """The two sides used to disagree (device fallback 1 epoch x batch 32)."""
    local = local_train_config(train_instruction_from_config(SPEC), partition=0)
    plan = FederationPlan()
    assert (local.epochs, local.batch_size) == (plan.local_epochs, plan.batch_size)
    assert (local.epochs, local.batch_size) == (defaults.LOCAL_EPOCHS, defaults.BATCH_SIZE)


@pytest.mark.parametrize(
    "bad",
    [
        {"local-epochs": "2"},  # strict: no string-to-int coercion
        {"batch-size": 0},
        {"update-mode": "zip"},
        {"input-shape": "1,x,8"},
        {"num-classes": True},
    ],
)
def test_ill_typed_instructions_are_refused_with_a_reason_code(bad: dict[str, object]) -> None:
    with pytest.raises(LearningContractError) as caught:
        train_instruction_from_config({**SPEC, **bad})
    assert caught.value.code == "bad_learning_message"


def test_replies_without_a_positive_example_count_or_a_payload_are_refused() -> None:
    update = {"run-id": "r", "server-round": 1, "mode": "fp32", "payload": b"x"}
    with pytest.raises(LearningContractError):
        update_reply_from_records(update, {"num-examples": 0})
    with pytest.raises(LearningContractError):
        update_reply_from_records({**update, "payload": None}, {"num-examples": 3})
    assert TrainInstruction.model_config["frozen"]

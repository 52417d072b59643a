"""The Flower ClientApp run by every training-capable edge device (and by simulations).

Each train round: rebuild the model from the spec in the server's config, load the global
weights, train on local data, and reply with the *delta* (local - global) compressed by
:mod:`shared.compression.updates` — never the raw weights. The reply carries

* ``update`` (ConfigRecord): ``payload`` bytes, ``mode``, ``run-id``, ``server-round``;
* ``metrics`` (MetricRecord): ``num-examples``, ``train-loss``, ``raw-bytes``,
  ``payload-bytes``.

The config is a :class:`~shared.protocol.learning.TrainInstruction` and the reply an
:class:`~shared.protocol.learning.UpdateReply` (``docs/protocol.md`` §17): keys, types and
defaults live there, not here. With ``seal-updates`` (robust strategies) the update goes as
``sealed`` + ``device-id`` instead of ``payload``, sealed to the coordinator and signed
with the device key (``shared.crypto.sealed_update``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from edge.keystore import load_device_keys
from edge.learning.data import LocalData, load_local_data, partition_path
from edge.learning.local import LocalTrainConfig, evaluate_local, train_local
from edge.learning.models import LocalModelSpec, build_local_model
from edge.learning.secagg_mod import fedge_secagg_mod
from shared.compression import UpdateMode, encode_update
from shared.crypto.sealed_update import seal_update
from shared.protocol.learning import (
    TrainInstruction,
    UpdateReply,
    train_instruction_from_config,
    update_reply_to_records,
)

log = logging.getLogger(__name__)

#: Where error-feedback residuals persist between rounds in the node's context.
RESIDUAL_KEY = "fedge-residual"

app = ClientApp()


def local_data(context: Context, config: Mapping[str, Any]) -> LocalData:
    """The device's data: an explicit node path, else the simulation partition."""
    node = context.node_config
    if "data-path" in node:
        return load_local_data(str(node["data-path"]))
    if "partition-dir" in config and "partition-id" in node:
        return load_local_data(
            partition_path(str(config["partition-dir"]), int(cast(int, node["partition-id"])))
        )
    raise ValueError("no local data: set node_config data-path (or partition-dir in simulation)")


def device_bundle(context: Context, config: Mapping[str, Any]) -> Path:
    """The device's enrollment bundle: ``node_config["key-dir"]``, or in simulation
    ``<bundle-root>/sim-<partition-id>`` (virtual devices enrolled by the coordinator)."""
    node = context.node_config
    if "key-dir" in node:
        return Path(str(node["key-dir"]))
    if "bundle-root" in config and "partition-id" in node:
        return Path(str(config["bundle-root"])) / f"sim-{int(cast(int, node['partition-id']))}"
    raise ValueError("sealed updates need node_config key-dir (the enrollment bundle)")


def model_spec(config: Mapping[str, Any]) -> LocalModelSpec:
    """The architecture the server named in its train config (see the learning contract)."""
    instruction = train_instruction_from_config(config)
    return LocalModelSpec(instruction.arch, instruction.input_shape, instruction.num_classes)


def model_with(arrays: ArrayRecord, config: Mapping[str, Any]) -> nn.Module:
    """The architecture the server named, holding the global weights it sent."""
    model = build_local_model(model_spec(config))
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fine-tune the global model locally and reply with a compressed delta."""
    config = cast(ConfigRecord, msg.content["config"])
    instruction = train_instruction_from_config(config)
    arrays = cast(ArrayRecord, msg.content["arrays"])
    data = local_data(context, config)
    model = model_with(arrays, config)
    partition = int(cast(int, context.node_config.get("partition-id", 0)))
    loss = train_local(model, data, local_train_config(instruction, partition))

    global_state = arrays.to_numpy_ndarrays()
    names = list(arrays.keys())
    local_state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    delta = {
        name: local_state[name].astype(np.float32) - g.astype(np.float32)
        for name, g in zip(names, global_state, strict=True)
    }
    mode: UpdateMode = instruction.update_mode
    use_feedback = instruction.error_feedback
    residual = None
    if use_feedback and RESIDUAL_KEY in context.state:
        stored = cast(ArrayRecord, context.state[RESIDUAL_KEY])
        residual = dict(zip(stored.keys(), stored.to_numpy_ndarrays(), strict=True))
    encoded = encode_update(
        delta, mode=mode, topk_fraction=instruction.topk_fraction, residual=residual
    )
    if use_feedback:
        context.state[RESIDUAL_KEY] = ArrayRecord(
            {k: Array(v) for k, v in encoded.residual.items()}
        )
    log.info(
        "round %d: %d examples, loss %.4f, %d bytes up (%.2fx float32)",
        instruction.server_round,
        len(data),
        loss,
        len(encoded.payload),
        encoded.ratio,
    )
    fields: dict[str, Any] = {
        "run_id": instruction.run_id,
        "server_round": instruction.server_round,
        "mode": mode,
        "num_examples": len(data),
        # A diverged loss still reports; the server rejects the non-finite delta.
        "train_loss": float(loss),
        "raw_bytes": encoded.raw_bytes,
        "payload_bytes": len(encoded.payload),
    }
    if instruction.seal_updates:
        # The server sees individual updates (robust strategy): seal and sign them.
        keys = load_device_keys(device_bundle(context, config))
        fields["device_id"] = keys.device_id
        fields["sealed"] = seal_update(
            encoded.payload,
            coordinator=keys.coordinator_box,
            signer=keys.signing_key,
            run_id=instruction.run_id,
            server_round=instruction.server_round,
            device_id=keys.device_id,
        )
    else:
        fields["payload"] = encoded.payload
    update, metrics = update_reply_to_records(UpdateReply(**fields))
    return Message(content=RecordDict({"update": update, "metrics": metrics}), reply_to=msg)


def local_train_config(instruction: TrainInstruction, partition: int) -> LocalTrainConfig:
    """Local SGD settings of an instruction; seeded by round and partition (reproducible)."""
    return LocalTrainConfig(
        epochs=instruction.local_epochs,
        batch_size=instruction.batch_size,
        lr=instruction.lr,
        proximal_mu=instruction.proximal_mu,
        seed=instruction.server_round * 1000 + partition,
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on local data (federated evaluation)."""
    config = cast(ConfigRecord, msg.content["config"])
    data = local_data(context, config)
    model = model_with(cast(ArrayRecord, msg.content["arrays"]), config)
    accuracy, loss = evaluate_local(model, data)
    metrics = MetricRecord({"num-examples": len(data), "accuracy": accuracy, "loss": loss})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


#: The same device logic under fedge SecAgg (``edge.learning.client_app:secure_app``): the
#: mod runs the protocol and, in its masked-input stage, calls ``train`` above.
secure_app = ClientApp(mods=[fedge_secagg_mod])
secure_app.train()(train)
secure_app.evaluate()(evaluate)

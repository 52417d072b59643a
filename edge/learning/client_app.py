"""The Flower ClientApp run by every training-capable edge device (and by simulations).

Each train round: rebuild the model from the spec in the server's config, load the global
weights, train on local data, and reply with the *delta* (local - global) compressed by
:mod:`shared.compression.updates` — never the raw weights. The reply carries

* ``update`` (ConfigRecord): ``payload`` bytes, ``mode``, ``run-id``, ``server-round``;
* ``metrics`` (MetricRecord): ``num-examples``, ``train-loss``, ``raw-bytes``,
  ``payload-bytes``.

Config keys read (all optional except the model spec): ``arch``, ``input-shape``,
``num-classes``, ``local-epochs``, ``lr``, ``batch-size``, ``proximal-mu`` (FedProx),
``update-mode`` (``fp32|int8|topk``), ``topk-fraction``, ``error-feedback``,
``partition-dir`` (simulation only), ``run-id``, ``server-round``, ``seal-updates`` (robust
strategies: the update goes as ``sealed`` + ``device-id`` instead of ``payload``, sealed to
the coordinator and signed with the device key; see ``shared.crypto.sealed_update``) and
``bundle-root`` (simulation only: where the virtual devices' bundles are).
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
from shared.compression import UPDATE_MODES, UpdateMode, encode_update
from shared.crypto.sealed_update import seal_update
from shared.numbers import parse_ascii_uint

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
    """The architecture the server named in its train config.

    ``input-shape`` is a list, or ``"1,8,8"`` from the legacy (SecAgg+) API, whose config
    values must be scalars.
    """
    raw = config["input-shape"]
    shape = (
        [parse_ascii_uint(d, what="input-shape", max_value=1 << 20) for d in raw.split(",")]
        if isinstance(raw, str)
        else cast(list[int], raw)
    )
    return LocalModelSpec(
        str(config["arch"]), tuple(int(d) for d in shape), int(cast(int, config["num-classes"]))
    )


def model_with(arrays: ArrayRecord, config: Mapping[str, Any]) -> nn.Module:
    """The architecture the server named, holding the global weights it sent."""
    model = build_local_model(model_spec(config))
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fine-tune the global model locally and reply with a compressed delta."""
    config = cast(ConfigRecord, msg.content["config"])
    arrays = cast(ArrayRecord, msg.content["arrays"])
    data = local_data(context, config)
    model = model_with(arrays, config)
    server_round = int(cast(int, config.get("server-round", 0)))
    partition = int(cast(int, context.node_config.get("partition-id", 0)))
    train_config = LocalTrainConfig(
        epochs=int(cast(int, config.get("local-epochs", 1))),
        batch_size=int(cast(int, config.get("batch-size", 32))),
        lr=float(cast(float, config.get("lr", 0.05))),
        proximal_mu=float(cast(float, config.get("proximal-mu", 0.0))),
        seed=server_round * 1000 + partition,
    )
    loss = train_local(model, data, train_config)

    global_state = arrays.to_numpy_ndarrays()
    names = list(arrays.keys())
    local_state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    delta = {
        name: local_state[name].astype(np.float32) - g.astype(np.float32)
        for name, g in zip(names, global_state, strict=True)
    }
    mode_name = str(config.get("update-mode", "int8"))
    if mode_name not in UPDATE_MODES:
        raise ValueError(f"unknown update-mode {mode_name!r}")
    mode: UpdateMode = mode_name
    use_feedback = bool(config.get("error-feedback", mode == "topk"))
    residual = None
    if use_feedback and RESIDUAL_KEY in context.state:
        stored = cast(ArrayRecord, context.state[RESIDUAL_KEY])
        residual = dict(zip(stored.keys(), stored.to_numpy_ndarrays(), strict=True))
    encoded = encode_update(
        delta,
        mode=mode,
        topk_fraction=float(cast(float, config.get("topk-fraction", 0.1))),
        residual=residual,
    )
    if use_feedback:
        context.state[RESIDUAL_KEY] = ArrayRecord(
            {k: Array(v) for k, v in encoded.residual.items()}
        )
    log.info(
        "round %d: %d examples, loss %.4f, %d bytes up (%.2fx float32)",
        server_round,
        len(data),
        loss,
        len(encoded.payload),
        encoded.ratio,
    )
    run_id = str(config.get("run-id", ""))
    update = ConfigRecord({"mode": mode, "run-id": run_id, "server-round": server_round})
    if config.get("seal-updates", False):
        # The server sees individual updates (robust strategy): seal and sign them.
        keys = load_device_keys(device_bundle(context, config))
        update["device-id"] = keys.device_id
        update["sealed"] = seal_update(
            encoded.payload,
            coordinator=keys.coordinator_box,
            signer=keys.signing_key,
            run_id=run_id,
            server_round=server_round,
            device_id=keys.device_id,
        )
    else:
        update["payload"] = encoded.payload
    metrics = MetricRecord(
        {
            "num-examples": len(data),
            "train-loss": loss,
            "raw-bytes": encoded.raw_bytes,
            "payload-bytes": len(encoded.payload),
        }
    )
    return Message(content=RecordDict({"update": update, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on local data (federated evaluation)."""
    config = cast(ConfigRecord, msg.content["config"])
    data = local_data(context, config)
    model = model_with(cast(ArrayRecord, msg.content["arrays"]), config)
    accuracy, loss = evaluate_local(model, data)
    metrics = MetricRecord({"num-examples": len(data), "accuracy": accuracy, "loss": loss})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

"""The edge ClientApp for SecAgg+ rounds: local training, masked upload of the *delta*.

Flower 1.41's ``secaggplus_mod`` only speaks the legacy fit API, so this app is a
``flwr.client.ClientApp(client_fn=..., mods=[secaggplus_mod])`` around a ``NumPyClient``.
The mod runs the four SecAgg+ stages; only in the masked-vector stage does it call
:meth:`SecAggTrainer.fit`, quantize and mask what ``fit`` returns, and strip the plaintext
arrays from the reply. The coordinator sees the masked integers, never the update.

Why the delta (``local - global``) and not the full weights: SecAgg+ clips every value
of ``(num_examples / max_weight) * update`` to ``[-clipping_range, clipping_range]`` and
quantizes it to ``quantization_range`` levels. Deltas are one to two orders of magnitude
smaller than weights, so the same integer range buys a far finer quantization step (or the
same step with fewer bits, leaving room in the modulus for more clients), and clipping
bounds each device's *contribution* instead of silently truncating large weights. The
server adds the securely averaged delta to the global model it sent (see
``cloud.federation.secagg``), which is exactly FedAvg's weighted mean of the weights.

Int8/top-k compression (``shared.compression``) is deliberately not applied here: masks
are uniform over ``Z_modulus``, so a masked vector is incompressible; see
``cloud.federation.secagg`` for the numbers.

Referenced as ``edge.learning.secagg_client:app`` by the simulation and by a real
SuperNode alike.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import numpy as np
from flwr.app import Context
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod

from edge.learning.client_app import local_data, local_train_config, model_spec
from edge.learning.local import train_local
from edge.learning.models import build_local_model
from shared.protocol.learning import train_instruction_from_config

log = logging.getLogger(__name__)

__all__ = ["SecAggTrainer", "app", "client_fn"]


class DivergedUpdateError(ValueError):
    """Local training produced NaN/inf: the device drops out of the round instead.

    Under SecAgg+ the server cannot inspect an individual update, so the non-finite check
    the plain path does on the server must happen here, before masking. Raising makes the
    reply an error; the protocol then treats this device as dropped and the round completes
    with the others.
    """


class SecAggTrainer(NumPyClient):
    """Fine-tune the global model on this device's data; return the delta for masking.

    Args:
        context: The node's context (its data location lives in ``node_config``).
    """

    def __init__(self, context: Context) -> None:
        self.context = context

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Train locally and return ``(delta, num_examples, metrics)``.

        ``parameters`` arrive in the model's ``state_dict`` order (the server built them
        from the same architecture), so they are loaded by position.

        Raises:
            DivergedUpdateError: the delta holds NaN or infinity.
        """
        data = local_data(self.context, config)
        model = build_local_model(model_spec(config))
        names = list(model.state_dict().keys())
        if len(names) != len(parameters):
            raise ValueError(f"server sent {len(parameters)} tensors for {len(names)}")
        model.load_state_dict(
            {n: _tensor(p) for n, p in zip(names, parameters, strict=True)}, strict=True
        )
        instruction = train_instruction_from_config(config)
        partition = int(cast(int, self.context.node_config.get("partition-id", 0)))
        train_config = local_train_config(instruction, partition)  # same as the plain app
        server_round = instruction.server_round
        loss = train_local(model, data, train_config)
        local = [v.detach().cpu().numpy().astype(np.float32) for v in model.state_dict().values()]
        delta = [w - g.astype(np.float32) for w, g in zip(local, parameters, strict=True)]
        if not all(np.all(np.isfinite(d)) for d in delta):
            raise DivergedUpdateError("local training diverged; dropping out of this round")
        log.info("secagg round %d: %d examples, loss %.4f", server_round, len(data), loss)
        return delta, len(data), {"train-loss": float(loss)}


def _tensor(array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.array(array, copy=True))


def client_fn(context: Context) -> Client:
    """Build this node's client (Flower calls it once per message)."""
    return SecAggTrainer(context).to_client()


#: The SecAgg+ ClientApp: ``edge.learning.secagg_client:app``.
app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])

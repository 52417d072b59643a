"""A ClientApp for tests: the real edge ClientApp, except partition 0 sends a NaN update.

Used by reference (``tests.federation.faulty_client:app``) from a real simulation, the way
a broken or malicious device would behave.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from edge.learning.client_app import evaluate as real_evaluate
from edge.learning.client_app import train as real_train
from edge.learning.secagg_mod import fedge_secagg_mod
from shared.compression import encode_update

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train for real; partition 0 then replaces its delta with NaNs (as fp32)."""
    reply = real_train(msg, context)
    if int(cast(int, context.node_config.get("partition-id", -1))) == 0:
        arrays = cast(ArrayRecord, msg.content["arrays"])
        poison = {k: np.full(a.shape, np.nan, np.float32) for k, a in arrays.items()}
        update = cast(ConfigRecord, reply.content["update"])
        update["payload"] = encode_update(poison, mode="fp32").payload
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Unchanged."""
    return real_evaluate(msg, context)


#: The same faulty device under fedge SecAgg (``tests.federation.faulty_client:secure_app``):
#: its NaN delta must make it drop out before masking, on the device.
secure_app = ClientApp(mods=[fedge_secagg_mod])
secure_app.train()(train)
secure_app.evaluate()(evaluate)

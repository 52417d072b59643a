"""A SecAgg+ ClientApp for tests: the real one, except partition 0's training diverges.

Partition 0 trains from NaN weights, so its delta is NaN and the shipped non-finite check in
``SecAggTrainer.fit`` makes it drop out; SecAgg+ must finish the round with the others.
Used by reference (``tests.federation.faulty_secagg_client:app``) from a real simulation.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from flwr.app import Context
from flwr.client import Client, ClientApp
from flwr.client.mod import secaggplus_mod

from edge.learning.secagg_client import SecAggTrainer


class DivergingTrainer(SecAggTrainer):
    """Partition 0 starts from NaN weights; everyone else is the real trainer."""

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        if int(cast(int, self.context.node_config.get("partition-id", -1))) == 0:
            parameters = [np.full_like(p, np.nan) for p in parameters]
        return super().fit(parameters, config)


def client_fn(context: Context) -> Client:
    """Build this node's client."""
    return DivergingTrainer(context).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])

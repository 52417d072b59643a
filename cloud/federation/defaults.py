"""Default client-training hyper-parameters for the CLI, the plan and the benchmark.

They are the learning contract's defaults (:mod:`shared.protocol.learning`), re-exported so
the coordinator and the devices can never disagree again (they did: 2 epochs x batch 16
here, 1 x 32 on the device). Import-light on purpose (no torch, no Flower) so
``fedge --help`` can show them.

Tuned on the issue's benchmark (mnist-5k, 10 clients, Dirichlet α = 0.3, 20 rounds x 2
local epochs; ``benchmarks/federated.py``): smaller local batches (more SGD steps per
epoch) and a learning rate that decays across rounds (large steps early, less client drift
late) close most of the gap between FedAvg and centralized training. Clients use SGD with
momentum 0.9 and a fresh momentum buffer every round (``edge.learning.local``).
"""

from __future__ import annotations

from shared.protocol.learning import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LOCAL_EPOCHS,
    DEFAULT_LR,
    DEFAULT_LR_DECAY,
    DEFAULT_MAX_DELTA_NORM,
    DEFAULT_PROXIMAL_MU,
)

#: Passes over the local data per round.
LOCAL_EPOCHS = DEFAULT_LOCAL_EPOCHS
#: Client SGD learning rate in round 1.
LR = DEFAULT_LR
#: Round ``r`` trains with ``LR * LR_DECAY ** (r - 1)``.
LR_DECAY = DEFAULT_LR_DECAY
#: Client mini-batch size.
BATCH_SIZE = DEFAULT_BATCH_SIZE
#: FedProx proximal weight.
PROXIMAL_MU = DEFAULT_PROXIMAL_MU
#: L2 bound on a client's delta (on by default; ``FederationPlan.max_delta_norm``).
MAX_DELTA_NORM = DEFAULT_MAX_DELTA_NORM

"""Default client-training hyper-parameters: the one place the CLI, the plan and the
benchmark take them from.

Import-light on purpose (no torch, no Flower) so ``fedge --help`` can show them.

Tuned on the issue's benchmark (mnist-5k, 10 clients, Dirichlet α = 0.3, 20 rounds x 2
local epochs; ``benchmarks/federated.py``): smaller local batches (more SGD steps per
epoch) and a learning rate that decays across rounds (large steps early, less client drift
late) close most of the gap between FedAvg and centralized training. Clients use SGD with
momentum 0.9 and a fresh momentum buffer every round (``edge.learning.local``).
"""

from __future__ import annotations

#: Passes over the local data per round.
LOCAL_EPOCHS = 2
#: Client SGD learning rate in round 1.
LR = 0.05
#: Round ``r`` trains with ``LR * LR_DECAY ** (r - 1)``.
LR_DECAY = 0.95
#: Client mini-batch size.
BATCH_SIZE = 16
#: FedProx proximal weight.
PROXIMAL_MU = 0.01

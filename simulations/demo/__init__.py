"""``make demo``: the whole lifecycle on a real local fleet, one command.

1. keys (root, release, project CA) and a private Mosquitto with TLS and per-device ACLs;
2. the coordinator as ``fedge cloud serve`` (API, dashboard at ``/``, ingestion, rollouts);
3. N edge agents (default 4, three profiles) as separate processes, each enrolled through
   the API with a one-time token (``fedge edge enroll``); the profiles that train run their
   own SuperNode on their own partition of the data;
4. train the starting model and quantize it (verified in LiteRT); a first install of it;
5. federated rounds on the Deployment Engine (the coordinator's SuperLink, the agents'
   SuperNodes) with secure aggregation (SecAgg+); the best round is quantized;
6. the result rolled out by a canary policy gated on shadow agreement and latency (a plain
   publish, labelled so, where the coordinator has no ``/v1/rollouts``), while every device
   serves local inference traffic on its HTTP endpoint;
7. a summary — accuracy per round, float vs deployed variant, bytes moved, the rollout
   timeline with gate values, p50/p99 latency per device — and the dashboard URL.

State and logs live in ``$FEDGE_HOME/demo`` (default ``.fedge/demo``), recreated each run.
``--keep-running`` keeps everything up until Ctrl-C; Ctrl-C (or SIGTERM) at any point stops
every process of the demo (:mod:`simulations.demo.procs`).
"""

from simulations.demo.main import main

__all__ = ["main"]

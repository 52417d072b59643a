"""Bounded influence on the plain path: the inflation attack, and the defaults that stop it.

An outside review found that a client reporting ``num_examples = 10**12`` dictated the
FedAvg aggregate (cosine 1.0 with its own update). The guard now weighs such a claim as
exactly the round's cap, counts it, and the norm bound is on by default. (Under fedge
SecAgg the same bounds hold inside the protocol: ``test_fedge_secagg``.)
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from cloud.federation import defaults
from cloud.federation.guard import UpdateGuard
from cloud.federation.plan import FederationPlan
from cloud.federation.strategies import Participation, make_strategy
from tests.federation.test_guard import ROUND, RUN, _deltas, _global, _reply

CAP = 50


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _aggregate(max_examples: int | None) -> tuple[dict[str, np.ndarray], UpdateGuard]:
    guard = UpdateGuard(
        make_strategy("fedavg", Participation()),
        run_id=RUN,
        max_examples=max_examples,
        max_delta_norm=defaults.MAX_DELTA_NORM,
    )
    guard.begin_round(ROUND, ArrayRecord({k: Array(v) for k, v in _global().items()}), sampled=3)
    honest, attacker = _deltas(3)[:2], _deltas(3)[2]
    replies = [_reply(honest[0], CAP), _reply(honest[1], CAP), _reply(attacker, 10**12)]
    arrays, _ = guard.aggregate_train(ROUND, replies)
    assert arrays is not None
    return {k: v.numpy() for k, v in arrays.items()}, guard


def _cosine_with_attacker(got: dict[str, np.ndarray]) -> float:
    attacker = _deltas(3)[2]
    moved = np.concatenate([(got[k] - g).reshape(-1) for k, g in _global().items()])
    own = np.concatenate([attacker[k].reshape(-1) for k in _global()])
    return float(moved @ own / np.linalg.norm(moved) / np.linalg.norm(own))


def test_an_inflating_client_weighs_what_an_honest_client_at_the_cap_weighs() -> None:
    got, guard = _aggregate(CAP)
    deltas = _deltas(3)
    for name, g in _global().items():
        # Equal weights: the attacker is one of three clients at the cap, no more.
        expected = g + sum(d[name] for d in deltas) / 3
        bound = sum(np.abs(d[name]).max() / 254 for d in deltas) / 3
        assert np.max(np.abs(got[name] - expected)) <= bound + 1e-6
    assert guard.traffic[ROUND].capped == 1
    assert guard.traffic[ROUND].accepted == 3
    assert _cosine_with_attacker(got) < 0.8


def test_without_the_cap_the_inflating_client_dictates_the_aggregate() -> None:
    """The attack the cap stops (so the test above fails with the defence removed)."""
    got, guard = _aggregate(None)
    assert _cosine_with_attacker(got) > 0.999
    assert guard.traffic[ROUND].capped == 0


def test_the_plan_bounds_influence_by_default() -> None:
    plan = FederationPlan()
    assert plan.max_delta_norm == defaults.MAX_DELTA_NORM
    assert plan.secagg_kind == "fedge"

# ruff: noqa: F811  (pytest fixtures imported from test_rollout_engine)
"""A rollout aborted while devices hold its candidate in shadow makes them drop it: signed
``drop_candidate`` commands through the link, answers in device progress (``dropped`` /
``drop_failed``), counted in the ``rolled_back`` event; a resumed rollback asks only the
devices not recorded yet and counts each device once (real store, scripted fleet)."""

from __future__ import annotations

from typing import Any

import pytest

from cloud.fleet.store import FleetStore
from cloud.rollout.cohorts import assign_cohorts
from cloud.rollout.engine import RolloutEngine
from cloud.rollout.records import RolloutControl, RolloutState
from tests.cloud.rollout_fakes import Crash, Device, FakeFleet
from tests.cloud.test_rollout_engine import (  # noqa: F401  (fixtures)
    BAKE,
    DEVICES,
    _policy,
    _run,
    _setup,
    engine,
    store,
)


def _shadow_policy() -> Any:
    return _policy(
        cohorts=[{"count": 3}, {"percent": 100}],
        gates={"shadow": {"min_samples": 50, "bake_s": BAKE}, "field": None},
    )


def _failing(store: FleetStore) -> tuple[FakeFleet, list[str], Any]:
    """A candidate that disagrees with the serving model: the canary's shadow gate fails."""
    from tests.cloud.rollout_fakes import Clock

    clock = Clock()
    policy = _shadow_policy()
    rollout, fleet = _setup(store, policy, clock, {d: Device(agreement=0.4) for d in DEVICES})
    canary = [d.device_id for d in rollout.cohort_devices(0)]
    assert canary == assign_cohorts("r1", DEVICES, policy.cohorts)[0] and len(canary) == 3
    return fleet, canary, clock


def _rolled_back(store: FleetStore, rollout_id: str = "r1") -> list[dict[str, Any]]:
    events = store.list_rollout_events(rollout_id)
    return [e.detail or {} for e in events if e.kind == "rolled_back"]


def test_failed_shadow_gate_drops_the_candidate_on_the_canary(store: FleetStore) -> None:
    fleet, canary, clock = _failing(store)
    done = _run(RolloutEngine(store, fleet, clock=clock), clock)
    assert done.state is RolloutState.ABORTED
    assert sorted(fleet.drops) == sorted(canary)  # once each, the canary only
    assert not any(fleet.devices[d].holding for d in DEVICES)
    assert set(fleet.withdrawn) == set(canary) and fleet.rollbacks == []  # nothing committed
    states = {d.device_id: (d.state, d.reason) for d in done.devices}
    assert all(states[d] == ("dropped", None) for d in canary)
    assert all(states[d][0] == "pending" for d in DEVICES if d not in canary)
    [detail] = _rolled_back(store)
    assert detail["drop_candidate"] == {"dropped": 3} and detail["rollback"] == {}
    assert done.counts() == {"dropped": 3, "pending": 7}


def test_a_device_that_does_not_answer_is_drop_failed_and_retried_by_a_rollback(
    store: FleetStore,
) -> None:
    fleet, canary, clock = _failing(store)
    eng = RolloutEngine(store, fleet, clock=clock)
    while eng.step("r1").phase != "shadow_bake":  # the canary holds the candidate
        pass
    assert fleet.devices[canary[0]].holding
    fleet.devices[canary[0]].behaviour = "offline"
    done = _run(eng, clock)
    assert done.state is RolloutState.ABORTED
    states = {d.device_id: (d.state, d.reason) for d in done.devices}
    assert states[canary[0]] == ("drop_failed", "no_answer")
    assert _rolled_back(store)[0]["drop_candidate"] == {"dropped": 2, "drop_failed": 1}
    fleet.devices[canary[0]].behaviour = "ok"  # back; the operator rolls everything back
    store.request_rollout_control(
        "r1", RolloutControl.ROLLBACK, allowed=frozenset({RolloutState.ABORTED})
    )
    clock.advance(1.0)
    done = _run(eng, clock)
    assert done.state is RolloutState.ROLLED_BACK
    assert fleet.drops.count(canary[0]) == 2 and fleet.drops.count(canary[1]) == 1
    assert not fleet.devices[canary[0]].holding
    assert _rolled_back(store)[1]["drop_candidate"] == {"dropped": 1}  # not the earlier two


@pytest.mark.parametrize("where", ["after_drops", "in_rollback"])
def test_coordinator_killed_in_the_rollback_resumes_without_double_counting(
    store: FleetStore, where: str
) -> None:
    fleet, canary, clock = _failing(store)
    eng = RolloutEngine(store, fleet, clock=clock)
    if where == "after_drops":  # the devices dropped it; their answers were never recorded
        fleet.crash_after_drops = True
    else:  # the answers were recorded, then the coordinator died
        fleet.crash_in_rollback = True
    with pytest.raises(Crash):
        _run(eng, clock)
    assert store.get_rollout("r1").phase == "rollback"
    done = _run(RolloutEngine(store, fleet, clock=clock), clock)  # a new coordinator
    assert done.state is RolloutState.ABORTED
    states = {d.device_id: (d.state, d.reason) for d in done.devices if d.device_id in canary}
    if where == "after_drops":  # asked again; "no candidate" is done, not a failure
        assert sorted(fleet.drops) == sorted(canary * 2)
        assert set(states.values()) == {("dropped", "no_candidate")}
    else:  # recorded: nobody is asked twice
        assert sorted(fleet.drops) == sorted(canary)
        assert set(states.values()) == {("dropped", None)}
    [detail] = _rolled_back(store)  # one event, each device counted once
    assert detail["drop_candidate"] == {"dropped": 3}

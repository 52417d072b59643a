"""The rollout engine on a real store (SQLite; PostgreSQL where noted) with a scripted fleet
and a manual clock: every path of the state machine, the evidence in the timeline, resume
after a crash, controls, offline devices and the late device reconciled."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from cloud.fleet.store import FleetStore
from cloud.rollout.cohorts import assign_cohorts
from cloud.rollout.engine import RolloutEngine
from cloud.rollout.policy import RolloutPolicy, parse_policy
from cloud.rollout.records import Rollout, RolloutControl, RolloutState
from tests.cloud.rollout_fakes import REF, Clock, Crash, Device, FakeFleet, serving_status

DEVICES = [f"dev-{i:02d}" for i in range(10)]
BAKE = 60.0


@pytest.fixture()
def engine(tmp_path: Any) -> Iterator[Engine]:
    eng = create_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    yield eng
    eng.dispose()


@pytest.fixture()
def store(engine: Engine) -> FleetStore:
    s = FleetStore(engine)
    for d in DEVICES:
        s.add_device(d, hardware_id="hw-1", profile="pi4", groups=["field"], enrolled_at=1.0)
    return s


def _policy(**overrides: Any) -> RolloutPolicy:
    body: dict[str, Any] = {
        "target": {"groups": ["field"]},
        "cohorts": [{"count": 1}, {"percent": 50}, {"percent": 100}],
        "bake_s": BAKE,
        "gates": {"field": {"min_requests": 50, "max_latency_factor": 1.5}},
        "evidence_timeout_s": 120,
    }
    body.update(overrides)
    return parse_policy(body)


def _setup(
    store: FleetStore, policy: RolloutPolicy, clock: Clock, devices: dict[str, Device] | None = None
) -> tuple[Rollout, FakeFleet]:
    fleet = FakeFleet(store, clock, devices or {d: Device() for d in DEVICES})
    for d in DEVICES:  # the "before" windows: the same devices on the serving model
        fleet.telemetry(d, clock() - 100.0, 10.0, 0.0)
    cohorts = assign_cohorts("r1", DEVICES, policy.cohorts)
    rollout = store.create_rollout(
        REF, policy.model_dump(mode="json"), cohorts, created_by="test", now=clock(),
        rollout_id="r1",
    )  # fmt: skip
    return rollout, fleet


def _run(eng: RolloutEngine, clock: Clock, rollout_id: str = "r1", rounds: int = 30) -> Rollout:
    rollout = eng.drive(rollout_id)
    for _ in range(rounds):
        if rollout.state.final or rollout.state is not RolloutState.RUNNING:
            break
        clock.advance(BAKE / 2)
        rollout = eng.drive(rollout_id)
    return rollout


def _gates(store: FleetStore, rollout_id: str = "r1") -> list[dict[str, Any]]:
    return [e.detail or {} for e in store.list_rollout_events(rollout_id) if e.kind == "gate"]


def test_good_candidate_reaches_everyone_cohort_by_cohort(store: FleetStore) -> None:
    clock = Clock()
    rollout, fleet = _setup(store, _policy(), clock)
    assert [c.size for c in rollout.cohorts] == [1, 4, 5]
    done = _run(RolloutEngine(store, fleet, clock=clock), clock)
    assert done.state is RolloutState.COMPLETED
    assert done.counts() == {"committed": 10}
    assert fleet.installs == {d: 1 for d in DEVICES}  # everyone once, nobody twice
    assert all(d.sends == 1 for d in done.devices)
    kinds = [e.kind for e in store.list_rollout_events("r1")]
    assert kinds.count("cohort_passed") == 3 and kinds[-1] == "completed"
    field = [g for g in _gates(store) if g["gate"] == "field"]
    assert [g["verdict"] for g in field] == ["pass"] * 3
    assert field[0]["values"]["latency_ratio"] == 1.0
    assert field[0]["samples"]["requests_after"] >= 50
    assert fleet.rollbacks == []


def test_slow_candidate_fails_latency_gate_in_canary_and_nobody_else_receives_it(
    store: FleetStore,
) -> None:
    clock = Clock()
    devices = {d: Device(p95_ms=80.0) for d in DEVICES}  # 8x slower than before
    rollout, fleet = _setup(store, _policy(), clock, devices)
    canary = {d.device_id for d in rollout.cohort_devices(0)}
    done = _run(RolloutEngine(store, fleet, clock=clock), clock)
    assert done.state is RolloutState.ABORTED
    assert set(fleet.installs) == canary  # devices outside the canary never received it
    assert set(fleet.rollbacks) == canary
    assert {d.device_id for d in done.devices if d.state == "pending"} == set(DEVICES) - canary
    gate = _gates(store)[-1]
    assert gate["gate"] == "field" and gate["verdict"] == "fail"
    assert gate["reason"] == "latency_above_threshold"
    assert gate["values"]["latency_ratio"] == 8.0
    assert gate["thresholds"]["max_latency_factor"] == 1.5
    # decided within one bake window of the evidence arriving, not at its end
    assert done.finished_at is not None and done.finished_at - rollout.created_at < BAKE


def test_disagreeing_candidate_fails_shadow_gate_before_any_install(store: FleetStore) -> None:
    clock = Clock()
    devices = {d: Device(agreement=0.4) for d in DEVICES}
    policy = _policy(gates={"shadow": {"min_samples": 50, "bake_s": BAKE}, "field": None})
    rollout, fleet = _setup(store, policy, clock, devices)
    done = _run(RolloutEngine(store, fleet, clock=clock), clock)
    assert done.state is RolloutState.ABORTED
    assert sum(fleet.installs.values()) == 0  # nothing was ever installed
    assert set(fleet.shadows) == {d.device_id for d in rollout.cohort_devices(0)}
    gate = _gates(store)[-1]
    assert (gate["gate"], gate["reason"]) == ("shadow", "agreement_below_threshold")
    assert gate["values"]["agreement"] == 0.4 and gate["samples"]["samples"] == 100


def test_agreeing_candidate_passes_shadow_then_installs(store: FleetStore) -> None:
    clock = Clock()
    policy = _policy(gates={"shadow": {"min_samples": 50, "bake_s": BAKE}, "field": None})
    _, fleet = _setup(store, policy, clock)
    done = _run(RolloutEngine(store, fleet, clock=clock), clock)
    assert done.state is RolloutState.COMPLETED
    assert fleet.shadows == {d: 1 for d in DEVICES}  # every cohort ran the shadow first
    assert fleet.installs == {d: 1 for d in DEVICES}
    shadow = [g for g in _gates(store) if g["gate"] == "shadow"]
    assert [g["verdict"] for g in shadow] == ["pass"] * 3


def test_probation_failures_cross_failure_threshold_and_abort(store: FleetStore) -> None:
    clock = Clock()
    policy = _policy(cohorts=[{"count": 4}, {"percent": 100}])
    cohorts = assign_cohorts("r1", DEVICES, policy.cohorts)
    devices = {d: Device() for d in DEVICES}
    for d in cohorts[0][:2]:
        devices[d].behaviour = "fail_probation"
    _, fleet = _setup(store, policy, clock, devices)
    done = _run(RolloutEngine(store, fleet, clock=clock), clock)
    assert done.state is RolloutState.ABORTED
    gate = _gates(store)[-1]
    assert (gate["gate"], gate["reason"]) == ("install", "failure_threshold_reached")
    assert gate["values"]["failure_rate"] == 0.5 and gate["thresholds"]["failure_threshold"] == 0.2
    assert set(fleet.rollbacks) == set(cohorts[0][2:])  # the committed ones are rolled back
    assert set(fleet.installs) == set(cohorts[0])
    assert done.counts()["rolled_back"] == 2 and done.counts()["failed"] == 2


@pytest.mark.parametrize("crash_after", [1, 2, 4])
def test_coordinator_killed_mid_install_resumes_and_nobody_gets_it_twice(
    store: FleetStore, crash_after: int
) -> None:
    clock = Clock()
    policy = _policy(cohorts=[{"count": 1}, {"percent": 100}], max_concurrent_downloads=5)
    _, fleet = _setup(store, policy, clock)
    eng = RolloutEngine(store, fleet, clock=clock)
    eng.drive("r1")  # canary installed, baking
    clock.advance(BAKE)
    fleet.crash_after_commits = crash_after
    with pytest.raises(Crash):  # killed inside the publish of cohort 1's first batch
        _run(eng, clock)
    # a new coordinator on the same database
    done = _run(RolloutEngine(store, fleet, clock=clock), clock)
    assert done.state is RolloutState.COMPLETED
    assert fleet.installs == {d: 1 for d in DEVICES}


def test_offline_device_fails_cohort_under_offline_fail(store: FleetStore) -> None:
    clock = Clock()
    policy = _policy()
    cohorts = assign_cohorts("r1", DEVICES, policy.cohorts)
    devices = {d: Device() for d in DEVICES}
    devices[cohorts[0][0]].behaviour = "offline"
    _, fleet = _setup(store, policy, clock, devices)
    done = _run(RolloutEngine(store, fleet, clock=clock), clock)
    assert done.state is RolloutState.ABORTED
    assert _gates(store)[-1]["reason"] == "failure_threshold_reached"
    assert cohorts[0][0] in fleet.withdrawn  # its retained manifest is withdrawn


def test_offline_device_skipped_then_caught_up_after_completion(store: FleetStore) -> None:
    clock = Clock()
    policy = _policy(offline="skip")
    cohorts = assign_cohorts("r1", DEVICES, policy.cohorts)
    away = cohorts[1][0]
    devices = {d: Device() for d in DEVICES}
    devices[away].behaviour = "offline"
    _, fleet = _setup(store, policy, clock, devices)
    eng = RolloutEngine(store, fleet, clock=clock)
    done = _run(eng, clock)
    assert done.state is RolloutState.COMPLETED
    assert {d.device_id: d.state for d in done.devices}[away] == "skipped"
    assert eng.reconcile("r1") == 0  # still away
    store.record_statuses([serving_status(away, clock())])  # it came back and installed
    assert eng.reconcile("r1") == 1
    assert store.get_rollout("r1").counts() == {"committed": 10}


def test_manual_approval_pause_resume_and_abort(store: FleetStore) -> None:
    clock = Clock()
    _, fleet = _setup(store, _policy(manual_approval=True), clock)
    eng = RolloutEngine(store, fleet, clock=clock)
    rollout = _run(eng, clock)
    assert rollout.state is RolloutState.AWAITING_APPROVAL and rollout.cohort == 1
    store.request_rollout_control("r1", RolloutControl.PAUSE, allowed={rollout.state})
    assert eng.drive("r1").state is RolloutState.PAUSED
    store.request_rollout_control("r1", RolloutControl.RESUME, allowed={RolloutState.PAUSED})
    assert eng.drive("r1").state is RolloutState.AWAITING_APPROVAL  # still needs approval
    store.request_rollout_control(
        "r1", RolloutControl.APPROVE, allowed={RolloutState.AWAITING_APPROVAL}
    )
    rollout = eng.drive("r1")
    assert rollout.state is RolloutState.RUNNING and rollout.cohort == 1
    assert sum(fleet.installs.values()) == 5
    store.request_rollout_control("r1", RolloutControl.ABORT, allowed={RolloutState.RUNNING})
    rollout = eng.drive("r1")
    assert rollout.state is RolloutState.ABORTED
    assert len(fleet.rollbacks) == 4  # cohort 1 only; the canary passed its gates
    kinds = [e.kind for e in store.list_rollout_events("r1")]
    for kind in ("approval_requested", "control_pause", "control_resume", "control_approve"):
        assert kind in kinds


def test_operator_rollback_of_a_completed_rollout_reverts_everyone(store: FleetStore) -> None:
    clock = Clock()
    _, fleet = _setup(store, _policy(), clock)
    eng = RolloutEngine(store, fleet, clock=clock)
    assert _run(eng, clock).state is RolloutState.COMPLETED
    store.request_rollout_control("r1", RolloutControl.ROLLBACK, allowed={RolloutState.COMPLETED})
    assert "r1" in store.active_rollout_ids()
    done = eng.drive("r1")
    assert done.state is RolloutState.ROLLED_BACK
    assert sorted(fleet.rollbacks) == DEVICES
    assert done.counts() == {"rolled_back": 10}


def test_missing_evidence_times_out_per_policy(store: FleetStore) -> None:
    clock = Clock()
    policy = _policy(gates={"field": {"min_requests": 10_000}})  # more than will ever come
    _, fleet = _setup(store, policy, clock)
    done = _run(RolloutEngine(store, fleet, clock=clock), clock)
    assert done.state is RolloutState.ABORTED
    gate = _gates(store)[-1]
    assert gate["verdict"] == "wait" and gate["missing_evidence"] == "fail"
    assert set(fleet.installs) == {d.device_id for d in done.cohort_devices(0)}


def test_invalid_control_is_refused(store: FleetStore) -> None:
    clock = Clock()
    _setup(store, _policy(), clock)
    from shared.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        store.request_rollout_control("r1", RolloutControl.RESUME, allowed={RolloutState.PAUSED})
    assert info.value.code == "invalid_state"
    assert store.get_rollout("r1").control is None


def test_offline_device_back_online_after_completion_is_sent_the_version(
    store: FleetStore,
) -> None:
    from cloud.fleet.records import StatusRecord

    clock = Clock()
    policy = _policy(offline="skip")
    cohorts = assign_cohorts("r1", DEVICES, policy.cohorts)
    away = cohorts[2][0]
    devices = {d: Device() for d in DEVICES}
    devices[away].behaviour = "offline"
    _, fleet = _setup(store, policy, clock, devices)
    eng = RolloutEngine(store, fleet, clock=clock)
    assert _run(eng, clock).state is RolloutState.COMPLETED
    assert fleet.installs[away] == 0
    # it comes back (online, still on the old model): the reconcile step sends it now
    devices[away].behaviour = "ok"
    clock.advance(5)
    store.record_statuses(
        [StatusRecord(away, "back-00001", clock(), clock(), "serving", {"state": "serving"})]
    )
    assert eng.reconcile("r1") == 1
    assert fleet.installs[away] == 1
    assert store.get_rollout("r1").counts() == {"committed": 10}
    assert eng.reconcile("r1") == 0  # nothing left to do; nothing sent again
    assert fleet.installs[away] == 1

"""The leader loop: two coordinators on one database, one lease; only the holder steps
rollouts, and the standby takes over (and finishes the rollout) when the lease ends."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine

from cloud.fleet.store import FleetStore
from cloud.rollout.cohorts import assign_cohorts
from cloud.rollout.coordinator import RolloutCoordinator
from cloud.rollout.engine import RolloutEngine
from cloud.rollout.lease import FileLease
from cloud.rollout.policy import parse_policy
from cloud.rollout.records import RolloutState
from tests.cloud.rollout_fakes import REF, Clock, Device, FakeFleet

DEVICES = [f"dev-{i}" for i in range(4)]


def test_only_the_leader_steps_and_the_standby_finishes(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    store = FleetStore(engine)
    for d in DEVICES:
        store.add_device(d, hardware_id="hw-1", profile="pi4", groups=["g"], enrolled_at=1.0)
    policy = parse_policy(
        {
            "target": {"groups": ["g"]},
            "cohorts": [{"count": 1}, {"percent": 100}],
            "bake_s": 0,
            "gates": {"field": None},
        }
    )
    store.create_rollout(
        REF, policy.model_dump(mode="json"), assign_cohorts("r", DEVICES, policy.cohorts),
        created_by="t", now=0.0, rollout_id="r",
    )  # fmt: skip
    clock = Clock()
    fleet = FakeFleet(store, clock, {d: Device() for d in DEVICES})
    lock = tmp_path / "fleet.db.leader.lock"
    made: list[str] = []

    def factory(name: str) -> RolloutEngine:
        made.append(name)
        return RolloutEngine(store, fleet, clock=clock)

    leader = RolloutCoordinator(store, FileLease(lock), lambda: factory("leader"))
    standby = RolloutCoordinator(store, FileLease(lock), lambda: factory("standby"))
    leader.poll_once()
    standby.poll_once()
    assert leader.leader and not standby.leader and made == ["leader"]
    assert sum(fleet.installs.values()) == 4  # the leader ran the rollout to its end
    assert store.get_rollout("r").state is RolloutState.COMPLETED

    # a second rollout, and the leader goes away: the standby takes over and runs it
    store.create_rollout(
        REF, policy.model_dump(mode="json"), [["dev-0"], ["dev-1"]], created_by="t", now=1.0,
        rollout_id="r2",
    )  # fmt: skip
    for d in fleet.devices.values():
        d.serving = False
    leader.stop()
    standby.poll_once()
    assert standby.leader and made == ["leader", "standby"]
    assert store.get_rollout("r2").state is RolloutState.COMPLETED
    standby.stop()
    engine.dispose()


def test_a_succeeded_federation_run_rolls_its_best_round_out_once(tmp_path: Path) -> None:
    from cloud.fleet.records import FederationRunState
    from cloud.registry import ArtifactStatus, Registry, VersionSource
    from cloud.registry.registry import NewArtifact
    from cloud.rollout.lease import NullLease

    registry = Registry(f"sqlite:///{tmp_path / 'reg.db'}", tmp_path / "artifacts")
    store = FleetStore.from_registry(registry)
    for d in DEVICES:
        store.add_device(d, hardware_id="hw-1", profile="pi4", groups=["g"], enrolled_at=1.0)
    art = NewArtifact("tflite", "int8", b"model" * 20, ArtifactStatus.APPROVED)
    best = registry.create_version("cnn", spec={}, source=VersionSource.TRAINED, artifacts=[art])
    store.save_rollout_policy("canary", {"target": {"groups": ["g"]}}, now=0.0)
    for run_id, policy in (("run-a", "canary"), ("run-b", None), ("run-c", "missing")):
        store.create_run(
            run_id, plan={"rollout_policy": policy}, created_by="tok", now=1.0, name="cnn"
        )
        store.update_run(run_id, state=FederationRunState.SUCCEEDED, best_version=best.ref)
    loop = RolloutCoordinator(
        store, NullLease(), lambda: RolloutEngine(store, FakeFleet(store, Clock(), {})),
        registry=registry,
    )  # fmt: skip
    loop.lease.acquire()
    loop._engine = loop._engine_factory()
    loop._reconcile()
    loop._reconcile()  # a second pass starts nothing more
    made = store.list_rollouts().items
    assert [(r.source, r.policy_name, r.version_ref) for r in made] == [
        ("federation:run-a", "canary", best.ref)
    ]
    assert store.rollout_by_source("federation:run-c") is None  # unknown policy: refused
    registry.close()

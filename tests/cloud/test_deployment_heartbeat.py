"""Crash recovery of deployments tells an orphaned job from a live one: each job records its
runner and beats a heartbeat, and only open deployments whose heartbeat went stale are
failed — at start-up (a second serve process beside a live one) and by the leader's sweep.
SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from cloud.api.jobs import DeploymentJobs, instance_id
from cloud.deployment.publisher import Publisher
from cloud.deployment.report import PublishReport
from cloud.fleet.records import Deployment, DeploymentState
from cloud.fleet.store import FleetStore
from cloud.fleet.sync import InterruptedSweep, fail_interrupted_deployments
from cloud.keys import KeyHome
from cloud.registry import Registry

NOW = 10_000.0
STALE_S = 15.0


@pytest.fixture()
def store(database_url: str, tmp_path: Path) -> Iterator[FleetStore]:
    registry = Registry(database_url, tmp_path / "artifacts")
    fleet = FleetStore.from_registry(registry)
    fleet.add_device("cam-1", hardware_id="hw-a", profile=None, enrolled_at=1.0)
    yield fleet
    registry.close()


def _open(
    store: FleetStore,
    state: DeploymentState,
    *,
    created_at: float = NOW - 100,
    runner: str | None = None,
    heartbeat_at: float | None = None,
) -> str:
    made = store.create_deployment("m@1", ["cam-1"], created_by="cli", now=created_at)
    store.update_deployment(
        made.deployment_id, state=state, runner=runner, heartbeat_at=heartbeat_at
    )
    return made.deployment_id


def test_only_deployments_whose_runner_went_quiet_are_failed(store: FleetStore) -> None:
    live = _open(store, DeploymentState.RUNNING, runner="b:2:x", heartbeat_at=NOW - 5)
    queued = _open(store, DeploymentState.PENDING, runner="b:2:x", heartbeat_at=NOW - 5)
    stale = _open(store, DeploymentState.RUNNING, runner="a:1:y", heartbeat_at=NOW - 40)
    old_row = _open(store, DeploymentState.RUNNING)  # before 0007: no runner, no heartbeat
    fresh_pending = _open(store, DeploymentState.PENDING, created_at=NOW - 2)  # being submitted
    old_pending = _open(store, DeploymentState.PENDING, created_at=NOW - 60)  # never handed over
    done = _open(store, DeploymentState.SUCCEEDED, runner="a:1:y", heartbeat_at=NOW - 400)

    failed = fail_interrupted_deployments(store, now=NOW, stale_s=STALE_S)

    assert sorted(failed) == sorted([stale, old_row, old_pending])
    assert store.get_deployment(live).state is DeploymentState.RUNNING
    assert store.get_deployment(queued).state is DeploymentState.PENDING
    assert store.get_deployment(fresh_pending).state is DeploymentState.PENDING
    assert store.get_deployment(done).state is DeploymentState.SUCCEEDED
    gone = store.get_deployment(stale)
    assert gone.state is DeploymentState.FAILED and gone.finished_at == NOW
    assert gone.error is not None
    assert gone.error.startswith("interrupted: the coordinator stopped before the publish")
    assert "runner a:1:y" in gone.error and "40 s ago" in gone.error
    assert "no heartbeat" in (store.get_deployment(old_row).error or "")
    # idempotent: a second sweep (another process, the leader) finds nothing more
    assert fail_interrupted_deployments(store, now=NOW, stale_s=STALE_S) == []


def test_a_job_that_ends_well_after_a_sweep_failed_it_keeps_no_error(store: FleetStore) -> None:
    """A live job whose heartbeat stalled (e.g. a database outage) may be failed by a sweep;
    when it then ends well, its own success wins and carries no stale "interrupted" error."""
    stalled = _open(store, DeploymentState.RUNNING, runner="a:1:y", heartbeat_at=NOW - 40)
    assert fail_interrupted_deployments(store, now=NOW, stale_s=STALE_S) == [stalled]
    assert (store.get_deployment(stalled).error or "").startswith("interrupted")
    store.update_deployment(stalled, state=DeploymentState.SUCCEEDED, finished_at=NOW + 1)
    ended = store.get_deployment(stalled)
    assert (ended.state, ended.error) == (DeploymentState.SUCCEEDED, None)


def test_a_heartbeat_between_the_read_and_the_write_saves_the_deployment(
    store: FleetStore,
) -> None:
    deployment_id = _open(store, DeploymentState.RUNNING, runner="a:1:y", heartbeat_at=NOW - 40)
    cutoff = NOW - STALE_S
    assert [d.deployment_id for d in store.stale_deployments(cutoff=cutoff)] == [deployment_id]
    assert store.touch_deployments([deployment_id], runner="a:1:y", now=NOW) == 1
    assert not store.fail_stale_deployment(deployment_id, cutoff=cutoff, now=NOW, error="x")
    assert store.get_deployment(deployment_id).state is DeploymentState.RUNNING


def test_touch_refreshes_only_the_runners_open_deployments(store: FleetStore) -> None:
    mine = _open(store, DeploymentState.RUNNING, runner="a:1:y", heartbeat_at=NOW - 9)
    theirs = _open(store, DeploymentState.RUNNING, runner="b:2:x", heartbeat_at=NOW - 9)
    ended = _open(store, DeploymentState.FAILED, runner="a:1:y", heartbeat_at=NOW - 9)
    touched = store.touch_deployments([mine, theirs, ended], runner="a:1:y", now=NOW)
    assert touched == 1
    assert store.get_deployment(mine).heartbeat_at == NOW
    assert store.get_deployment(theirs).heartbeat_at == NOW - 9
    assert store.get_deployment(ended).heartbeat_at == NOW - 9
    assert store.touch_deployments([], runner="a:1:y", now=NOW) == 0


class _Clock:
    """A wall clock that moves one second every time it is read (no real waiting)."""

    def __init__(self, t: float = NOW) -> None:
        self.t = t
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.t += 1.0
            return self.t


class _BlockingPublisher:
    """A publish that runs until ``release`` is set (at most a few seconds)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def publish(self, version_ref: str, targets: list[Any], **_kw: Any) -> PublishReport:
        self.started.set()
        self.release.wait(5.0)
        return PublishReport(version=version_ref, artifact_sha256="0" * 64, devices={})


class _Home:
    """The one thing a job reads from the key home: the enrolled targets."""

    def fleet(self) -> dict[str, Any]:
        return {"cam-1": SimpleNamespace(device_id="cam-1", revoked=False)}


def _jobs(store: FleetStore, publisher: _BlockingPublisher, clock: _Clock) -> DeploymentJobs:
    factory = cast(Callable[[], Publisher], lambda: publisher)
    return DeploymentJobs(
        store, cast(KeyHome, _Home()), factory, now=clock, runner="me:1:z", heartbeat_s=0.02
    )


def _wait_for(predicate: Callable[[], bool], timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_heartbeat_thread_refreshes_a_running_job_and_stops_with_it(
    store: FleetStore,
) -> None:
    clock, publisher = _Clock(), _BlockingPublisher()
    jobs = _jobs(store, publisher, clock)
    made = store.create_deployment("m@1", ["cam-1"], created_by="cli", now=NOW)
    try:
        jobs.submit(made)
        assert publisher.started.wait(2.0)
        first = store.get_deployment(made.deployment_id)
        assert (first.state, first.runner) == (DeploymentState.RUNNING, "me:1:z")
        assert first.heartbeat_at is not None

        def beaten() -> bool:
            beat = store.get_deployment(made.deployment_id).heartbeat_at
            return beat is not None and beat > cast(float, first.heartbeat_at)

        assert _wait_for(beaten), "the heartbeat thread never touched the row"
        # a sweep far past the start but within the bound of the last beat spares it
        now = clock()
        assert fail_interrupted_deployments(store, now=now, stale_s=STALE_S) == []
    finally:
        publisher.release.set()
        jobs.wait(made.deployment_id, timeout=5.0)
    ended = store.get_deployment(made.deployment_id)
    # the end keeps who ran it and its last beat; the heartbeat leaves an ended job alone
    assert ended.state is DeploymentState.SUCCEEDED and ended.runner == "me:1:z"
    assert ended.heartbeat_at is not None and ended.finished_at is not None
    assert jobs.active() == [] and jobs.beat() == 0
    assert store.touch_deployments([made.deployment_id], runner="me:1:z", now=clock()) == 0
    assert store.get_deployment(made.deployment_id).heartbeat_at == ended.heartbeat_at
    jobs.shutdown()
    assert fail_interrupted_deployments(store, now=clock() + 1000, stale_s=STALE_S) == []


def test_a_queued_job_is_claimed_and_beaten_too(store: FleetStore) -> None:
    clock, publisher = _Clock(), _BlockingPublisher()
    jobs = _jobs(store, publisher, clock)  # one worker: the second job queues
    first = store.create_deployment("m@1", ["cam-1"], created_by="cli", now=NOW)
    queued = store.create_deployment("m@1", ["cam-1"], created_by="cli", now=NOW)
    try:
        jobs.submit(first)
        assert publisher.started.wait(2.0)
        jobs.submit(queued)
        claimed = store.get_deployment(queued.deployment_id)
        assert (claimed.state, claimed.runner) == (DeploymentState.PENDING, "me:1:z")
        assert claimed.heartbeat_at is not None
        assert jobs.beat() == 2  # one UPDATE for both of this process's jobs
        beat = store.get_deployment(queued.deployment_id).heartbeat_at
        assert beat is not None and beat > claimed.heartbeat_at
    finally:
        publisher.release.set()
        jobs.wait(first.deployment_id, timeout=5.0)
        jobs.wait(queued.deployment_id, timeout=5.0)
        jobs.shutdown()
    assert store.get_deployment(queued.deployment_id).state is DeploymentState.SUCCEEDED


def test_the_leaders_sweep_runs_only_while_leading(store: FleetStore) -> None:
    stale = _open(store, DeploymentState.RUNNING, runner="a:1:y", heartbeat_at=NOW - 40)
    leading = False
    sweep = InterruptedSweep(
        store, lambda: leading, stale_s=STALE_S, interval_s=60.0, clock=lambda: NOW
    )
    assert sweep.run_once() == []
    assert store.get_deployment(stale).state is DeploymentState.RUNNING
    leading = True
    assert sweep.run_once() == [stale]
    assert store.get_deployment(stale).state is DeploymentState.FAILED


def test_instance_ids_name_the_process_and_differ() -> None:
    import os
    import socket

    a, b = instance_id(), instance_id()
    assert a != b
    host, pid, _random = a.rsplit(":", 2)
    assert (host, pid) == (socket.gethostname()[:120], str(os.getpid()))


def test_a_deployment_record_from_before_has_no_runner(store: FleetStore) -> None:
    made: Deployment = store.create_deployment("m@1", ["cam-1"], created_by="cli", now=NOW)
    assert (made.runner, made.heartbeat_at) == (None, None)
    listed = store.list_deployments().items
    assert [(d.deployment_id, d.runner) for d in listed] == [(made.deployment_id, None)]

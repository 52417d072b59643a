"""Two ``fedge cloud serve``-shaped services on one PostgreSQL database: the second one
starting does not fail the deployment the first is running (its heartbeat is fresh), but
does fail one whose runner died."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from cloud.api.jobs import DeploymentJobs
from cloud.config import Settings
from cloud.deployment.publisher import Publisher
from cloud.deployment.report import PublishReport
from cloud.fleet.records import DeploymentState
from cloud.keys import KeyHome
from cloud.service import CoordinatorService, build_service

BROKER = ("127.0.0.1", 1)  # never connected to: neither service is started


class _BlockingPublisher:
    """A publish that runs until ``release`` is set (at most a few seconds)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def publish(self, version_ref: str, targets: list[Any], **_kw: Any) -> PublishReport:
        self.started.set()
        self.release.wait(5.0)
        return PublishReport(version=version_ref, artifact_sha256="0" * 64, devices={})


def _service(settings: Settings) -> CoordinatorService:
    return build_service(settings, broker=BROKER, lease_poll_s=0.05)


def test_a_second_coordinator_starting_spares_the_first_ones_running_deployment(
    postgres_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "fedge-home"
    keys = KeyHome(home / "keys")
    keys.init()
    settings = Settings(home=home, database_url=postgres_url)
    first = _service(settings)
    second: CoordinatorService | None = None
    publisher = _BlockingPublisher()
    try:
        store = first.resources.store
        first.resources.home.enroll_device("cam-1", hardware_id="hw-a")
        # the first process's deployment jobs, with a publish that stays running
        first.resources.jobs.shutdown()
        jobs = DeploymentJobs(
            store,
            first.resources.home,
            cast(Callable[[], Publisher], lambda: publisher),
            heartbeat_s=0.05,
        )
        first.resources.jobs = jobs
        live = store.create_deployment("m@1", ["cam-1"], created_by="cli", now=time.time())
        jobs.submit(live)
        assert publisher.started.wait(5.0)
        # a deployment whose runner died a minute ago
        dead = store.create_deployment("m@1", ["cam-1"], created_by="cli", now=time.time() - 90)
        store.update_deployment(
            dead.deployment_id,
            state=DeploymentState.RUNNING,
            runner="gone:4242:dead",
            heartbeat_at=time.time() - 60,
        )

        second = _service(settings)  # its start-up sweep runs now

        running = second.resources.store.get_deployment(live.deployment_id)
        assert running.state is DeploymentState.RUNNING and running.runner == jobs.runner
        assert running.runner != second.resources.jobs.runner
        failed = second.resources.store.get_deployment(dead.deployment_id)
        assert failed.state is DeploymentState.FAILED
        assert "interrupted" in (failed.error or "") and "gone:4242:dead" in (failed.error or "")
        # a standby's periodic sweep does nothing; the service has one for when it leads
        assert second.sweep is not None and second.sweep.run_once() == []

        publisher.release.set()
        jobs.wait(live.deployment_id, timeout=5.0)
        assert store.get_deployment(live.deployment_id).state is DeploymentState.SUCCEEDED
    finally:
        publisher.release.set()
        if second is not None:
            second.close()
        first.close()

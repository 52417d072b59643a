"""Deployment jobs: publishes run on a bounded thread pool, progress goes to the store.

The API creates the deployment (``pending``) and hands it to :meth:`DeploymentJobs.submit`;
a worker thread marks it ``running``, runs :meth:`Publisher.publish` and writes every
progress report and the final per-device outcomes with ``update_deployment``. The job does
not belong to the HTTP request: a client that disconnects changes nothing, and the outcome
is read back with ``GET /v1/deployments/{id}``.

Each job records its runner, this pool's instance id (``host:pid:random``), and a heartbeat:
written when the job is handed over and when it starts, then refreshed for every job still
queued or running by one ``UPDATE`` every ``heartbeat_s`` on a small thread. Another serve
process on the same database (a standby serves the API too) then tells a job this one is
running from one a dead process left behind (``cloud.fleet.sync``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from cloud.deployment.publisher import Outcome, Publisher, PublishReport, select_devices
from cloud.fleet.records import Deployment, DeploymentState, DeviceOutcome
from cloud.fleet.store import FleetStore
from cloud.keys import KeyHome
from shared.errors import FedgeError

__all__ = ["DEFAULT_HEARTBEAT_S", "DeploymentJobs", "JobsBusyError", "instance_id"]

log = logging.getLogger(__name__)

#: Seconds between two heartbeats of the running jobs (crash recovery's staleness bound,
#: ``cloud.fleet.sync.DEFAULT_STALE_S``, is three of them).
DEFAULT_HEARTBEAT_S = 5.0


def instance_id() -> str:
    """A new runner id, ``host:pid:random``: unique per pool even after a pid is reused."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(4)}"


class JobsBusyError(FedgeError):
    """Every job slot is taken (running or queued): try again later."""

    code = "jobs_busy"


def _outcomes(report: PublishReport, *, final: bool) -> list[DeviceOutcome]:
    """Per-device outcomes; before the end an undecided device is ``pending``."""
    out = []
    for result in report.devices.values():
        outcome = str(result.outcome)
        if not final and result.outcome is Outcome.TIMEOUT:
            outcome = "pending"  # TIMEOUT is the report's "not decided yet"
        out.append(
            DeviceOutcome(
                device_id=result.device_id,
                outcome=outcome,
                reason=result.reason,
                precision=result.precision,
                encoding=result.encoding,
                variant=result.choice,
            )
        )
    return out


class DeploymentJobs:
    """A bounded pool of publish jobs.

    Args:
        store: Where progress and outcomes are written.
        home: The key home (the targets' enrollment records).
        publisher_factory: A new :class:`Publisher` per job (tests inject one whose
            ``connect=`` is an in-memory broker).
        max_workers: Publishes running at once. One: each publish connects as the
            coordinator, and the broker allows one session per identity (a second would
            be refused by the key home's coordinator lock); more jobs queue.
        max_pending: Jobs running or queued at once; more are refused (``jobs_busy``).
        timeout_s, discover_s: Passed to :meth:`Publisher.publish`.
        now: Wall clock (also the heartbeats' time).
        runner: This pool's instance id, recorded on its deployments (default: a new
            :func:`instance_id`; one pool per serve process).
        heartbeat_s: Seconds between two heartbeats of the jobs queued or running.
    """

    def __init__(
        self,
        store: FleetStore,
        home: KeyHome,
        publisher_factory: Callable[[], Publisher],
        *,
        max_workers: int = 1,
        max_pending: int = 16,
        timeout_s: float = 120.0,
        discover_s: float = 1.0,
        now: Callable[[], float] = time.time,
        runner: str | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    ) -> None:
        if heartbeat_s <= 0:
            raise ValueError("heartbeat_s must be positive")
        self.store = store
        self.home = home
        self._factory = publisher_factory
        self._timeout_s = timeout_s
        self._discover_s = discover_s
        self._now = now
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fedge-deploy")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self._futures: dict[str, Future[None]] = {}
        self._closed = False
        self.runner = runner or instance_id()
        self._heartbeat_s = heartbeat_s
        self._stop_beating = threading.Event()
        self._beater: threading.Thread | None = None

    def submit(self, deployment: Deployment) -> None:
        """Start publishing ``deployment`` in the background.

        Raises:
            JobsBusyError: every slot is taken, or the pool is shut down.
        """
        deployment_id = deployment.deployment_id
        try:  # claimed before it can queue: a queued job must not look orphaned either
            self.store.update_deployment(
                deployment_id, runner=self.runner, heartbeat_at=self._now()
            )
        except FedgeError as exc:  # the job's start writes them again
            log.warning("deployment %s: runner not recorded: %s", deployment_id, exc)
        with self._lock:
            if self._closed:
                raise JobsBusyError("the deployment worker is shutting down")
            if not self._slots.acquire(blocking=False):
                raise JobsBusyError("too many deployments in progress; try again later")
            try:
                future = self._pool.submit(self._run, deployment)
            except RuntimeError as exc:
                self._slots.release()
                raise JobsBusyError("the deployment worker is shutting down") from exc
            self._futures[deployment_id] = future
            if self._beater is None:  # started with the first job, stopped by shutdown
                self._beater = threading.Thread(
                    target=self._beat_loop, name="fedge-deploy-heartbeat", daemon=True
                )
                self._beater.start()

        def done(_future: Future[None]) -> None:
            self._done(deployment_id)

        future.add_done_callback(done)

    def _done(self, deployment_id: str) -> None:
        with self._lock:
            self._futures.pop(deployment_id, None)
        self._slots.release()

    def active(self) -> list[str]:
        """Ids of the deployments running or queued."""
        with self._lock:
            return sorted(self._futures)

    def wait(self, deployment_id: str, timeout: float | None = None) -> None:
        """Block until a job ends (tests; no-op if it is not known any more)."""
        with self._lock:
            future = self._futures.get(deployment_id)
        if future is not None:
            future.exception(timeout=timeout)

    def beat(self) -> int:
        """Refresh the heartbeat of every job queued or running here, in one ``UPDATE``;
        returns the rows touched (0 after a logged failure: the next beat retries)."""
        ids = self.active()
        if not ids:
            return 0
        try:
            return self.store.touch_deployments(ids, runner=self.runner, now=self._now())
        except Exception as exc:  # a database hiccup must not end the heartbeat
            log.warning("deployment heartbeat not saved: %s", exc)
            return 0

    def _beat_loop(self) -> None:
        while not self._stop_beating.wait(self._heartbeat_s):
            self.beat()

    def _run(self, deployment: Deployment) -> None:
        deployment_id = deployment.deployment_id
        try:
            self.store.update_deployment(
                deployment_id,
                state=DeploymentState.RUNNING,
                runner=self.runner,
                heartbeat_at=self._now(),
            )
            targets = select_devices(self.home, [d.device_id for d in deployment.devices], None)

            def progress(report: PublishReport) -> None:
                try:
                    self.store.update_deployment(
                        deployment_id,
                        outcomes=_outcomes(report, final=False),
                        bytes_sent=report.bytes_sent,
                    )
                except FedgeError as exc:  # progress is best effort; the end is not
                    log.warning("deployment %s: progress not saved: %s", deployment_id, exc)

            report = self._factory().publish(
                deployment.version_ref,
                targets,
                timeout_s=self._timeout_s,
                discover_s=self._discover_s,
                on_progress=progress,
            )
            outcomes = _outcomes(report, final=True)
            ok = all(o.outcome == str(Outcome.COMMITTED) for o in outcomes)
            self.store.update_deployment(
                deployment_id,
                state=DeploymentState.SUCCEEDED if ok else DeploymentState.FAILED,
                outcomes=outcomes,
                bytes_sent=report.bytes_sent,
                finished_at=self._now(),
                error=None if ok else "not every device committed",
            )
            log.info("deployment %s: %s", deployment_id, "succeeded" if ok else "failed")
        except Exception as exc:  # the job must end in a final state whatever happened
            code = exc.code if isinstance(exc, FedgeError) else "internal_error"
            message = exc.message if isinstance(exc, FedgeError) else "unexpected error"
            log.exception("deployment %s failed", deployment_id)
            try:
                self.store.update_deployment(
                    deployment_id,
                    state=DeploymentState.FAILED,
                    finished_at=self._now(),
                    error=f"{code}: {message}",
                )
            except Exception:
                log.exception("deployment %s: the failure could not be recorded", deployment_id)

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new jobs; with ``wait``, block until the running ones end (queued ones
        that never started are cancelled and stay ``pending`` in the store)."""
        with self._lock:
            self._closed = True
            futures = dict(self._futures)
        self._pool.shutdown(wait=wait, cancel_futures=True)
        # Only now: the jobs waited for above kept beating while they ran.
        self._stop_beating.set()
        with self._lock:
            beater = self._beater
        if beater is not None and wait:
            beater.join(timeout=10.0)
        for deployment_id, future in futures.items():
            if future.cancelled():
                try:
                    self.store.update_deployment(
                        deployment_id,
                        state=DeploymentState.CANCELLED,
                        finished_at=self._now(),
                        error="cancelled: the coordinator shut down before the job started",
                    )
                except FedgeError as exc:
                    log.warning("deployment %s: cancellation not saved: %s", deployment_id, exc)

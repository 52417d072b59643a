"""Federated runs started from the control API: one at a time, on a background thread.

``POST /v1/federation/runs`` hands a :class:`~cloud.api.schemas.FederationRunIn` to
:meth:`FederationJobs.start`, which builds the plan with the very function
``fedge cloud federate`` uses (:func:`cloud.cli.federate.build_plan`), records a ``pending``
run (its id is the plan's run id, so the registry's lineage ``<run>/round-<n>`` and the
store agree) and starts a thread running :func:`cloud.cli.federate.run_plan` — the
Simulation Engine (Ray) or the Deployment Engine (SuperLink), as asked. Every finished round
is written with ``FleetStore.add_round`` and to the ``fedge_federation_round_metric`` gauge;
the outcome (``succeeded`` / ``failed`` / ``stopped``, best version, error) at the end.

Stop. Neither Flower engine can interrupt a round cleanly (Ray tasks are mid-training;
SecAgg+ is mid-protocol), so a stop means *no further rounds*: :meth:`FederationJobs.stop`
marks the run ``stopping`` and sets its event; the round callback, called by the ServerApp
after the current round is evaluated and stored, raises :class:`FederationStopped`. Flower's
ServerApp thread ends with it, the Simulation Engine tears its Ray actors down and calls
``ray.shutdown()``, and ``run_simulated_federation`` re-raises it (on the Deployment Engine
the round callback runs in the polling loop: the exception stops the Flower run and the
SuperLink). The run ends ``stopped`` with the rounds so far kept; its best version is the
most accurate of them (the best-round quantization of a finished run is skipped). A stop
asked before the first round ends takes effect after round 1 (Ray's start-up cannot be
cut short either).

A run that is ``pending``/``running`` in the store but not on this coordinator's thread (the
process ended mid-run) is marked ``stopped`` by :meth:`FederationJobs.stop`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.api.federation_requests import PlanRunner, plan_of_request
from cloud.api.jobs import JobsBusyError
from cloud.api.schemas import FederationRunIn
from cloud.cli.federate import run_plan
from cloud.federation.plan import FederationPlan, RoundReport
from cloud.federation.server import RoundCallback
from cloud.fleet.records import FederationRound, FederationRun, FederationRunState
from cloud.fleet.store import FleetStore
from cloud.observability import ROUND_METRIC
from cloud.registry import Registry
from shared.errors import ConfigError, FedgeError

__all__ = [
    "FederationJobs",
    "FederationStopped",
    "PlanRunner",
    "RunInProgressError",
    "RunNotActiveError",
]

log = logging.getLogger(__name__)

#: The gauge's ``metric`` labels, set from each round's report.
ROUND_METRICS = (
    "round",
    "accuracy",
    "loss",
    "participants",
    "rejected",
    "failed",
    "bytes_up",
    "bytes_down",
    "seconds",
)


class RunInProgressError(FedgeError):
    """A federated run is in progress: one runs at a time (the API answers 409)."""

    code = "run_in_progress"

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunNotActiveError(FedgeError):
    """The run has already ended (the API answers 409)."""

    code = "run_finished"


class FederationStopped(FedgeError):
    """Raised by the round callback after the current round of a run asked to stop."""

    code = "federation_stopped"


@dataclass
class _Active:
    run_id: str
    plan: FederationPlan
    engine: str
    stop: threading.Event = field(default_factory=threading.Event)
    done: bool = False  # the final state is written (under the jobs' lock)
    thread: threading.Thread | None = None


def _caused_by_stop(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, FederationStopped):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _best(run: FederationRun) -> str | None:
    scored = [r for r in run.rounds if r.accuracy is not None and r.version is not None]
    if not scored:
        return None
    return max(scored, key=lambda r: (r.accuracy, -r.round)).version


class FederationJobs:
    """At most one federated run at a time, on a background thread.

    Args:
        registry: Where the rounds' versions go (Simulation Engine; the Deployment Engine's
            ServerApp process opens the same database and artifact directory).
        store: Where runs and rounds are recorded.
        home: The state directory (``FEDGE_HOME``: key home and SuperLink state of the
            Deployment Engine).
        num_cpus: CPUs the Simulation Engine may use.
        runner: Runs a plan (default :func:`cloud.cli.federate.run_plan`).
        now: Wall clock.
    """

    def __init__(
        self,
        registry: Registry,
        store: FleetStore,
        *,
        home: Path,
        num_cpus: int = 2,
        runner: PlanRunner | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.store = store
        self.home = home
        self.num_cpus = num_cpus
        self._runner: PlanRunner = runner or run_plan
        self._now = now
        self._lock = threading.Lock()
        self._active: _Active | None = None
        self._closed = False

    # --- starting -----------------------------------------------------------------------
    def plan_of(self, request: FederationRunIn) -> FederationPlan:
        """The plan of a request (what ``fedge cloud federate`` builds from its options).

        Raises:
            ConfigError: the plan is inconsistent; NotFoundError: unknown ``init`` version
                or device; ConfigError ``device_revoked``: a revoked device.
        """
        plan = plan_of_request(request)
        if plan.init_version is not None:
            self.registry.get_version(plan.init_version)  # NotFoundError up front
        for device_id in request.devices or []:
            device = self.store.get_device(device_id)  # NotFoundError
            if device.revoked_at is not None:
                raise ConfigError(f"device {device_id!r} is revoked", code="device_revoked")
        return plan

    def start(self, request: FederationRunIn, *, created_by: str) -> FederationRun:
        """Record a ``pending`` run for ``request`` and start it on a background thread.

        Raises:
            RunInProgressError: a run is in progress.
            JobsBusyError: the coordinator is shutting down.
            ConfigError, NotFoundError: see :meth:`plan_of`.
        """
        with self._lock:
            if self._closed:
                raise JobsBusyError("the federation worker is shutting down")
            active = self._active
            if active is not None and not active.done:
                raise RunInProgressError(
                    f"federated run {active.run_id} is in progress; stop it or wait",
                    active.run_id,
                )
            plan = self.plan_of(request)
            recorded: dict[str, Any] = request.model_dump(mode="json")
            recorded.update(
                clients=plan.num_clients,
                run_id=plan.run_id,
                secure_aggregation=plan.uses_secagg,
            )
            name = plan.model_name
            if name is None and plan.init_version is not None:
                name = self.registry.get_version(plan.init_version).model
            run = self.store.create_run(
                plan.run_id, plan=recorded, created_by=created_by, now=self._now(), name=name
            )
            job = _Active(run_id=plan.run_id, plan=plan, engine=request.engine)
            job.thread = threading.Thread(
                target=self._run, args=(job,), name=f"fedge-federation-{plan.run_id}", daemon=True
            )
            self._active = job
            job.thread.start()
        log.info("federated run %s started (%s)", plan.run_id, request.engine)
        return run

    # --- following ----------------------------------------------------------------------
    def active(self) -> str | None:
        """The id of the run in progress on this coordinator, if any."""
        with self._lock:
            job = self._active
            return job.run_id if job is not None and not job.done else None

    def wait(self, run_id: str, timeout: float | None = None) -> None:
        """Block until the run's thread ends (tests; no-op for a run not running here)."""
        with self._lock:
            job = self._active
        if job is not None and job.run_id == run_id and job.thread is not None:
            job.thread.join(timeout)

    # --- stopping -----------------------------------------------------------------------
    def stop(self, run_id: str) -> FederationRun:
        """Ask a run to end after its current round (``stopping``, then ``stopped``).

        Idempotent while it stops. Raises ``NotFoundError`` (unknown run) and
        :class:`RunNotActiveError` (it has ended).
        """
        with self._lock:
            job = self._active
            if job is not None and job.run_id == run_id and not job.done:
                if not job.stop.is_set():
                    job.stop.set()
                    log.info("federated run %s: stop asked", run_id)
                    return self.store.update_run(run_id, state=FederationRunState.STOPPING)
                return self.store.get_run(run_id)
            run = self.store.get_run(run_id)
            if run.state.final:
                raise RunNotActiveError(f"federated run {run_id} has already {run.state}")
            # In the store as unfinished, but no thread runs it: the coordinator that ran
            # it ended mid-run. Nothing is left to stop; record that.
            return self.store.update_run(
                run_id,
                state=FederationRunState.STOPPED,
                finished_at=self._now(),
                error="stopped: the run was not running on this coordinator (it ended mid-run)",
                best_version=_best(run),
            )

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Refuse new runs and stop the one in progress after its current round; with
        ``wait``, block until it has ended (``timeout`` seconds at most)."""
        with self._lock:
            self._closed = True
            job = self._active
            if job is not None and not job.done and not job.stop.is_set():
                job.stop.set()
                try:
                    self.store.update_run(job.run_id, state=FederationRunState.STOPPING)
                except FedgeError as exc:
                    log.warning("run %s: stopping not recorded: %s", job.run_id, exc)
        if wait and job is not None and job.thread is not None:
            job.thread.join(timeout)

    # --- the worker ---------------------------------------------------------------------
    def _on_round(self, job: _Active) -> RoundCallback:
        def on_round(report: RoundReport) -> None:
            try:
                self.store.add_round(
                    job.run_id,
                    FederationRound(
                        round=report.round,
                        accuracy=report.accuracy,
                        loss=report.loss,
                        participants=report.participants,
                        rejected=report.rejected,
                        failed=report.failed,
                        bytes_up=report.bytes_up,
                        bytes_down=report.bytes_down,
                        seconds=report.seconds,
                        version=report.version,
                    ),
                )
                if report.round == 1 and report.version and job.plan.model_name is None:
                    model = report.version.rpartition("@")[0]
                    if model:
                        self.store.update_run(job.run_id, name=model)
            except FedgeError as exc:  # the rounds are in the registry whatever happens
                log.warning("run %s: round %d not recorded: %s", job.run_id, report.round, exc)
            for metric in ROUND_METRICS:
                value = float(getattr(report, metric))
                ROUND_METRIC.labels(run=job.run_id, metric=metric).set(
                    value if math.isfinite(value) else math.nan
                )
            if job.stop.is_set():
                raise FederationStopped(f"stopped after round {report.round} on request")

        return on_round

    def _run(self, job: _Active) -> None:
        run_id = job.run_id
        state = FederationRunState.FAILED
        error: str | None = None
        best: str | None = None
        try:
            with self._lock:
                stopping = job.stop.is_set()
                self.store.update_run(
                    run_id,
                    state=FederationRunState.STOPPING if stopping else FederationRunState.RUNNING,
                    started_at=self._now(),
                )
            if stopping:
                raise FederationStopped("stopped before the first round")
            result = self._runner(
                job.plan,
                self.registry,
                engine=job.engine,
                on_round=self._on_round(job),
                num_cpus=self.num_cpus,
                home=self.home,
            )
            state, best = FederationRunState.SUCCEEDED, result.best_version
            log.info("federated run %s succeeded: best %s", run_id, best)
        except BaseException as exc:  # the run must end in a final state whatever happened
            if _caused_by_stop(exc):
                state = FederationRunState.STOPPED
                log.info("federated run %s stopped", run_id)
            else:
                code = exc.code if isinstance(exc, FedgeError) else "internal_error"
                message = exc.message if isinstance(exc, FedgeError) else repr(exc)
                error = f"{code}: {message}"
                log.exception("federated run %s failed", run_id)
            if not isinstance(exc, Exception):
                self._finish(job, state, error, best)
                raise
        self._finish(job, state, error, best)

    def _finish(
        self, job: _Active, state: FederationRunState, error: str | None, best: str | None
    ) -> None:
        with self._lock:
            try:
                if best is None:
                    best = _best(self.store.get_run(job.run_id))
                self.store.update_run(
                    job.run_id,
                    state=state,
                    finished_at=self._now(),
                    error=error,
                    best_version=best,
                )
            except Exception:
                log.exception("federated run %s: the outcome could not be recorded", job.run_id)
            finally:
                job.done = True

"""The coordinator as a long-running service: control API + ingestion + retention.

:func:`serve` is what ``fedge cloud serve`` runs, in this order:

1. open the resources (:func:`build_resources`: registry and fleet store on one database,
   migrated; the key home, its enrollment records in that database — an old
   ``fleet.json`` is imported once; the deployment jobs; the broker configuration);
2. start the telemetry retention job and the leader loop
   (:class:`cloud.rollout.coordinator.RolloutCoordinator`): the process holding the leader
   lease (a PostgreSQL advisory lock; a file lock beside a SQLite database) runs the
   ingestion worker (:class:`cloud.ingest.IngestWorker`, identity ``fedge-ingest``: the
   broker allows one session per identity, and the coordinator's own is taken by the
   publishes of the deployment jobs and rollouts), the staged rollouts and the federated
   runs (a standby answers ``503 not_leader`` to starting one), and the sweep of
   deployments whose runner died (:class:`InterruptedSweep`); another process on the
   same database stands by, serves the API, and takes over within one ``--lease-poll``
   interval after the leader's lease ends;
3. run uvicorn with :func:`cloud.api.app.create_app` until SIGTERM or Ctrl-C;
4. then, in this order: uvicorn's graceful shutdown (requests in progress finish), the
   ingestion flush (the batch in flight is committed and acknowledged; the broker session
   is kept, so what devices send meanwhile waits for the next start), the retention job,
   the interrupted-deployment sweep, the deployment jobs (running publishes finish), the
   database.

Crash recovery of deployments: every serve process runs deployment jobs (either may get
``POST /v1/deployments``), each job beating a heartbeat while it is queued or running
(:class:`cloud.api.jobs.DeploymentJobs`). At start-up, and then every
``deployment_stale_s`` in the leader, the open deployments whose heartbeat is older than
``deployment_stale_s`` are marked ``failed``
(:func:`cloud.fleet.sync.fail_interrupted_deployments`): those another live process runs
are left alone.

Exit status 0 after a signal, 1 if the server could not start (e.g. the port is taken).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import uvicorn

from cloud.api.app import broker_address, create_app
from cloud.api.app import build_resources as api_resources
from cloud.api.deps import HealthCheck, Resources
from cloud.broker import BrokerFiles
from cloud.broker_process import refresh_broker
from cloud.config import Settings
from cloud.fleet.sync import DEFAULT_STALE_S, InterruptedSweep, fail_interrupted_deployments
from cloud.ingest import DEFAULT_RETENTION_S, IngestWorker, RetentionJob
from cloud.keys import INGEST_USER, KeyHome
from cloud.rollout.coordinator import RolloutCoordinator
from shared.errors import ConfigError

__all__ = ["CoordinatorService", "build_resources", "build_service", "serve"]

log = logging.getLogger(__name__)


def build_resources(settings: Settings, *, broker: tuple[str, int] | None = None) -> Resources:
    """The API's resources (:func:`cloud.api.app.build_resources`); the service adds its
    own broker and ingestion checks in :func:`build_service`."""
    return api_resources(settings, broker=broker)


def _ingest_identity(home: KeyHome, files: BrokerFiles) -> None:
    """Make sure the ``fedge-ingest`` identity exists and the generated ACL grants it.

    A key home or broker configuration from before the ingestion worker gets the
    certificate now, and the broker's ACL is rewritten (and a broker run by
    ``fedge broker run`` reloaded), as enrolling a device does.
    """
    if not home.exists():
        raise ConfigError(f"no key home at {home.path}; run `fedge keys init` first")
    home.ensure_ingest()
    try:
        acl = files.acl.read_text(encoding="utf-8")
    except OSError:
        return  # no generated configuration here: the broker is managed elsewhere
    if f"user {INGEST_USER}\n" not in acl:
        result = refresh_broker(home, files)
        log.warning(
            "the broker ACL had no %s section: rewritten (broker reloaded: %s)",
            INGEST_USER,
            result["broker_reloaded"],
        )


class LeaderIngest:
    """Ingestion on the leader only: the broker allows one ``fedge-ingest`` session (and the
    key home's identity lock one worker per host), so a standby ``fedge cloud serve`` does
    not ingest. The session is persistent: what devices send during a takeover waits in it
    for the new leader's worker, which is built fresh each time this process starts leading.
    """

    def __init__(self, factory: Callable[[], IngestWorker]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self.worker: IngestWorker | None = None

    def set_leader(self, leading: bool) -> None:
        """Start a worker on becoming leader; flush and stop it on losing the lease."""
        with self._lock:
            if leading and self.worker is None:
                worker = self._factory()
                worker.start()
                self.worker = worker
                log.info("ingestion started (%s)", INGEST_USER)
            elif not leading and self.worker is not None:
                worker, self.worker = self.worker, None
                worker.stop()
                log.info("ingestion stopped")


_STANDBY = (True, "standby: ingestion and rollouts run on the leader")


def _broker_check(ingest: LeaderIngest, host: str, port: int) -> HealthCheck:
    def check() -> tuple[bool, str]:
        worker = ingest.worker
        if worker is None:
            return _STANDBY
        stats = worker.stats
        if stats.failure:
            return False, stats.failure
        if not stats.connected:
            return False, f"{INGEST_USER} not connected to {host}:{port}"
        if not stats.subscribed:
            return False, f"{INGEST_USER} connected to {host}:{port}, not subscribed yet"
        return True, f"{INGEST_USER} session on {host}:{port}"

    return check


def _ingest_check(ingest: LeaderIngest) -> HealthCheck:
    def check() -> tuple[bool, str]:
        worker = ingest.worker
        if worker is None:
            return _STANDBY
        stats = worker.stats
        if stats.write_error:
            return False, f"database writes failing: {stats.write_error}"
        dropped = sum(stats.dropped.values())
        return True, (
            f"{stats.received} received, {stats.written_total} written, {dropped} dropped, "
            f"{stats.pending} pending, last commit at {stats.last_commit_at}"
        )

    return check


@dataclass
class CoordinatorService:
    """The resources plus the background work of a running coordinator."""

    resources: Resources
    ingest: LeaderIngest
    retention: RetentionJob
    broker: tuple[str, int]
    rollouts: RolloutCoordinator
    sweep: InterruptedSweep | None = None
    _started: bool = field(default=False, init=False)

    def start(self) -> None:
        """Start the retention job, the leader loop (if it gets the lease, it starts
        ingestion — it connects in the background — and runs rollouts; else it stands
        by) and the interrupted-deployment sweep (which runs while this is the leader)."""
        self.retention.start()
        self.rollouts.start()
        if self.sweep is not None:
            self.sweep.start()
        self._started = True

    def close(self) -> None:
        """Release the lease (flushing ingestion), stop the background jobs and close the
        database (idempotent)."""
        try:
            if self._started:
                self._started = False
                self.rollouts.stop()  # after its current step; stops ingestion, releases
                log.info("rollout coordinator stopped")
                self.ingest.set_leader(False)
                self.retention.stop()
                log.info("telemetry retention stopped")
                if self.sweep is not None:
                    self.sweep.stop()
        finally:
            running = self.resources.jobs.active()
            if running:
                log.info("waiting for %d running deployment job(s)", len(running))
            self.resources.close(wait=True)
            log.info("deployment jobs stopped; database closed")


def build_service(
    settings: Settings,
    *,
    broker: tuple[str, int] | None = None,
    retention_s: float = DEFAULT_RETENTION_S,
    retention_interval_s: float = 3600.0,
    lease_poll_s: float = 1.0,
    deployment_stale_s: float = DEFAULT_STALE_S,
) -> CoordinatorService:
    """Open the resources, fail the deployments whose runner died, and build (not start)
    ingestion, retention and the leader's sweep of such deployments.

    Args:
        settings: Where the state lives.
        broker: The broker's TLS listener; None: from ``$FEDGE_HOME/broker``'s config.
        retention_s: How long telemetry is kept.
        retention_interval_s: How often it is pruned.
        lease_poll_s: Seconds between two passes of the leader loop.
        deployment_stale_s: Seconds without a heartbeat after which an open deployment
            is orphaned (keep it a few of the deployment jobs' ``heartbeat_s``); also the
            leader's sweep interval.

    Raises:
        ConfigError: no key home; RegistryError: the database cannot be opened.
    """
    resources = build_resources(settings, broker=broker)
    try:
        files = resources.broker_files or BrokerFiles(settings.home / "broker")
        host, port = broker or broker_address(files)
        _ingest_identity(resources.home, files)
        # The records are in the database already (the CLI writes them there too); an old
        # key home's fleet.json is imported now, once, rather than by the first request.
        resources.home.import_json_fleet()
        # Only the deployments whose runner stopped beating: another serve process on this
        # database may be running some right now.
        fail_interrupted_deployments(
            resources.store, now=resources.now(), stale_s=deployment_stale_s
        )
        ingest = LeaderIngest(lambda: IngestWorker(resources.home, host, port, resources.store))
        retention = RetentionJob(
            resources.store, retention_s=retention_s, interval_s=retention_interval_s
        )
        rollouts = _rollout_coordinator(resources, (host, port), lease_poll_s, ingest)
        sweep = InterruptedSweep(
            resources.store,
            lambda: rollouts.leader,
            stale_s=deployment_stale_s,
            interval_s=deployment_stale_s,
            clock=resources.now,
        )
    except BaseException:
        resources.close(wait=False)
        raise
    resources.health["broker"] = _broker_check(ingest, host, port)
    resources.health["ingest"] = _ingest_check(ingest)
    resources.rollouts = rollouts
    return CoordinatorService(resources, ingest, retention, (host, port), rollouts, sweep)


def _rollout_coordinator(
    resources: Resources, broker: tuple[str, int], poll_s: float, ingest: LeaderIngest
) -> RolloutCoordinator:
    """The leader loop: rollouts and ingestion run in whichever serve process holds the
    lease."""
    from cloud.deployment.publisher import Publisher
    from cloud.rollout.delivery import PublisherLink
    from cloud.rollout.engine import RolloutEngine
    from cloud.rollout.lease import lease_for

    host, port = broker

    def engine() -> RolloutEngine:
        link = PublisherLink(
            resources.home,
            lambda: Publisher(resources.registry, resources.home, host=host, port=port),
            lambda: broker,
        )
        return RolloutEngine(resources.store, link, clock=resources.now)

    return RolloutCoordinator(
        resources.store,
        lease_for(resources.registry.engine),
        engine,
        poll_s=poll_s,
        on_leadership=ingest.set_leader,
        registry=resources.registry,
    )


class _Stop:
    """SIGTERM / SIGINT while not serving: remember it; a second one forces the exit."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only: the caller stops us otherwise
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, sig: int, _frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self.requested is None:
            self.requested = name
            log.info("%s received: stopping", name)
            return
        log.warning("second signal (%s) while stopping: exiting without waiting", name)
        os._exit(1)


def serve(
    settings: Settings,
    host: str,
    port: int,
    *,
    broker: tuple[str, int] | None = None,
    retention_s: float = DEFAULT_RETENTION_S,
    lease_poll_s: float = 1.0,
    deployment_stale_s: float = DEFAULT_STALE_S,
) -> int:
    """Run the coordinator service until SIGTERM or Ctrl-C; returns the exit status.

    Raises:
        ConfigError, RegistryError: it could not start (nothing is left running).
    """
    stop = _Stop()
    stop.install()  # before uvicorn: it re-raises the signal it caught once it has stopped
    try:
        service = build_service(
            settings,
            broker=broker,
            retention_s=retention_s,
            lease_poll_s=lease_poll_s,
            deployment_stale_s=deployment_stale_s,
        )
        db = service.resources.registry.engine.dialect.name
        bhost, bport = service.broker
        log.info(
            "coordinator starting: database %s, broker %s:%d (as %s), API http://%s:%d",
            db,
            bhost,
            bport,
            INGEST_USER,
            host,
            port,
        )
        started = False
        try:
            service.start()
            app = create_app(settings, service.resources)
            config = uvicorn.Config(
                app,
                host=host,
                port=port,
                lifespan="on",
                log_level="info",
                access_log=False,
                timeout_graceful_shutdown=5,  # open dashboard event streams never end by themselves
            )
            server = uvicorn.Server(config)
            if stop.requested is None:
                try:
                    server.run()
                except SystemExit as exc:  # uvicorn exits like this when it cannot bind
                    log.error("the API server could not start (status %s)", exc.code)
                started = server.started
                log.info("API server stopped")
            else:
                started = True  # stopped before it served: a requested, clean stop
        finally:
            service.close()
        log.info("coordinator stopped")
        return 0 if started else 1
    finally:
        stop.restore()

"""Clean up after a crash: deployments a killed coordinator left open.

The enrollment records need no syncing any more: they live in the fleet database
(``cloud.fleet.credentials.DatabaseFleetRecords``), which every product path's key home
reads and writes; an old key home's ``fleet.json`` is imported once by the key home itself
(``cloud.keys.KeyHome.import_json_fleet``).

Deployments a killed coordinator left ``pending``/``running`` are marked ``failed`` with the
reason: their devices' outcomes stay as last recorded. Two serve processes may share the
database, and either may be running a deployment job, so an open deployment counts as
left behind only once its runner's heartbeat (``cloud.api.jobs.DeploymentJobs``) is older
than ``stale_s``; with no heartbeat at all (a row from before the runner was recorded, or
one created and never handed to a job) when it is ``running``, or ``pending`` for longer
than ``stale_s``. :func:`fail_interrupted_deployments` runs when a serve process starts and
then periodically in the leader (:class:`InterruptedSweep`, run by ``cloud.service``), which
catches a process that died while the others kept running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cloud.fleet.records import Deployment
from cloud.fleet.store import FleetStore

__all__ = ["DEFAULT_STALE_S", "InterruptedSweep", "fail_interrupted_deployments"]

log = logging.getLogger(__name__)

#: Seconds without a heartbeat after which an open deployment is orphaned: three of the
#: deployment jobs' default heartbeats (5 s), so one late beat is not a death.
DEFAULT_STALE_S = 15.0


def _reason(deployment: Deployment, now: float) -> str:
    """The error text: the old one, plus which runner went quiet and for how long."""
    base = "interrupted: the coordinator stopped before the publish finished"
    if deployment.heartbeat_at is None:
        return f"{base} (no heartbeat from {deployment.runner or 'an unrecorded runner'})"
    return (
        f"{base} (runner {deployment.runner or 'unrecorded'}: "
        f"last heartbeat {now - deployment.heartbeat_at:.0f} s ago)"
    )


def fail_interrupted_deployments(
    store: FleetStore, *, now: float, stale_s: float = DEFAULT_STALE_S
) -> list[str]:
    """Mark open deployments whose runner stopped (no heartbeat for ``stale_s``) ``failed``.

    A deployment another live process runs keeps beating and is left alone; one whose
    runner beats between the read and the write is left alone too (the write is
    conditional). Returns the ids marked failed.
    """
    if stale_s <= 0:
        raise ValueError("stale_s must be positive")
    cutoff = now - stale_s
    failed = [
        d.deployment_id
        for d in store.stale_deployments(cutoff=cutoff)
        if store.fail_stale_deployment(
            d.deployment_id, cutoff=cutoff, now=now, error=_reason(d, now)
        )
    ]
    if failed:
        log.warning("%d interrupted deployment(s) marked failed", len(failed))
    return failed


class InterruptedSweep:
    """Fail the deployments whose runner died, every ``interval_s``, in the leader only.

    The start-up sweep of :func:`build_service` catches what a process left before it
    restarted; this one what a process left that died while the others kept running
    (its deployments would stay ``running`` for ever). One sweeper is enough, so it runs
    where the leader lease is (``is_leader``: the rollout coordinator's flag); the sweep is
    idempotent, so a pass during a takeover does no harm.

    Args:
        store: The fleet store.
        is_leader: Whether this process holds the lease now.
        stale_s: Seconds without a heartbeat after which an open deployment is orphaned.
        interval_s: Seconds between two passes.
        clock: Unix seconds.
    """

    def __init__(
        self,
        store: FleetStore,
        is_leader: Callable[[], bool],
        *,
        stale_s: float = DEFAULT_STALE_S,
        interval_s: float = DEFAULT_STALE_S,
        clock: Callable[[], float],
    ) -> None:
        if stale_s <= 0 or interval_s <= 0:
            raise ValueError("stale_s and interval_s must be positive")
        self._store = store
        self._is_leader = is_leader
        self._stale_s = stale_s
        self._interval_s = interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[str]:
        """Sweep now if leading; the ids marked failed (none after a logged failure)."""
        if not self._is_leader():
            return []
        try:
            return fail_interrupted_deployments(
                self._store, now=self._clock(), stale_s=self._stale_s
            )
        except Exception:  # a database hiccup: the next pass retries
            log.exception("interrupted-deployment sweep failed")
            return []

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fedge-sweep", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.run_once()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (a pass in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

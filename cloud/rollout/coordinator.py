"""The leader's loop: hold the lease, step every active rollout, reconcile finished ones,
and start the rollout a succeeded federation run asked for (its ``rollout_policy``).

Runs as a thread inside ``fedge cloud serve`` (:mod:`cloud.service`). Every process runs
one; only the lease holder steps rollouts, the others poll the lease every ``poll_s`` and
take over when the leader's lease ends. A rollout step that raises is logged and retried on
the next poll (every step is idempotent), so one bad rollout cannot stop the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cloud.rollout.engine import RolloutEngine
from cloud.rollout.lease import LeaderLease
from cloud.rollout.records import RolloutState
from shared.errors import FedgeError

if TYPE_CHECKING:
    from cloud.fleet.store import FleetStore
    from cloud.registry import Registry

__all__ = ["RolloutCoordinator"]

logger = logging.getLogger(__name__)

_RECONCILE_EVERY = 10  # polls between two reconcile passes over completed rollouts


class RolloutCoordinator:
    """The lease-holding loop.

    Args:
        store: The fleet store.
        lease: The leader lease.
        engine: Builds the engine when this process becomes leader.
        poll_s: Seconds between two passes (and between two lease attempts on a standby).
        on_leadership: Called with True when this process starts leading, False when it
            stops (e.g. to start and stop ingestion).
        registry: The model registry (None: federation runs never start rollouts).
    """

    def __init__(
        self,
        store: FleetStore,
        lease: LeaderLease,
        engine: Callable[[], RolloutEngine],
        *,
        poll_s: float = 1.0,
        on_leadership: Callable[[bool], None] | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.store, self.lease, self._engine_factory = store, lease, engine
        self.registry = registry
        self._refused: set[str] = set()
        self.poll_s = poll_s
        self._on_leadership = on_leadership
        self._engine: RolloutEngine | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._polls = 0
        self.leader = False

    def start(self) -> None:
        """Start the loop thread."""
        self._thread = threading.Thread(target=self._run, name="rollout-coordinator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step and release the lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._set_leader(False)
        self.lease.release()

    def _set_leader(self, value: bool) -> None:
        if value == self.leader:
            return
        self.leader = value
        logger.warning("this coordinator is %s", "the leader" if value else "no longer the leader")
        if self._on_leadership is not None:
            try:
                self._on_leadership(value)
            except Exception:  # a callback must never stop the loop
                logger.exception("leadership callback failed")

    def poll_once(self) -> None:
        """One pass: keep or take the lease; if leading, step what is active."""
        if self.leader and not self.lease.alive():
            self._set_leader(False)
            self._engine = None
        if not self.leader and self.lease.acquire():
            self._set_leader(True)
        if not self.leader:
            return
        if self._engine is None:
            self._engine = self._engine_factory()
        for rollout_id in self.store.active_rollout_ids():
            if self._stop.is_set() or not self.lease.alive():
                return
            try:
                self._engine.drive(rollout_id)
            except Exception:  # logged; the step is idempotent and retried next poll
                logger.exception("rollout %s: step failed", rollout_id)
        self._polls += 1
        if self._polls % _RECONCILE_EVERY == 0:
            self._reconcile()

    def _federation_rollouts(self) -> None:
        """Succeeded federation runs that asked for a rollout of their best round, and
        have none yet: start it under the named policy (once; a refusal is logged and not
        retried by this process)."""
        if self.registry is None:
            return
        from cloud.fleet.records import FederationRunState
        from cloud.rollout.create import resolve_policy, start_rollout

        for run in self.store.list_runs(limit=50).items:
            name = run.plan.get("rollout_policy")
            source = f"federation:{run.run_id}"
            if (
                run.state is not FederationRunState.SUCCEEDED
                or not isinstance(name, str)
                or run.best_version is None
                or source in self._refused
                or self.store.rollout_by_source(source) is not None
            ):
                continue
            try:
                policy = resolve_policy(self.store, None, name)
                made = start_rollout(
                    self.store, self.registry, run.best_version, policy,
                    created_by=run.created_by, now=time.time(), policy_name=name, source=source,
                )  # fmt: skip
            except FedgeError as exc:
                self._refused.add(source)
                logger.error("run %s: no rollout of %s: %s", run.run_id, run.best_version, exc)
                continue
            logger.info("run %s: rollout %s of %s", run.run_id, made.rollout_id, run.best_version)

    def _reconcile(self) -> None:
        assert self._engine is not None
        try:
            self._federation_rollouts()
        except Exception:
            logger.exception("federation → rollout pass failed")
        page = self.store.list_rollouts(state=RolloutState.COMPLETED, limit=50)
        for rollout in page.items:
            try:
                self._engine.reconcile(rollout.rollout_id)
            except Exception:
                logger.exception("rollout %s: reconcile failed", rollout.rollout_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the database is away: try again next poll
                logger.exception("rollout coordinator pass failed")
            self._stop.wait(self.poll_s)

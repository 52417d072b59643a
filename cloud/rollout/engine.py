"""The rollout engine: a state machine persisted in the database, stepped by a loop.

Per cohort (``docs`` in :mod:`cloud.rollout.policy`): ``start`` (manual approval is asked
here) → ``shadow`` (purpose=shadow manifests, batch by batch) → ``shadow_bake`` (the shadow
gate) → ``install`` (purpose=install, batch by batch; the install gate after each batch) →
``bake`` (the field gate) → the next cohort, or ``completed``. A failed gate moves to
``rollback``: manifests withdrawn, ``drop_candidate`` to the cohort's devices holding the
candidate in shadow, rollback commands to its committed ones, then ``aborted``; later
cohorts are never touched. Every gate decision goes to the timeline with its evidence.

Each :meth:`RolloutEngine.step` reads the rollout from the store, does one transition and
writes it back, so a coordinator killed anywhere resumes from the last write. Steps are
idempotent: a device is marked ``sent`` before its manifest goes out; a resumed install
re-sends only to devices with no outcome yet (the publisher answers ``committed`` for a
device that already serves the target, rule Q1); drops are recorded before any rollback
command goes out, and a device that dropped already answers ``no_candidate`` (dropped).

Time comes from ``clock``; devices are reached through a :class:`RolloutLink`, so unit
tests run the engine with a fake link and a fake clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cloud.rollout.delivery import Answer, DeviceAnswer, RolloutLink
from cloud.rollout.gates import (
    Decision,
    DeviceProgress,
    Verdict,
    field_gate,
    install_gate,
    shadow_gate,
)
from cloud.rollout.policy import MissingEvidence, OfflinePolicy, RolloutPolicy
from cloud.rollout.reconcile import reconcile
from cloud.rollout.records import Phase, Rollout, RolloutControl, RolloutState
from shared.errors import FedgeError

if TYPE_CHECKING:
    from cloud.fleet.store import FleetStore

__all__ = ["RolloutEngine"]

logger = logging.getLogger(__name__)

P = DeviceProgress
_ANSWER = {
    Answer.COMMITTED: P.COMMITTED,
    Answer.HELD: P.SHADOWING,
    Answer.FAILED: P.FAILED,
    Answer.ROLLED_BACK: P.ROLLED_BACK,
    Answer.ROLLBACK_FAILED: P.ROLLBACK_FAILED,
    Answer.DROPPED: P.DROPPED,
    Answer.DROP_FAILED: P.DROP_FAILED,
}
#: Devices that (may) still hold the rollout's candidate in shadow: a rollback drops it.
_HOLDING = (P.SHADOWING, P.DROP_FAILED)


def _target(version_ref: str) -> tuple[str, int]:
    model, _, number = version_ref.rpartition("@")
    return model, int(number) if number.isdigit() else 0


class RolloutEngine:
    """Steps rollouts stored in ``store``, reaching devices through ``link``.

    Args:
        store: The fleet store (rollout tables, telemetry and shadow evidence).
        link: Delivery and rollback.
        clock: Unix seconds.
        rollback_timeout_s: How long rollback and ``drop_candidate`` commands wait for the
            devices' answers.
    """

    def __init__(
        self,
        store: FleetStore,
        link: RolloutLink,
        *,
        clock: Callable[[], float] = time.time,
        rollback_timeout_s: float = 30.0,
    ) -> None:
        self.store, self.link, self.clock = store, link, clock
        self.rollback_timeout_s = rollback_timeout_s

    # -- the loop's entry points ----------------------------------------------------------

    def drive(self, rollout_id: str, *, max_steps: int = 50) -> Rollout:
        """Step until the rollout waits (for time, evidence, approval) or ends."""
        rollout = self.store.get_rollout(rollout_id)
        for _ in range(max_steps):
            before = (rollout.state, rollout.phase, rollout.cohort, rollout.counts())
            rollout = self.step(rollout_id)
            if (rollout.state, rollout.phase, rollout.cohort, rollout.counts()) == before:
                break
        return rollout

    def step(self, rollout_id: str) -> Rollout:
        """Apply a pending control, then do at most one transition; the rollout after it."""
        rollout = self.store.get_rollout(rollout_id)
        if rollout.control is not None:
            self._control(rollout)
            rollout = self.store.get_rollout(rollout_id)
        policy = RolloutPolicy.model_validate(rollout.policy)
        if rollout.phase is Phase.ROLLBACK:
            self._rollback(rollout, policy)
        elif rollout.state is RolloutState.RUNNING:
            handler = {
                Phase.START: self._start,
                Phase.SHADOW: self._send,
                Phase.INSTALL: self._send,
                Phase.SHADOW_BAKE: self._bake_shadow,
                Phase.BAKE: self._bake_field,
            }.get(rollout.phase)
            if handler is not None:
                handler(rollout, policy)
        return self.store.get_rollout(rollout_id)

    def reconcile(self, rollout_id: str) -> int:
        """Devices of a completed rollout that were away: see
        :func:`cloud.rollout.reconcile.reconcile`."""
        return reconcile(self.store, self.link, rollout_id, clock=self.clock)

    # -- helpers --------------------------------------------------------------------------

    def _event(
        self, rollout: Rollout, kind: str, cohort: int | None, detail: dict[str, object]
    ) -> None:
        self.store.add_rollout_event(
            rollout.rollout_id, kind, now=self.clock(), cohort=cohort, detail=dict(detail)
        )

    def _set(self, rollout: Rollout, **fields: object) -> None:
        self.store.update_rollout(rollout.rollout_id, now=self.clock(), **fields)

    def _begin_rollback(self, rollout: Rollout, reason: str, scope: str = "cohort") -> None:
        self._event(rollout, "abort", rollout.cohort, {"reason": reason, "scope": scope})
        self._set(
            rollout,
            state=RolloutState.RUNNING,
            phase=Phase.ROLLBACK,
            phase_started_at=self.clock(),
            reason=reason[:2000],
            rollback_scope=scope,
        )

    def _control(self, rollout: Rollout) -> None:
        """Apply the operator's pending request, then clear it (apply is idempotent, so a
        crash between the two applies it again harmlessly)."""
        action = RolloutControl(rollout.control or "")
        state, final = rollout.state, rollout.state.final
        if action is RolloutControl.PAUSE and state in (
            RolloutState.RUNNING,
            RolloutState.AWAITING_APPROVAL,
        ):
            self._set(rollout, state=RolloutState.PAUSED)
        elif action is RolloutControl.RESUME and state is RolloutState.PAUSED:
            self._set(rollout, state=RolloutState.RUNNING)
        elif action is RolloutControl.APPROVE and not final:
            approved = max(rollout.approved_cohort, rollout.cohort)
            new_state = RolloutState.RUNNING if state is RolloutState.AWAITING_APPROVAL else state
            self._set(rollout, approved_cohort=approved, state=new_state)
        elif action is RolloutControl.ABORT and not final and rollout.phase is not Phase.ROLLBACK:
            self._begin_rollback(rollout, "aborted by an operator")
        elif (
            action is RolloutControl.ROLLBACK
            and state is not RolloutState.ROLLED_BACK
            and (rollout.phase is not Phase.ROLLBACK or rollout.rollback_scope != "all")
        ):
            self._begin_rollback(rollout, "rollback requested by an operator", scope="all")
        if self.store.take_rollout_control(rollout.rollout_id, action.value):
            self._event(rollout, f"control_{action.value}", rollout.cohort, {})

    # -- phases ---------------------------------------------------------------------------

    def _start(self, rollout: Rollout, policy: RolloutPolicy) -> None:
        index = rollout.cohort
        if not rollout.cohort_devices(index):
            self._finish_cohort(rollout, policy, skipped=True)
            return
        if policy.manual_approval and index > 0 and rollout.approved_cohort < index:
            self._set(rollout, state=RolloutState.AWAITING_APPROVAL)
            self._event(rollout, "approval_requested", index, {})
            return
        now = self.clock()
        self.store.update_cohort(rollout.rollout_id, index, state="running", started_at=now)
        phase = Phase.SHADOW if policy.gates.shadow is not None else Phase.INSTALL
        self._set(rollout, phase=phase, phase_started_at=now)
        devices = [d.device_id for d in rollout.cohort_devices(index)]
        self._event(rollout, "cohort_started", index, {"devices": devices, "phase": str(phase)})

    def _send(self, rollout: Rollout, policy: RolloutPolicy) -> None:
        """One batch of manifests (at most ``max_concurrent_downloads``), then the gate."""
        shadow = rollout.phase is Phase.SHADOW
        cohort = policy.cohort(rollout.cohort)
        todo_states = {P.PENDING, P.SENT} if shadow else {P.PENDING, P.SENT, P.SHADOWING}
        members = rollout.cohort_devices(rollout.cohort)
        todo = [d.device_id for d in members if d.state in todo_states]
        batch = todo[: policy.max_concurrent_downloads]
        if batch:
            # Marked sent first: a coordinator killed during the publish knows to ask
            # these devices again (and the publisher skips any that committed meanwhile).
            self.store.set_device_progress(
                rollout.rollout_id, {d: (P.SENT, None) for d in batch}, now=self.clock(), sent=True
            )
            purpose = "shadow" if shadow else "install"
            try:
                answers = self.link.deliver(
                    rollout.version_ref, batch, purpose=purpose, timeout_s=cohort.device_timeout_s
                )
            except FedgeError as exc:
                if exc.code in ("invalid_argument", "not_deployable", "not_found"):
                    self._begin_rollback(rollout, f"cannot deliver: {exc.code}: {exc.message}")
                else:  # broker down, coordinator connection busy: the next step retries
                    logger.warning("rollout %s: delivery failed: %s", rollout.rollout_id, exc)
                    self._set(rollout, reason=f"delivery retrying: {exc.code}: {exc.message}")
                return
            self._record(rollout, policy, batch, answers)
            rollout = self.store.get_rollout(rollout.rollout_id)
            members = rollout.cohort_devices(rollout.cohort)
        progress = {d.device_id: P(d.state) for d in members}
        if shadow:  # a device holding the shadow copy has done what this phase asked
            progress = {k: P.COMMITTED if v is P.SHADOWING else v for k, v in progress.items()}
        decision = install_gate(progress, cohort, policy.offline)
        decision = Decision(
            "shadow_delivery" if shadow else "install",
            decision.verdict,
            decision.reason,
            decision.values,
            decision.thresholds,
            decision.samples,
        )
        if decision.verdict is Verdict.WAIT:
            return
        self._event(rollout, "gate", rollout.cohort, decision.to_dict())
        if decision.verdict is Verdict.FAIL:
            self._begin_rollback(rollout, f"{decision.gate} gate: {decision.reason}")
            return
        now = self.clock()
        if shadow:
            self._set(rollout, phase=Phase.SHADOW_BAKE, phase_started_at=now)
            return
        self.store.update_cohort(rollout.rollout_id, rollout.cohort, installed_at=now)
        self._set(rollout, phase=Phase.BAKE, phase_started_at=now)

    def _record(
        self,
        rollout: Rollout,
        policy: RolloutPolicy,
        batch: list[str],
        answers: dict[str, DeviceAnswer],
    ) -> None:
        timed_out = P.SKIPPED if policy.offline is OfflinePolicy.SKIP else P.TIMEOUT
        updates: dict[str, tuple[DeviceProgress, str | None]] = {}
        for device_id in batch:
            answer = answers.get(device_id, DeviceAnswer(Answer.TIMEOUT, "no_answer"))
            state = _ANSWER.get(answer.answer, timed_out)
            updates[device_id] = (state, answer.reason)
        self.store.set_device_progress(rollout.rollout_id, updates, now=self.clock())

    def _decide(
        self, rollout: Rollout, policy: RolloutPolicy, decision: Decision, bake_s: float
    ) -> bool:
        """True to pass the phase; aborts on a failed gate. A failure with enough samples
        aborts at once (within the bake); a pass waits for the bake to end; missing evidence
        waits up to the evidence timeout, then counts per ``missing_evidence``."""
        elapsed = self.clock() - rollout.phase_started_at
        if decision.verdict is Verdict.FAIL:
            self._event(rollout, "gate", rollout.cohort, decision.to_dict())
            self._begin_rollback(rollout, f"{decision.gate} gate: {decision.reason}")
            return False
        if elapsed < bake_s:
            return False
        if decision.verdict is Verdict.PASS:
            self._event(rollout, "gate", rollout.cohort, decision.to_dict())
            return True
        if elapsed < bake_s + policy.evidence_timeout_s:
            return False
        detail = {**decision.to_dict(), "missing_evidence": str(policy.missing_evidence)}
        self._event(rollout, "gate", rollout.cohort, detail)
        if policy.missing_evidence is MissingEvidence.PASS:
            return True
        self._begin_rollback(rollout, f"{decision.gate} gate: {decision.reason} (timed out)")
        return False

    def _bake_shadow(self, rollout: Rollout, policy: RolloutPolicy) -> None:
        gate = policy.gates.shadow
        assert gate is not None  # only entered with a shadow gate
        held = [
            d.device_id
            for d in rollout.cohort_devices(rollout.cohort)
            if d.state in (P.SHADOWING, P.COMMITTED)
        ]
        model, version = _target(rollout.version_ref)
        windows = self.store.shadow_windows(
            held, since=rollout.phase_started_at, model_id=model, version=version
        )
        if self._decide(rollout, policy, shadow_gate(windows, gate), gate.bake_s):
            self._set(rollout, phase=Phase.INSTALL, phase_started_at=self.clock())

    def _bake_field(self, rollout: Rollout, policy: RolloutPolicy) -> None:
        gate = policy.gates.field
        bake_s = policy.cohort(rollout.cohort).bake_s
        if gate is None:  # no field gate: the cohort bakes, and install outcomes decided
            if self.clock() - rollout.phase_started_at >= bake_s:
                self._finish_cohort(rollout, policy)
            return
        committed = [
            d.device_id for d in rollout.cohort_devices(rollout.cohort) if d.state == P.COMMITTED
        ]
        before = self.store.telemetry_windows(
            committed, since=rollout.created_at - gate.baseline_s, until=rollout.created_at
        )
        after = self.store.telemetry_windows(committed, since=rollout.phase_started_at)
        decision = field_gate(before, after, gate)
        if self._decide(rollout, policy, decision, bake_s):
            self._finish_cohort(rollout, policy)

    def _finish_cohort(
        self, rollout: Rollout, policy: RolloutPolicy, *, skipped: bool = False
    ) -> None:
        now = self.clock()
        index = rollout.cohort
        self.store.update_cohort(
            rollout.rollout_id, index, state="skipped" if skipped else "passed", finished_at=now
        )
        if not skipped:
            self._event(rollout, "cohort_passed", index, {"counts": rollout.counts()})
        if index + 1 < len(policy.cohorts):
            self._set(rollout, cohort=index + 1, phase=Phase.START, phase_started_at=now)
            return
        self._set(rollout, state=RolloutState.COMPLETED, phase=Phase.DONE, finished_at=now)
        self._event(
            rollout,
            "completed",
            None,
            {"counts": self.store.get_rollout(rollout.rollout_id).counts()},
        )

    def _rollback(self, rollout: Rollout, policy: RolloutPolicy) -> None:
        """Withdraw the retained manifests, make the devices holding the candidate drop it,
        roll committed devices back, end the rollout."""
        scope = rollout.rollback_scope or "cohort"
        devices = rollout.devices if scope == "all" else rollout.cohort_devices(rollout.cohort)
        sent = [d.device_id for d in devices if d.sends > 0 and d.state != P.ROLLED_BACK]
        committed = [d.device_id for d in devices if d.state == P.COMMITTED]
        holding = [d.device_id for d in devices if d.state in _HOLDING]
        try:
            self.link.withdraw(sent)  # first: a retained shadow manifest would re-hold it
            if holding:
                drops = self.link.drop_candidate(
                    rollout.version_ref, holding, timeout_s=self.rollback_timeout_s
                )
                # Recorded before the rollbacks: a restart does not ask these devices again.
                self.store.set_device_progress(
                    rollout.rollout_id,
                    {d: (_ANSWER.get(a.answer, P.DROP_FAILED), a.reason) for d, a in drops.items()},
                    now=self.clock(),
                )
            answers = self.link.rollback(committed, timeout_s=self.rollback_timeout_s)
        except FedgeError as exc:  # the broker is unreachable: the next step retries
            logger.warning("rollout %s: rollback failed: %s", rollout.rollout_id, exc)
            return
        updates = {
            d: (_ANSWER.get(a.answer, P.ROLLBACK_FAILED), a.reason) for d, a in answers.items()
        }
        self.store.set_device_progress(rollout.rollout_id, updates, now=self.clock())
        outcome: dict[str, int] = {}
        for state, _ in updates.values():
            outcome[str(state)] = outcome.get(str(state), 0) + 1
        self._event(
            rollout,
            "rolled_back",
            rollout.cohort,
            {
                "scope": scope,
                "withdrawn": len(sent),
                "rollback": outcome,
                # From the store, not this step's answers: a resumed rollback counts each
                # device once, and drops of an earlier rollback phase are not counted again.
                "drop_candidate": self.store.get_rollout(rollout.rollout_id).counts_since(
                    rollout.phase_started_at,
                    (P.DROPPED, P.DROP_FAILED),
                    {d.device_id for d in devices},
                ),
            },
        )
        now = self.clock()
        if scope == "cohort":
            self.store.update_cohort(
                rollout.rollout_id, rollout.cohort, state="failed", finished_at=now
            )
        final = RolloutState.ROLLED_BACK if scope == "all" else RolloutState.ABORTED
        self._set(rollout, state=final, phase=Phase.DONE, finished_at=now)
        del policy  # the scope, not the policy, decides what is rolled back

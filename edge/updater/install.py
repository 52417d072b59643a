"""A/B install, revert and operator rollback, mixed into :class:`~edge.updater.Updater`.

Rules (``docs/protocol.md`` §5, §6, §9):

* I1 — a new artifact is only ever written into the *inactive* slot;
* S2 — ``state.json`` is the commit point, replaced atomically after probation passed;
* the anti-rollback floor rises at a commit and **never** falls, not even when an
  operator's signed ``rollback`` command re-activates the previous slot (R1-R3 below):
  the floor keeps refusing *attacker* manifests for old versions, while an operator
  rollback only switches between slots that were each committed by a signed manifest;
* a commit never touches the trust store: a revocation list riding on a manifest was
  adopted and persisted when that manifest verified (rule T6), and a commit of an older
  download must not bring back a list the device has since replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.updater.slots import SlotStore
from edge.updater.state import Slot, SlotRecord, StateStore, UpdaterState
from shared.artifacts import ArtifactAssembler, AssemblyState, Manifest, Purpose, TrustStore
from shared.artifacts.trust import Envelope
from shared.crypto import ContentKey
from shared.errors import FedgeError, HashMismatchError
from shared.protocol.messages import UpdateOutcome

__all__ = ["Activate", "Download", "InstallSteps", "NoRollbackTargetError", "reason_code"]

logger = logging.getLogger(__name__)

Activate = Callable[[Path, str], None]
"""Probation: load the model file as ``version``, smoke-test it and make it serve.

Raise (ideally :class:`ModelLoadError`) to reject it; the previous model must keep
serving (``Predictor.load`` guarantees that). Also used to re-activate the committed slot.
"""


class NoRollbackTargetError(FedgeError):
    """A ``rollback`` command with no (matching) committed model in the other slot."""

    code = "no_rollback_target"


@dataclass
class Download:
    """The download in progress: its verified manifest, key and assembled chunks.

    ``deadline`` (rule D2) is ``min(manifest.expires, started + download_timeout_s)`` in
    local Unix seconds; the download is dropped once ``now >= deadline``.
    """

    manifest: Manifest
    envelope: Envelope
    assembler: ArtifactAssembler
    key: ContentKey
    state: AssemblyState
    deadline: float  # D2: dropped at this local time
    last_progress: float  # last chunk of this artifact seen (new or duplicate) or request
    asks: int = 0  # resend requests since the last new chunk (backoff exponent, §7)
    retry_after: float = 0.0  # quiet time before the next request (set by the updater)


def reason_code(exc: BaseException) -> str:
    """The stable reason code reported for ``exc`` (``docs/protocol.md`` §9)."""
    if isinstance(exc, FedgeError):
        return exc.code
    if isinstance(exc, OSError):
        return "storage_error"
    return "probation_failed"


class InstallSteps:
    """Install, revert and rollback steps; the host class provides the attributes below."""

    _state: UpdaterState
    _trust: TrustStore
    _store: StateStore
    _slots: SlotStore
    _activate: Activate

    def active_model(self) -> tuple[Path, str] | None:  # pragma: no cover - host provides
        """``(path, version)`` of the committed model to serve, if any."""
        raise NotImplementedError

    def _abandon(self, dl: Download) -> None:  # pragma: no cover - TransferSteps provides
        raise NotImplementedError

    def _trial(self, dl: Download, artifact: bytes) -> None:  # pragma: no cover - mixin
        raise NotImplementedError

    def _hold(self, dl: Download, target: Slot, artifact: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def _drop_candidate(self, artifact_id: str | None) -> None:  # pragma: no cover - mixin
        raise NotImplementedError

    def _announce_candidate(  # pragma: no cover - mixin provides
        self, path: Path | None, m: Manifest | None
    ) -> None:
        raise NotImplementedError

    def _report(  # pragma: no cover - host provides
        self,
        version: int,
        outcome: UpdateOutcome,
        reason: str | None = None,
        *,
        artifact_id: str | None = None,
    ) -> None:
        raise NotImplementedError

    def _install(self, dl: Download) -> None:
        m = dl.manifest
        state = self._state
        try:
            base = None
            if m.encoding.is_delta and state.active is not None:
                base = self._slots.read(state.active)
            artifact = dl.assembler.assemble(dl.state, dl.key, base=base)  # A4-A8
        except (FedgeError, OSError) as exc:
            self._abandon(dl)
            logger.warning("artifact v%d refused: %s", m.version, reason_code(exc))
            self._report(
                m.version, UpdateOutcome.FAILED, reason_code(exc), artifact_id=m.artifact_id
            )
            return
        if m.purpose is Purpose.TRIAL:  # U1: never a slot
            self._trial(dl, artifact)
            return
        target = state.active.other if state.active is not None else Slot.A  # I1
        if m.purpose is Purpose.SHADOW:  # U2: held, never activated
            self._hold(dl, target, artifact)
            return
        self._commit_install(m, target, artifact, dl=dl)

    def _commit_install(
        self, m: Manifest, target: Slot, artifact: bytes, *, dl: Download | None
    ) -> None:
        """Write ``target`` (unless it already holds ``artifact``), probation, commit (S2).

        ``dl`` is None for an install from the held shadow candidate (U3).
        """
        state = self._state
        # The inactive slot's old record is void from here on: its file is being replaced,
        # and with it a shadow candidate held there (U2).
        slots = {k: v for k, v in state.slots.items() if k is not target}
        dropped = state.candidate is not None and state.candidate.slot is target
        void = state.model_copy(
            update={"slots": slots, "candidate": None if dropped else state.candidate}
        )
        try:
            path = self._slots.path(target)
            if dl is not None:
                path = self._slots.write(target, artifact)
            self._activate(path, str(m.version))  # probation: load + smoke inference
        except Exception as exc:  # any probation failure rejects the model
            self._revert(m, dl, target, void, exc, dropped=dropped)
            return
        record = SlotRecord(
            version=m.version,
            sha256=m.sha256,
            length=m.length,
            model_id=m.model_id,
            artifact_id=m.artifact_id,
            precision=m.precision,
        )
        committed = void.model_copy(  # revocations stay as adopted (T6), never older
            update={
                "active": target,
                "slots": {**slots, target: record},
                "floor": max(state.floor, m.version),
            }
        )
        try:
            self._store.save(committed)  # S2: the commit point
        except OSError as exc:
            self._revert(m, dl, target, void, exc, dropped=dropped)
            return
        self._state = committed
        if dl is not None:
            self._abandon(dl)
        logger.info("committed v%d in slot %s", m.version, target)
        if dropped:  # the candidate is gone (replaced, or now serving)
            self._announce_candidate(None, None)
        self._report(m.version, UpdateOutcome.COMMITTED, artifact_id=m.artifact_id)

    def _revert(
        self,
        m: Manifest,
        dl: Download | None,
        target: Slot,
        state: UpdaterState,
        exc: Exception,
        *,
        dropped: bool = False,
    ) -> None:
        """Probation or commit failed: erase the candidate and serve the committed slot."""
        code = reason_code(exc)
        logger.warning("v%d failed probation/commit (%s); reverting", m.version, code)
        try:
            self._slots.erase(target)
            if state != self._state:
                self._store.save(state)
                self._state = state
        except OSError as err:
            logger.error("cleanup after a failed install: %s", err.strerror)
        self._reactivate_committed()
        if dl is not None:
            self._abandon(dl)
        if dropped:
            self._announce_candidate(None, None)
        self._report(m.version, UpdateOutcome.FAILED, code, artifact_id=m.artifact_id)

    def _reactivate_committed(self) -> None:
        active = self.active_model()
        if active is not None:
            try:
                self._activate(*active)
            except Exception:  # the committed model was serving before; keep trying later
                logger.exception("could not re-activate the committed model")

    def _rollback(self, to_version: int | None) -> None:
        """Operator rollback: make the other committed slot active again (R1-R3).

        R1: the other slot must hold a committed record (and ``to_version`` if given);
        R2: its file must still be exactly that artifact; R3: it passes probation again
        before ``state.json`` switches ``active`` (S2). The floor is left as it is.

        Raises:
            NoRollbackTargetError: R1. HashMismatchError: R2. ModelLoadError or any
            probation error: R3 (the current model is re-activated). OSError: the commit.
        """
        state = self._state
        current = state.active
        record = state.slots.get(current.other) if current is not None else None
        if current is None or record is None:  # R1
            raise NoRollbackTargetError("no committed model in the other slot")
        if to_version is not None and record.version != to_version:  # R1
            raise NoRollbackTargetError(f"the other slot holds v{record.version}")
        target = current.other
        path = self._slots.path(target)
        if not record.matches(self._slots.read(target)):  # R2
            raise HashMismatchError("the rollback slot does not hold its committed artifact")
        try:
            self._activate(path, str(record.version))  # R3: probation again
            rolled_back = state.model_copy(update={"active": target})
            self._store.save(rolled_back)  # S2; floor unchanged
        except Exception:
            self._reactivate_committed()
            raise
        self._state = rolled_back
        logger.info(
            "rolled back to v%d in slot %s (floor stays %d)", record.version, target, state.floor
        )
        self._report(record.version, UpdateOutcome.ROLLED_BACK)

"""Manifest purposes other than ``install``: ``trial`` and ``shadow`` (``docs/protocol.md`` §15).

Both are verified, downloaded and assembled exactly like an install (every check of
:mod:`edge.updater.engine`, in the same order, including P1/P2 and A4-A8); they differ only
in what happens to the verified artifact:

* **trial** (rule U1) — the file is written under ``trial/`` (never a slot), handed to the
  ``on_trial`` callback, which times it on this CPU, and deleted whatever happens. The
  timing is kept in ``variants.json`` (never ``state.json``): a trial changes neither a slot
  nor the floor nor the committed state. A trial already timed is not downloaded again
  (the retained manifest is redelivered at every reconnect). A device without ``on_trial``
  refuses trials (``trial_not_supported``).
* **shadow** (rule U2) — the file is written into the *inactive* slot (rule I1) and held
  as :class:`~edge.updater.state.Candidate` in ``state.json``: never activated, never
  committed, the floor does not move. The inactive slot's committed record (the rollback
  target) is void from then on, so a ``rollback`` command is refused
  (``no_rollback_target``) while a candidate is held. ``on_shadow(path, manifest)`` is
  called when it is held and again after a restart (the slot file is checked against the
  candidate first, rule I2); ``on_shadow(None, None)`` when it is dropped.
* **drop of the held candidate** (rule U2) — a signed ``drop_candidate`` command naming the
  held candidate's artifact id drops it: ``state.json`` is committed without it first
  (S2), then the evaluator is told it is gone and the slot file erased. A crash between the
  commit and the erase leaves an uncommitted slot file, which the next start erases (I2);
  a crash before the commit leaves the candidate held intact. The serving model, the
  committed slot and the floor are never touched.
* **install of the held candidate** (rule U3) — an ``install`` manifest for the candidate's
  artifact id (or a new release of the very same file: model id, version, sha256, length)
  is installed from the slot after its sha256 and length are checked again against the new
  manifest; nothing is downloaded. A file that no longer matches is
  dropped and the artifact is downloaded as usual.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.updater.fsutil import remove_tree, write_atomic
from edge.updater.install import Download, InstallSteps, reason_code
from edge.updater.state import Candidate, Slot, SlotRecord, UpdaterState
from shared.artifacts import Manifest, Purpose, manifest_from_bytes, manifest_to_bytes
from shared.errors import FedgeError
from shared.protocol.messages import UpdateOutcome, VariantTiming

__all__ = [
    "MAX_TIMINGS",
    "CandidateMismatchError",
    "NoCandidateError",
    "OnShadow",
    "OnTrial",
    "PurposeSteps",
    "TimingStore",
    "TrialNotSupportedError",
]

logger = logging.getLogger(__name__)

#: Timings kept (``VariantReport.timings`` carries at most 16); the oldest go first.
MAX_TIMINGS = 16

OnTrial = Callable[[Path, Manifest], VariantTiming]
"""Time a verified model file on this device's CPU (its profile's threads, a bounded budget).

Called on the updater's thread; the file is deleted when it returns or raises. A raise
refuses the trial (reported ``failed`` with the error's code, ``trial_failed`` otherwise).
"""

OnShadow = Callable[[Path | None, Manifest | None], None]
"""Start shadow-evaluating the candidate at ``path`` (``(None, None)``: stop, it is gone)."""


class TrialNotSupportedError(FedgeError):
    """A ``trial`` manifest on a device that cannot time models (no ``on_trial``)."""

    code = "trial_not_supported"


class NoCandidateError(FedgeError):
    """``drop_candidate`` while no shadow candidate is held (e.g. it was dropped already)."""

    code = "no_candidate"


class CandidateMismatchError(FedgeError):
    """``drop_candidate`` naming another artifact than the candidate held."""

    code = "candidate_mismatch"


class _TimingFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    timings: tuple[VariantTiming, ...] = Field(default=(), max_length=MAX_TIMINGS)


class TimingStore:
    """``variants.json``: the newest timing per artifact this device measured, newest last.

    Advisory data, not part of the commit point: an unreadable file is logged and read as
    empty (the coordinator then falls back to its static preference), never a refusal.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> tuple[VariantTiming, ...]:
        """The stored timings (empty if none or unreadable)."""
        try:
            return _TimingFile.model_validate_json(self.path.read_bytes()).timings
        except FileNotFoundError:
            return ()
        except (OSError, ValidationError) as exc:
            logger.warning("ignoring unreadable %s: %s", self.path.name, type(exc).__name__)
            return ()

    def add(
        self, held: tuple[VariantTiming, ...], timing: VariantTiming
    ) -> tuple[VariantTiming, ...]:
        """Store ``timing`` (replacing the same artifact's), keep the newest; return all."""
        kept = tuple(t for t in held if t.artifact_id != timing.artifact_id)
        timings = (*kept, timing)[-MAX_TIMINGS:]
        write_atomic(self.path, _TimingFile(timings=timings).model_dump_json().encode())
        return timings


class PurposeSteps(InstallSteps):
    """Trial, shadow and held-candidate install steps; the host provides the attributes."""

    _on_trial: OnTrial | None
    _on_shadow: OnShadow | None
    _timing_store: TimingStore
    _timings: tuple[VariantTiming, ...]
    _trial_dir: Path

    # --- queries ----------------------------------------------------------------------

    @property
    def timings(self) -> tuple[VariantTiming, ...]:
        """Timings of the variants this device tried, newest last (for the status)."""
        return self._timings

    def candidate(self) -> tuple[Path, Manifest] | None:
        """The shadow candidate held in the inactive slot: ``(path, manifest)``, or None."""
        held = self._state.candidate
        if held is None:
            return None
        return self._slots.path(held.slot), manifest_from_bytes(held.manifest.encode())

    def _timed(self, m: Manifest) -> bool:
        return any(t.artifact_id == m.artifact_id for t in self._timings)

    def _is_candidate(self, m: Manifest) -> bool:
        """Whether ``m`` describes the held candidate: its artifact id, or the same file.

        A new release of the same file (model id, version, sha256, length) counts too: the
        coordinator promotes a candidate with a fresh ``install`` release, and the file's
        signed sha256 is what an install checks in the end (A8), so the held copy is as
        good as a downloaded one once it is hashed again (U3).
        """
        held = self._state.candidate
        if held is None:
            return False
        r = held.record
        same_file = (r.model_id, r.version, r.sha256, r.length) == (
            m.model_id,
            m.version,
            m.sha256,
            m.length,
        )
        return r.artifact_id == m.artifact_id or same_file

    def _already_handled(self, m: Manifest, current: Download | None) -> bool:
        """A fully verified manifest needing no download: timed, held or installable.

        A trial already timed and the candidate already held are reported again (the
        retained manifest is redelivered at every reconnect); an install of the held
        candidate is installed from its slot (U3).
        """
        outcome: UpdateOutcome | None = None
        if m.purpose is Purpose.TRIAL and self._timed(m):
            outcome = UpdateOutcome.TRIALED
        elif m.purpose is Purpose.SHADOW and self._is_candidate(m):
            outcome = UpdateOutcome.HELD
        elif m.purpose is Purpose.INSTALL and self._is_candidate(m):
            if current is not None:
                self._abandon(current)
            return self._install_held(m)
        if outcome is None:
            return False
        self._report(m.version, outcome, artifact_id=m.artifact_id)
        return True

    # --- trial (U1) -------------------------------------------------------------------

    def _check_trial_supported(self) -> None:
        if self._on_trial is None:
            raise TrialNotSupportedError("this device does not time variants")

    def _trial(self, dl: Download, artifact: bytes) -> None:
        """U1: time the verified artifact outside the slots, record it, delete the file."""
        m = dl.manifest
        self._abandon(dl)
        on_trial = self._on_trial
        path = self._trial_dir / f"{m.artifact_id}.tflite"
        try:
            if on_trial is None:  # checked before the download; kept for a changed host
                raise TrialNotSupportedError("this device does not time variants")
            write_atomic(path, artifact)
            measured = on_trial(path, m)
            # The device knows what it timed: the identity fields come from the manifest.
            timing = VariantTiming.model_validate(
                {
                    **measured.model_dump(),
                    "model_id": m.model_id,
                    "version": m.version,
                    "artifact_id": m.artifact_id,
                    "precision": m.precision,
                }
            )
            self._timings = self._timing_store.add(self._timings, timing)
        except Exception as exc:  # a model that cannot run here is data, not a crash
            code = exc.code if isinstance(exc, FedgeError) else "trial_failed"
            if isinstance(exc, OSError):
                code = reason_code(exc)
            logger.warning("trial of v%d (%s) failed: %s", m.version, m.precision, code)
            self._report(m.version, UpdateOutcome.FAILED, code, artifact_id=m.artifact_id)
            return
        finally:
            remove_tree(self._trial_dir)
        logger.info(
            "trial of v%d (%s): median %.1f us over %d runs",
            m.version,
            m.precision,
            timing.median_us,
            timing.runs,
        )
        self._report(m.version, UpdateOutcome.TRIALED, artifact_id=m.artifact_id)

    # --- shadow (U2) ------------------------------------------------------------------

    def _hold(self, dl: Download, target: Slot, artifact: bytes) -> None:
        """U2: write the inactive slot, record the candidate (S2), call ``on_shadow``."""
        m = dl.manifest
        state = self._state
        slots = {k: v for k, v in state.slots.items() if k is not target}  # I1: void now
        record = SlotRecord(
            version=m.version,
            sha256=m.sha256,
            length=m.length,
            model_id=m.model_id,
            artifact_id=m.artifact_id,
            precision=m.precision,
        )
        held = Candidate(slot=target, record=record, manifest=manifest_to_bytes(m).decode())
        try:
            path = self._slots.write(target, artifact)
            self._store.save(state.model_copy(update={"slots": slots, "candidate": held}))
        except OSError as exc:
            self._abandon(dl)
            self._drop_slot(target, state.model_copy(update={"slots": slots, "candidate": None}))
            self._report(
                m.version, UpdateOutcome.FAILED, reason_code(exc), artifact_id=m.artifact_id
            )
            return
        self._state = state.model_copy(update={"slots": slots, "candidate": held})
        self._abandon(dl)
        logger.info("holding v%d as shadow candidate in slot %s", m.version, target)
        self._announce_candidate(path, m)
        self._report(m.version, UpdateOutcome.HELD, artifact_id=m.artifact_id)

    def _drop_slot(self, target: Slot, state: UpdaterState) -> None:
        try:
            self._slots.erase(target)
            if state != self._state:
                self._store.save(state)
                self._state = state
        except OSError as err:
            logger.error("cleanup after a failed hold: %s", err.strerror)

    def _announce_candidate(self, path: Path | None, m: Manifest | None) -> None:
        if self._on_shadow is None:
            return
        try:
            self._on_shadow(path, m)
        except Exception:  # the shadow evaluator must never break an update
            logger.exception("shadow callback failed")

    def _rearm_candidate(self) -> None:
        """After a restart: hand a candidate that survived recovery (I2) to ``on_shadow``."""
        held = self.candidate()
        if held is not None:
            self._announce_candidate(*held)

    def _drop_candidate(self, artifact_id: str | None) -> None:
        """U2: a signed ``drop_candidate``: forget the held candidate ``artifact_id``.

        Order, for crash safety: commit ``state.json`` without the candidate (S2) — the
        commit point; then tell the evaluator it is gone; then erase the slot file. A crash
        before the commit leaves the candidate held intact (and re-announced at the next
        start); after it, the slot file is uncommitted and :meth:`recover` erases it (I2).
        ``state.json`` never names a file that was already erased.

        Raises:
            NoCandidateError: nothing is held. CandidateMismatchError: another artifact is
            held. OSError: the commit failed (nothing changed).
        """
        held = self._state.candidate
        if held is None:
            raise NoCandidateError("no shadow candidate is held")
        if held.record.artifact_id != artifact_id:
            raise CandidateMismatchError("the held candidate is another artifact")
        dropped = self._state.model_copy(update={"candidate": None})
        self._store.save(dropped)  # S2: the commit point; slots, active and floor unchanged
        self._state = dropped
        self._announce_candidate(None, None)  # stop the evaluator before its file goes
        try:
            self._slots.erase(held.slot)
        except OSError as exc:  # committed already: the next start erases the file (I2)
            logger.error("cannot erase the dropped candidate's slot: %s", exc.strerror)
        logger.info("dropped shadow candidate v%d (slot %s)", held.record.version, held.slot)
        self._report(held.record.version, UpdateOutcome.DROPPED, artifact_id=artifact_id)

    # --- install of the held candidate (U3) ---------------------------------------------

    def _install_held(self, m: Manifest) -> bool:
        """U3: install ``m`` from the candidate's slot; False if it must be downloaded."""
        held = self._state.candidate
        if held is None:
            return False
        try:
            data = self._slots.read(held.slot)
        except OSError:
            data = b""
        if len(data) != m.length or hashlib.sha256(data).hexdigest() != m.sha256:
            logger.warning("held candidate does not match v%d; downloading it", m.version)
            self._drop_slot(held.slot, self._state.model_copy(update={"candidate": None}))
            self._announce_candidate(None, None)
            return False
        self._report(m.version, UpdateOutcome.DOWNLOADING, artifact_id=m.artifact_id)
        self._commit_install(m, held.slot, data, dl=None)
        return True

"""The device-side update engine: verify, download, A/B install, probation, commit.

Transport-agnostic: the caller feeds raw payloads (:meth:`Updater.handle_manifest`,
:meth:`Updater.handle_chunk`), calls :meth:`Updater.tick` now and then, and supplies an
:class:`UpdaterLink` (publish/subscribe), a probation callback and a clock. One thread
owns an updater; it holds no lock.

Order of the defences (each cites its rule in ``docs/protocol.md``):

0. housekeeping on every input and tick: a download past its deadline is dropped (D2);
1. manifest: a newer root-signed revocation list it carries is adopted and persisted at
   once (T6), whatever happens to the manifest next; T1-T5, V1-V7 via
   :func:`verify_manifest`; a manifest whose download already expired is refused (D2);
   device policy P1 (length within the profile's ``max_model_bytes``) and P2 (precision
   accepted); content key unwrap — all **before** anything is written anywhere but the
   download directory (and, for T6, the revocation list in ``state.json``);
2. chunks: C1-C3 (decode), A1-A3 (assembler) before a chunk is persisted;
3. artifact: A4-A8 (assembler) before anything is written to a slot (rule I1: only the
   inactive slot is ever written);
4. probation: the caller's callback loads the slot and runs a smoke inference;
5. commit: ``state.json`` replaced atomically (rule S2); the floor rises only here.

The manifest's signed ``purpose`` (§15) changes only what happens after step 3: a
``trial`` is timed and deleted, a ``shadow`` is held in the inactive slot, neither moves
the floor (:mod:`edge.updater.purposes`, rules U1-U3).

The steps are mixins of :class:`Updater`, one module each: manifest verification,
revocation (T6) and device policy (step 1) in :mod:`edge.updater.manifests`; chunk intake,
resend requests and the deadline (steps 0 and 2) in :mod:`edge.updater.transfer`; install,
probation, commit, revert and rollback (steps 3-5) in :mod:`edge.updater.install`; trial
and shadow in :mod:`edge.updater.purposes`; signed commands (K1-K6) in
:mod:`edge.updater.commands`. This module holds what they share: the constructor, start-up
recovery, the read-only queries and the status report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.updater.commands import CommandSteps
from edge.updater.downloads import DownloadStore
from edge.updater.fsutil import remove_temporaries, remove_tree, temporary_of
from edge.updater.install import Activate, Download
from edge.updater.install import reason_code as _code
from edge.updater.manifests import ManifestSteps
from edge.updater.purposes import OnShadow, OnTrial, TimingStore
from edge.updater.slots import SlotStore
from edge.updater.state import Slot, SlotRecord, StateStore, UpdaterState
from edge.updater.transfer import UpdaterLink
from shared.artifacts import Manifest, TrustStore, manifest_from_bytes
from shared.artifacts.trust import Envelope
from shared.crypto import PrivateKey
from shared.errors import ConfigError, ExpiredManifestError, FedgeError
from shared.protocol.messages import UpdateInfo, UpdateOutcome

__all__ = ["Activate", "UpdateReport", "Updater", "UpdaterLink"]

logger = logging.getLogger(__name__)

DEFAULT_DOWNLOAD_TIMEOUT_S = 3600.0  # D2: one broker session expiry (§10)


@dataclass(frozen=True)
class UpdateReport:
    """One outcome, for the status topic.

    Attributes:
        version: The manifest version concerned (0 if it was refused before the version
            could be trusted, e.g. a bad signature).
        outcome: What happened.
        reason: The error's stable code when something was refused.
        active_version: Version serving after this outcome.
        slot: Active slot after this outcome.
        artifact_id: The verified manifest's artifact id the outcome is about (None when
            the manifest was refused before it verified, and for commands).
    """

    version: int
    outcome: UpdateOutcome
    reason: str | None = None
    active_version: int | None = None
    slot: Slot | None = None
    artifact_id: str | None = None

    def to_info(self) -> UpdateInfo:
        """The wire form carried in a ``StatusMessage``."""
        return UpdateInfo(
            version=self.version,
            outcome=self.outcome,
            reason=self.reason,
            artifact_id=self.artifact_id,
        )


# MRO: Updater, CommandSteps, ManifestSteps, TransferSteps, PurposeSteps, InstallSteps.
# Only InstallSteps, the common base and so last, declares stubs for steps another mixin
# (or this class) provides, so no stub can shadow a real step whatever the base order.
class Updater(CommandSteps, ManifestSteps):
    """A/B model updater of one device.

    Args:
        device_id, hardware_id: This device (V5, V7).
        groups: Groups this device belongs to (K5: group commands it accepts).
        box_key: The device's X25519 key (content keys are sealed to it).
        trust: The pinned trust store from the enrollment bundle.
        max_model_bytes: Profile limit (P1).
        precisions: Precisions the profile accepts (P2).
        state_dir: Where ``state.json``, ``slots/`` and ``downloads/`` live.
        link: Publish/subscribe.
        activate: Probation callback (see :data:`Activate`).
        on_status: Receives every :class:`UpdateReport`.
        now: Wall clock, Unix seconds (expiry checks, download deadlines and the resend
            quiet period).
        quiet_s: Seconds without a new chunk before asking for the missing ones.
        download_timeout_s: Local limit on one download, from its start (persisted, so a
            restart does not reset it); the manifest's ``expires`` applies too (rule D2).
        on_trial: Times a verified ``trial`` artifact on this CPU (see
            :data:`~edge.updater.purposes.OnTrial`); None refuses trials with
            ``trial_not_supported``.
        on_shadow: Receives a held shadow candidate (``(path, manifest)``, also after a
            restart, from :meth:`recover`) and ``(None, None)`` when it is dropped.

    Raises:
        ConfigError: ``download_timeout_s`` is not a positive number; or (from
            :meth:`recover`) ``state.json`` is unreadable.
    """

    def __init__(
        self,
        *,
        device_id: str,
        hardware_id: str,
        box_key: PrivateKey,
        trust: TrustStore,
        max_model_bytes: int,
        precisions: tuple[str, ...],
        state_dir: Path,
        link: UpdaterLink,
        activate: Activate,
        on_status: Callable[[UpdateReport], None] = lambda _r: None,
        now: Callable[[], float] = time.time,
        quiet_s: float = 2.0,
        groups: frozenset[str] = frozenset(),
        download_timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S,
        on_trial: OnTrial | None = None,
        on_shadow: OnShadow | None = None,
    ) -> None:
        if not download_timeout_s > 0:  # also refuses NaN
            raise ConfigError("download_timeout_s must be positive")
        self.device_id = device_id
        self.groups = frozenset(groups)
        self.hardware_id = hardware_id
        self._box = box_key
        self._pinned = trust
        self._max_bytes = max_model_bytes
        self._precisions = frozenset(str(p) for p in precisions)
        self._link = link
        self._activate = activate
        self._on_status = on_status
        self._now = now
        self._quiet_s = quiet_s
        self._timeout_s = float(download_timeout_s)
        self._store = StateStore(state_dir)
        self._slots = SlotStore(state_dir / "slots")
        self._downloads = DownloadStore(state_dir / "downloads")
        self._state = UpdaterState()
        self._trust = trust
        self._download: Download | None = None
        self._judged: Manifest | None = None  # the manifest being judged, once verified
        self._on_trial = on_trial
        self._on_shadow = on_shadow
        self._trial_dir = state_dir / "trial"
        self._timing_store = TimingStore(state_dir / "variants.json")
        self._timings = self._timing_store.load()
        self.recover()

    # --- start-up -------------------------------------------------------------------

    def recover(self) -> None:
        """Return to the last committed state after any crash (rules I2, D1, D2, T6).

        Drops half-written temporaries and uncommitted slot files, then resumes a
        partial download whose manifest still verifies under the newest revocation list
        held (T6) and whose deadline has not passed (D2: otherwise it is dropped and
        reported as ``download_expired``, once). A trial file left by a crash is deleted
        (U1); a shadow candidate that survived the slot check (I2) is handed to
        ``on_shadow`` again (U2).
        """
        loaded = self._store.load()
        state = self._slots.recover(loaded)
        if state != loaded:
            self._store.save(state)
        self._state = state
        self._trust = self._pinned.absorb_revocations(state.revocations)  # T5: monotonic
        self._download = None
        remove_tree(self._trial_dir)  # U1: a trial never outlives its timing
        remove_temporaries(self._downloads.root)
        for own in (self._store.path, self._timing_store.path):  # a save cut short (F1)
            temporary_of(own).unlink(missing_ok=True)
        for artifact_id, envelope in self._downloads.pending():
            try:
                self._start_download(envelope, resumed=True)
            except ExpiredManifestError:
                self._downloads.discard(artifact_id)
                self._expired_while_stored(artifact_id, envelope)  # D2
            except (FedgeError, OSError) as exc:
                logger.info("dropping stored download %s: %s", artifact_id, _code(exc))
                self._downloads.discard(artifact_id)
        if self._download is not None:
            self._download.last_progress = float("-inf")  # ask for the rest on next tick
        self._rearm_candidate()

    def _expired_while_stored(self, artifact_id: str, envelope: Envelope) -> None:
        """D2 at start-up: the stored manifest expired (V4) while the device was down.

        :func:`verify_manifest` checks V4 only after V1-V3, so the payload parsed here is
        authenticated; the version is only used for the report.
        """
        try:
            m = manifest_from_bytes(envelope.payload_bytes())
        except FedgeError:
            return
        if m.artifact_id == artifact_id:
            self._forget_download(m)

    # --- queries --------------------------------------------------------------------

    @property
    def state(self) -> UpdaterState:
        """The committed state."""
        return self._state

    def active_model(self) -> tuple[Path, str] | None:
        """``(path, version)`` of the committed model to serve, if any."""
        record = self._state.active_record
        if self._state.active is None or record is None:
            return None
        return self._slots.path(self._state.active), str(record.version)

    def serving(self) -> tuple[SlotRecord | None, Slot | None]:
        """What the device serves: the active slot's committed record and the slot.

        The record names ``model_id``, ``version``, ``artifact_id``, ``sha256``,
        ``length`` and ``precision`` (``artifact_id`` and ``precision`` are None for a
        slot committed by an updater that did not record them). ``(None, None)`` before
        the first commit; never a record without its slot or the reverse.
        """
        record = self._state.active_record
        if record is None:
            return None, None
        return record, self._state.active

    @property
    def downloading(self) -> str | None:
        """Artifact id of the download in progress."""
        return self._download.manifest.artifact_id if self._download else None

    def missing(self) -> tuple[int, ...]:
        """Chunk indices the current download still lacks."""
        dl = self._download
        return dl.assembler.missing(dl.state) if dl else ()

    # --- status ---------------------------------------------------------------------

    def _report(
        self,
        version: int,
        outcome: UpdateOutcome,
        reason: str | None = None,
        *,
        artifact_id: str | None = None,
    ) -> None:
        """Hand one outcome to ``on_status``; a failing callback is logged, never raised."""
        record = self._state.active_record
        report = UpdateReport(
            version=version,
            outcome=outcome,
            reason=reason,
            active_version=record.version if record else None,
            slot=self._state.active,
            artifact_id=artifact_id,
        )
        try:
            self._on_status(report)
        except Exception:  # a reporting bug must not break an install
            logger.exception("status callback failed")

"""From a manifest to a download, mixed into :class:`~edge.updater.Updater`.

A payload from ``devices/{id}/manifest`` is judged in this order (``docs/protocol.md``):

1. a newer root-signed revocation list riding on the envelope is adopted and persisted
   at once (T6), whatever becomes of the manifest; a download in progress signed by a key
   it revokes is dropped;
2. T1-T5, V1-V7 via :func:`~shared.artifacts.verify_manifest` (a replay of the installed
   manifest is reported ``up_to_date``, not refused);
3. an artifact whose download already expired is refused (D2), an older version than the
   download in progress too (anti-rollback);
4. device policy P1 (length within ``max_model_bytes``) and P2 (precision accepted); a
   ``trial`` needs ``on_trial`` (U1); the content key is unwrapped (V7);
5. a trial already timed, a candidate already held or an install of the held candidate
   needs no download (U1-U3, :mod:`edge.updater.purposes`);
6. only then is the download begun (or resumed from disk after a restart) with its
   deadline (D2), and its chunk topic subscribed (:mod:`edge.updater.transfer`).

Nothing is written anywhere but the download directory (and, for T6, the revocation list
in ``state.json``) before all of this passed.
"""

from __future__ import annotations

import logging

from edge.updater.install import Download, reason_code
from edge.updater.purposes import PurposeSteps
from edge.updater.transfer import TransferSteps
from shared.artifacts import (
    ArtifactAssembler,
    Manifest,
    Purpose,
    unwrap_content_key,
    verify_manifest,
)
from shared.artifacts.trust import Envelope
from shared.crypto import PrivateKey
from shared.errors import (
    DownloadExpiredError,
    FedgeError,
    ModelLoadError,
    ReplayAttackError,
    RevokedKeyError,
    RollbackAttackError,
)
from shared.protocol.codec import decode_message_as
from shared.protocol.messages import ManifestMessage, UpdateOutcome
from shared.protocol.topics import artifact_chunks

__all__ = ["ManifestSteps"]

logger = logging.getLogger("edge.updater.engine")  # as before the split (log filters)


class ManifestSteps(TransferSteps, PurposeSteps):
    """Manifest verification, revocation (T6) and device policy; the host provides state.

    Inherits the download steps it starts (:class:`~edge.updater.transfer.TransferSteps`)
    and the purpose steps it defers to (:class:`~edge.updater.purposes.PurposeSteps`).
    """

    hardware_id: str
    _box: PrivateKey
    _max_bytes: int
    _precisions: frozenset[str]
    _timeout_s: float
    _judged: Manifest | None  # the manifest being judged, once verified

    # --- manifest -------------------------------------------------------------------

    def handle_manifest(self, payload: bytes) -> None:
        """A payload from ``devices/{id}/manifest``: verify it and start downloading."""
        self._expire_overdue()  # D2: a stalled download no longer blocks this manifest
        self._judged = None
        try:
            message = decode_message_as(payload, ManifestMessage)
            self._start_download(message.envelope, resumed=False)
        except (FedgeError, OSError) as exc:
            logger.warning("manifest refused: %s", reason_code(exc))
            # A manifest refused after it verified (P1, P2, V7, ...) is named exactly, so
            # the coordinator can tell which release failed (docs/protocol.md §9).
            judged = self._judged
            version, aid = (judged.version, judged.artifact_id) if judged else (0, None)
            self._report(version, UpdateOutcome.FAILED, reason_code(exc), artifact_id=aid)

    def _is_installed(self, envelope: Envelope) -> bool:
        """Whether a (fully verified) manifest describes exactly the active artifact."""
        record = self._state.active_record
        if record is None:
            return False
        # Floor 0 only identifies the manifest; it is never installed from here.
        m = verify_manifest(
            envelope,
            self._trust,
            device_id=self.device_id,
            hardware_id=self.hardware_id,
            floor_version=0,
            now=int(self._now()),
        ).manifest
        return (m.version, m.sha256, m.model_id) == (record.version, record.sha256, record.model_id)

    def _start_download(self, envelope: Envelope, *, resumed: bool) -> None:
        """Judge ``envelope`` (steps 1-5 above) and begin or resume its download (step 6).

        Raises:
            FedgeError: The manifest is refused (its code is the reported reason).
            OSError: The download directory or ``state.json`` could not be written.
        """
        # T6: a list riding on the envelope is authenticated by the pinned root alone, so
        # it is absorbed first (§3) and applies at once, whatever becomes of the manifest.
        self._adopt_revocations(envelope.revocations)
        try:
            verified = verify_manifest(  # T1-T5, V1-V7
                envelope,
                self._trust,
                device_id=self.device_id,
                hardware_id=self.hardware_id,
                floor_version=self._state.floor,
                now=int(self._now()),
            )
        except ReplayAttackError:
            if not resumed and self._is_installed(envelope):
                record = self._state.active_record
                self._report(
                    record.version if record else 0,
                    UpdateOutcome.UP_TO_DATE,
                    artifact_id=record.artifact_id if record else None,
                )
                return
            raise
        m = verified.manifest
        self._judged = m
        if m.artifact_id in self._state.expired_downloads:  # D2: never restarted
            raise DownloadExpiredError("this artifact's download already expired")
        current = self._download
        if current is not None:
            if current.manifest.artifact_id == m.artifact_id:
                return  # the retained manifest again: keep going
            if m.version < current.manifest.version:
                raise RollbackAttackError("older than the download in progress")
        if m.length > self._max_bytes:  # P1: never download what cannot be installed
            raise ModelLoadError(
                f"artifact of {m.length} bytes exceeds max_model_bytes", code="model_too_large"
            )
        if str(m.precision) not in self._precisions:  # P2
            raise ModelLoadError(
                f"precision {m.precision} not accepted", code="precision_not_accepted"
            )
        if m.purpose is Purpose.TRIAL:
            self._check_trial_supported()  # U1
        key = unwrap_content_key(m, self.device_id, self._box)  # V7 (wrong_recipient)
        if self._already_handled(m, current):  # U1-U3: nothing to download
            return
        if current is not None:
            self._abandon(current)
        self._downloads.discard_all(keep=m.artifact_id)
        assembler = ArtifactAssembler(m)
        now = self._now()
        if resumed:
            state = self._downloads.restore(assembler)
            stored = self._downloads.started_at(m.artifact_id)
            # D2: a lost or damaged start time can only bring the deadline forward.
            started = min(max(m.issued_at if stored is None else stored, m.issued_at), now)
        else:
            started = now
            self._downloads.begin(m.artifact_id, envelope, started_at=started)
            state = assembler.start()
        deadline = min(float(m.expires), started + self._timeout_s)  # D2
        self._download = Download(m, envelope, assembler, key, state, deadline, now)
        if self._expire_overdue():  # D2: resumed past its deadline (restart or clock jump)
            return
        # Nothing held yet: the coordinator's initial full send is probably still coming,
        # so wait longer before the first request (§7); with chunks, the plain quiet_s.
        self._download.retry_after = self._quiet_s if state.chunks else self._backoff(1)
        self._link.subscribe(artifact_chunks(m.artifact_id))
        logger.info(
            "downloading v%d (%s, %d chunks, %d held)",
            m.version,
            m.artifact_id,
            m.chunk_count,
            len(state.chunks),
        )
        self._report(m.version, UpdateOutcome.DOWNLOADING, artifact_id=m.artifact_id)
        if assembler.is_complete(state):
            self._install(self._download)

    # --- revocation (T6) ------------------------------------------------------------

    def _adopt_revocations(self, listed: Envelope | None) -> None:
        """T6: a newer root-signed revocation list applies at once and is persisted.

        ``listed`` is used only if it is signed by the pinned root and its version is above
        the list in use (T5: never rolled back; anything else is ignored, it can never
        weaken trust). From here on every check uses it — commands (K1-K3), manifests, the
        stored download's re-verification at start-up — and a download in progress whose
        manifest was signed by a key it revokes is dropped (``revoked_key``). It is
        switched in memory first, so it holds even if ``state.json`` cannot be written
        (the OSError then refuses the manifest with ``storage_error``).

        Raises:
            OSError: ``state.json`` could not be replaced (rule S2).
        """
        if listed is None:
            return
        trust = self._trust.absorb_revocations(listed)
        new, held = trust.revocations, self._trust.revocations
        if new is None or (held is not None and new.version <= held.version):
            return
        self._trust = trust
        logger.info("revocation list v%d adopted", new.version)
        dl = self._download
        if dl is not None and trust.is_revoked(dl.envelope.keyid):  # T6: also in progress
            self._abandon(dl)
            code = RevokedKeyError.code
            logger.warning("download of v%d dropped: %s", dl.manifest.version, code)
            self._report(
                dl.manifest.version, UpdateOutcome.FAILED, code, artifact_id=dl.manifest.artifact_id
            )
        state = self._state.model_copy(update={"revocations": listed})
        self._store.save(state)  # S2
        self._state = state

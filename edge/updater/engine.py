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

Install/revert/rollback live in :mod:`edge.updater.install`, signed commands (K1-K6) in
:mod:`edge.updater.commands`; both are mixed into :class:`Updater`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge.updater.commands import CommandSteps
from edge.updater.downloads import DownloadStore
from edge.updater.fsutil import remove_temporaries, remove_tree
from edge.updater.install import Activate, Download
from edge.updater.install import reason_code as _code
from edge.updater.purposes import OnShadow, OnTrial, PurposeSteps, TimingStore
from edge.updater.slots import SlotStore
from edge.updater.state import (
    MAX_EXPIRED_DOWNLOADS,
    Slot,
    SlotRecord,
    StateStore,
    UpdaterState,
)
from shared.artifacts import (
    ArtifactAssembler,
    ChunkOutcome,
    Manifest,
    Purpose,
    TrustStore,
    manifest_from_bytes,
    unwrap_content_key,
    verify_manifest,
)
from shared.artifacts.trust import Envelope
from shared.crypto import PrivateKey
from shared.errors import (
    ConfigError,
    DownloadExpiredError,
    ExpiredManifestError,
    FedgeError,
    ModelLoadError,
    ProtocolError,
    ReplayAttackError,
    RevokedKeyError,
    RollbackAttackError,
)
from shared.protocol.codec import decode_chunk, decode_message_as, encode_message
from shared.protocol.messages import ManifestMessage, ResendRequest, UpdateInfo, UpdateOutcome
from shared.protocol.topics import artifact_chunks, device_requests

__all__ = ["Activate", "UpdateReport", "Updater", "UpdaterLink"]

logger = logging.getLogger(__name__)

_MAX_BACKOFF_QUIETS = 16.0  # resend backoff cap, in quiet periods (§7)
DEFAULT_DOWNLOAD_TIMEOUT_S = 3600.0  # D2: one broker session expiry (§10)
_jitter = random.Random()  # spreads a fleet's resend requests; not security relevant


class UpdaterLink(Protocol):
    """The messaging the updater needs (MQTT in production, a fake in unit tests)."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1."""

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1."""

    def unsubscribe(self, topic: str) -> None:
        """Drop a subscription."""


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


class Updater(CommandSteps, PurposeSteps):
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

    # --- inputs ---------------------------------------------------------------------

    def handle_manifest(self, payload: bytes) -> None:
        """A payload from ``devices/{id}/manifest``: verify it and start downloading."""
        self._expire_overdue()  # D2: a stalled download no longer blocks this manifest
        self._judged = None
        try:
            message = decode_message_as(payload, ManifestMessage)
            self._start_download(message.envelope, resumed=False)
        except (FedgeError, OSError) as exc:
            logger.warning("manifest refused: %s", _code(exc))
            # A manifest refused after it verified (P1, P2, V7, ...) is named exactly, so
            # the coordinator can tell which release failed (docs/protocol.md §9).
            judged = self._judged
            version, aid = (judged.version, judged.artifact_id) if judged else (0, None)
            self._report(version, UpdateOutcome.FAILED, _code(exc), artifact_id=aid)

    def handle_chunk(self, payload: bytes, *, topic: tuple[str, int] | None = None) -> None:
        """A payload from ``artifacts/{id}/chunks/{i}``: check, persist, maybe install.

        ``topic`` is the (artifact id, index) the chunk arrived on: a header that names
        another artifact is ignored, another index refused as ``chunk_rejected`` (C4).
        """
        if self._expire_overdue():  # D2: too late to install it
            return
        dl = self._download
        if dl is None:
            return
        try:
            chunk = decode_chunk(payload)  # C1-C3
            if chunk.artifact_id != dl.manifest.artifact_id:
                return  # another release's chunk: not ours to judge
            if topic is not None and (chunk.artifact_id, chunk.index) != topic:  # C4
                raise ProtocolError("chunk header does not match its topic")
            new_state, outcome = dl.assembler.add(dl.state, chunk)  # A1-A3
        except FedgeError as exc:
            logger.warning("chunk refused: %s", _code(exc))
            self._report(
                dl.manifest.version,
                UpdateOutcome.CHUNK_REJECTED,
                _code(exc),
                artifact_id=dl.manifest.artifact_id,
            )
            return
        if outcome is ChunkOutcome.DUPLICATE:
            # Chunks of this artifact are still flowing (a resend someone else asked for
            # may carry ours too): not quiet, so no request yet (§7).
            dl.last_progress = self._now()
            return
        try:
            self._downloads.save_chunk(chunk)  # durable before it counts (resume)
        except OSError as exc:
            logger.error("cannot persist chunk: %s", exc.strerror)
            return
        dl.state = new_state
        dl.last_progress = self._now()
        dl.asks, dl.retry_after = 0, self._quiet_s  # progress: back to the plain quiet period
        if dl.assembler.is_complete(dl.state):
            self._install(dl)

    def due_in(self) -> float | None:
        """Seconds until :meth:`tick` may have work; None if idle.

        The work is a resend request or, rule D2, dropping the download at its deadline.
        Lets the owner sleep instead of polling: a fleet of idle devices (or 200 simulated
        ones on one host) should not wake ten times a second for nothing.
        """
        dl = self._download
        if dl is None:
            return None
        due = min(dl.last_progress + dl.retry_after, dl.deadline)
        return max(0.0, due - self._now())

    def tick(self) -> None:
        """Ask for missing chunks once the download has been quiet long enough (§7).

        Quiet means no chunk of this artifact (new or duplicate) arrived for
        ``retry_after``: ``quiet_s`` after a new chunk; twice that (with jitter) while
        nothing at all has arrived, since the initial full send is likely still on its
        way; and doubling with jitter after each unanswered request, capped at
        ``_MAX_BACKOFF_QUIETS × quiet_s``.

        A download past its deadline is dropped instead (rule D2).
        """
        if self._expire_overdue():
            return
        dl = self._download
        if dl is None or self._now() - dl.last_progress < dl.retry_after:
            return
        if not self._request_missing(dl):
            self._install(dl)

    def _request_missing(self, dl: Download) -> bool:
        """Publish a ResendRequest for ``dl``'s missing chunks; False if none is missing."""
        missing = dl.assembler.missing(dl.state)
        if not missing:
            return False
        request = ResendRequest(
            device_id=self.device_id,
            sent_at=self._now(),
            artifact_id=dl.manifest.artifact_id,
            missing=missing,
        )
        self._link.publish(device_requests(self.device_id), encode_message(request))
        dl.last_progress = self._now()
        dl.asks += 1
        dl.retry_after = self._backoff(dl.asks)
        logger.info("asked for %d missing chunk(s) of %s", len(missing), request.artifact_id)
        return True

    def _backoff(self, exponent: int) -> float:
        """``quiet_s × 2^exponent``, capped, times a jitter in [1, 1.5) (§7)."""
        delay = self._quiet_s * min(2.0**exponent, _MAX_BACKOFF_QUIETS)
        return delay * (1.0 + 0.5 * _jitter.random())

    # --- manifest -------------------------------------------------------------------

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

    def _abandon(self, dl: Download) -> None:
        self._link.unsubscribe(artifact_chunks(dl.manifest.artifact_id))
        self._downloads.discard(dl.manifest.artifact_id)
        if self._download is dl:
            self._download = None

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

    # --- deadline (D2) --------------------------------------------------------------

    def _expire_overdue(self) -> bool:
        """D2: drop the download in progress if its deadline has passed; True if dropped."""
        dl = self._download
        if dl is None or self._now() < dl.deadline:
            return False
        self._abandon(dl)
        self._forget_download(dl.manifest)
        return True

    def _forget_download(self, m: Manifest) -> None:
        """D2: remember an expired artifact (persisted, S2) and report it, once."""
        expired = tuple(a for a in self._state.expired_downloads if a != m.artifact_id)
        state = self._state.model_copy(
            update={"expired_downloads": (*expired, m.artifact_id)[-MAX_EXPIRED_DOWNLOADS:]}
        )
        try:
            self._store.save(state)  # S2
            self._state = state
        except OSError as exc:  # dropped all the same; a redelivery may start it again
            logger.error("cannot record the expired download: %s", exc.strerror)
        code = DownloadExpiredError.code
        logger.warning("download of v%d (%s) dropped: %s", m.version, m.artifact_id, code)
        self._report(m.version, UpdateOutcome.FAILED, code, artifact_id=m.artifact_id)

    # --- status ---------------------------------------------------------------------

    def _report(
        self,
        version: int,
        outcome: UpdateOutcome,
        reason: str | None = None,
        *,
        artifact_id: str | None = None,
    ) -> None:
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

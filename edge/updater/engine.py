"""The device-side update engine: verify, download, A/B install, probation, commit.

Transport-agnostic: the caller feeds raw payloads (:meth:`Updater.handle_manifest`,
:meth:`Updater.handle_chunk`), calls :meth:`Updater.tick` now and then, and supplies an
:class:`UpdaterLink` (publish/subscribe), a probation callback and a clock. One thread
owns an updater; it holds no lock.

Order of the defences (each cites its rule in ``docs/protocol.md``):

1. manifest: T1-T5, V1-V7 via :func:`verify_manifest`; device policy P1 (length within
   the profile's ``max_model_bytes``) and P2 (precision accepted); content key unwrap —
   all **before** anything is written anywhere but the download directory;
2. chunks: C1-C3 (decode), A1-A3 (assembler) before a chunk is persisted;
3. artifact: A4-A8 (assembler) before anything is written to a slot (rule I1: only the
   inactive slot is ever written);
4. probation: the caller's callback loads the slot and runs a smoke inference;
5. commit: ``state.json`` replaced atomically (rule S2); the floor rises only here.

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
from edge.updater.fsutil import remove_temporaries
from edge.updater.install import Activate, Download
from edge.updater.install import reason_code as _code
from edge.updater.slots import SlotStore
from edge.updater.state import Slot, StateStore, UpdaterState
from shared.artifacts import (
    ArtifactAssembler,
    ChunkOutcome,
    TrustStore,
    unwrap_content_key,
    verify_manifest,
)
from shared.artifacts.trust import Envelope
from shared.crypto import PrivateKey
from shared.errors import (
    FedgeError,
    ModelLoadError,
    ReplayAttackError,
    RollbackAttackError,
)
from shared.protocol.delivery import (
    ManifestMessage,
    ResendRequest,
    decode_chunk,
    decode_delivery_as,
    encode_delivery,
)
from shared.protocol.delivery_topics import artifact_chunks, device_requests
from shared.protocol.messages import UpdateInfo, UpdateOutcome

__all__ = ["Activate", "UpdateReport", "Updater", "UpdaterLink"]

logger = logging.getLogger(__name__)

_MAX_BACKOFF_QUIETS = 16.0  # resend backoff cap, in quiet periods (§7)
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
    """

    version: int
    outcome: UpdateOutcome
    reason: str | None = None
    active_version: int | None = None
    slot: Slot | None = None

    def to_info(self) -> UpdateInfo:
        """The wire form carried in a ``StatusMessage``."""
        return UpdateInfo(version=self.version, outcome=self.outcome, reason=self.reason)


class Updater(CommandSteps):
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
        now: Wall clock, Unix seconds (expiry checks and the resend quiet period).
        quiet_s: Seconds without a new chunk before asking for the missing ones.
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
    ) -> None:
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
        self._store = StateStore(state_dir)
        self._slots = SlotStore(state_dir / "slots")
        self._downloads = DownloadStore(state_dir / "downloads")
        self._state = UpdaterState()
        self._trust = trust
        self._download: Download | None = None
        self.recover()

    # --- start-up -------------------------------------------------------------------

    def recover(self) -> None:
        """Return to the last committed state after any crash (rules I2, D1).

        Drops half-written temporaries and uncommitted slot files, then resumes a
        partial download whose manifest still verifies.
        """
        loaded = self._store.load()
        state = self._slots.recover(loaded)
        if state != loaded:
            self._store.save(state)
        self._state = state
        self._trust = self._pinned.absorb_revocations(state.revocations)
        self._download = None
        remove_temporaries(self._downloads.root)
        for artifact_id, envelope in self._downloads.pending():
            try:
                self._start_download(envelope, resumed=True)
            except (FedgeError, OSError) as exc:
                logger.info("dropping stored download %s: %s", artifact_id, _code(exc))
                self._downloads.discard(artifact_id)
        if self._download is not None:
            self._download.last_progress = float("-inf")  # ask for the rest on next tick

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
        try:
            message = decode_delivery_as(payload, ManifestMessage)
            self._start_download(message.envelope, resumed=False)
        except (FedgeError, OSError) as exc:
            logger.warning("manifest refused: %s", _code(exc))
            self._report(0, UpdateOutcome.FAILED, _code(exc))

    def handle_chunk(self, payload: bytes) -> None:
        """A payload from ``artifacts/{id}/chunks/{i}``: check, persist, maybe install."""
        dl = self._download
        if dl is None:
            return
        try:
            chunk = decode_chunk(payload)  # C1-C3
            if chunk.artifact_id != dl.manifest.artifact_id:
                return  # another release's chunk: not ours to judge
            new_state, outcome = dl.assembler.add(dl.state, chunk)  # A1-A3
        except FedgeError as exc:
            logger.warning("chunk refused: %s", _code(exc))
            self._report(dl.manifest.version, UpdateOutcome.CHUNK_REJECTED, _code(exc))
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
        """Seconds until :meth:`tick` may have work (a resend request); None if idle.

        Lets the owner sleep instead of polling: a fleet of idle devices (or 200 simulated
        ones on one host) should not wake ten times a second for nothing.
        """
        dl = self._download
        if dl is None:
            return None
        return max(0.0, dl.last_progress + dl.retry_after - self._now())

    def tick(self) -> None:
        """Ask for missing chunks once the download has been quiet long enough (§7).

        Quiet means no chunk of this artifact (new or duplicate) arrived for
        ``retry_after``: ``quiet_s`` after a new chunk; twice that (with jitter) while
        nothing at all has arrived, since the initial full send is likely still on its
        way; and doubling with jitter after each unanswered request, capped at
        ``_MAX_BACKOFF_QUIETS × quiet_s``.
        """
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
        self._link.publish(device_requests(self.device_id), encode_delivery(request))
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
                self._report(record.version if record else 0, UpdateOutcome.UP_TO_DATE)
                return
            raise
        m = verified.manifest
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
        key = unwrap_content_key(m, self.device_id, self._box)  # V7 (wrong_recipient)
        if current is not None:
            self._abandon(current)
        self._downloads.discard_all(keep=m.artifact_id)
        assembler = ArtifactAssembler(m)
        if resumed:
            state = self._downloads.restore(assembler)
        else:
            self._downloads.begin(m.artifact_id, envelope)
            state = assembler.start()
        self._download = Download(m, envelope, assembler, key, state, verified.trust, self._now())
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
        self._report(m.version, UpdateOutcome.DOWNLOADING)
        if assembler.is_complete(state):
            self._install(self._download)

    def _abandon(self, dl: Download) -> None:
        self._link.unsubscribe(artifact_chunks(dl.manifest.artifact_id))
        self._downloads.discard(dl.manifest.artifact_id)
        if self._download is dl:
            self._download = None

    # --- status ---------------------------------------------------------------------

    def _report(self, version: int, outcome: UpdateOutcome, reason: str | None = None) -> None:
        record = self._state.active_record
        report = UpdateReport(
            version=version,
            outcome=outcome,
            reason=reason,
            active_version=record.version if record else None,
            slot=self._state.active,
        )
        try:
            self._on_status(report)
        except Exception:  # a reporting bug must not break an install
            logger.exception("status callback failed")

"""The download in progress, chunk by chunk, mixed into :class:`~edge.updater.Updater`.

Once a manifest passed every check (:mod:`edge.updater.manifests`), its sealed chunks
arrive on ``artifacts/{id}/chunks/{i}``. Each is decoded (C1-C3), matched against its
topic (C4) and checked by the assembler (A1-A3) **before** it is persisted in the
download directory (:class:`~edge.updater.downloads.DownloadStore`); the last one hands
the download to :meth:`~edge.updater.install.InstallSteps._install` (A4-A8, I1).

While chunks are missing, a quiet download asks for them with a ``ResendRequest``, backing
off exponentially with jitter (``docs/protocol.md`` §7). A download past its deadline is
dropped and remembered as expired, so the retained manifest cannot restart it (rule D2).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Protocol

from edge.updater.downloads import DownloadStore
from edge.updater.install import Download, InstallSteps, reason_code
from edge.updater.state import MAX_EXPIRED_DOWNLOADS
from shared.artifacts import ChunkOutcome, Manifest
from shared.errors import DownloadExpiredError, FedgeError, ProtocolError
from shared.protocol.codec import decode_chunk, encode_message
from shared.protocol.messages import ResendRequest, UpdateOutcome
from shared.protocol.topics import artifact_chunks, device_requests

__all__ = ["TransferSteps", "UpdaterLink"]

logger = logging.getLogger("edge.updater.engine")  # as before the split (log filters)

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


class TransferSteps(InstallSteps):
    """Chunk intake, resend requests and the deadline; the host provides the attributes."""

    device_id: str
    _link: UpdaterLink
    _now: Callable[[], float]
    _quiet_s: float
    _downloads: DownloadStore
    _download: Download | None

    # --- chunks (C1-C4, A1-A3) ------------------------------------------------------

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
            logger.warning("chunk refused: %s", reason_code(exc))
            self._report(
                dl.manifest.version,
                UpdateOutcome.CHUNK_REJECTED,
                reason_code(exc),
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

    # --- resend requests (§7) -------------------------------------------------------

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

    # --- end of a download: abandoned or expired (D2) -------------------------------

    def _abandon(self, dl: Download) -> None:
        """Stop ``dl``: unsubscribe from its chunks and delete what was stored of it."""
        self._link.unsubscribe(artifact_chunks(dl.manifest.artifact_id))
        self._downloads.discard(dl.manifest.artifact_id)
        if self._download is dl:
            self._download = None

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

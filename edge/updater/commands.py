"""Signed commands on ``devices/{id}/cmd`` and ``groups/{g}/cmd``, mixed into the updater.

Actions: ``rollback`` (R1-R3), ``report_missing`` and ``drop_candidate`` (U2: drop the held
shadow candidate the command names; ``no_candidate`` / ``candidate_mismatch`` otherwise).

Order (``docs/protocol.md`` §6): decode (C1) → :func:`verify_command` — signature by a
root-certified, unrevoked ``coordinator`` key (K1-K3), ``issued_at ≤ now < expires`` (K4),
addressed to this device or one of its groups (K5), ``seq`` above the last accepted one
(K6) — then the new ``seq`` is committed atomically to ``state.json`` **before** the
command runs, so neither a replay nor a crash can make a device run one command twice.
A refused command changes nothing and is reported as ``command_failed`` with its reason.

K1-K3 always use the newest revocation list the device holds: one carried by a verified
manifest applies from the moment that manifest verified, not from its commit (rule T6).
"""

from __future__ import annotations

import logging

from edge.updater.install import reason_code
from edge.updater.state import UpdaterState
from edge.updater.transfer import TransferSteps
from shared.errors import FedgeError, ProtocolError
from shared.protocol.codec import decode_message_as
from shared.protocol.commands import Command, CommandAction, verify_command
from shared.protocol.messages import CommandMessage, UpdateOutcome

__all__ = ["CommandSteps", "NotDownloadingError"]

logger = logging.getLogger(__name__)


class NotDownloadingError(FedgeError):
    """``report_missing`` while no (or another) artifact is being downloaded."""

    code = "not_downloading"


class CommandSteps(TransferSteps):
    """Command handling; the host class provides the attributes below.

    Built on :class:`~edge.updater.transfer.TransferSteps`: ``report_missing`` asks for the
    download's missing chunks, and an expired download is dropped first (D2).
    """

    groups: frozenset[str]

    def handle_command(self, payload: bytes) -> None:
        """A payload from ``devices/{id}/cmd`` or ``groups/{g}/cmd``: verify, then run it."""
        self._expire_overdue()  # D2: report_missing must not revive an expired download
        try:
            message = decode_message_as(payload, CommandMessage)  # C1
            command = verify_command(  # K1-K6
                message.envelope,
                self._trust,  # T6: the newest revocation list verified, already in force
                device_id=self.device_id,
                groups=self.groups,
                last_seq=self._state.command_seq,
                now=int(self._now()),
            )
        except FedgeError as exc:
            logger.warning("command refused: %s", exc.code)
            self._report(0, UpdateOutcome.COMMAND_FAILED, exc.code)
            return
        try:
            self._accept_seq(command.seq)  # K6: durable before the command acts
        except OSError as exc:
            logger.error("cannot persist the command sequence: %s", exc.strerror)
            self._report(0, UpdateOutcome.COMMAND_FAILED, reason_code(exc))
            return
        logger.info("command %s accepted (seq %d)", command.action, command.seq)
        try:
            self._execute(command)
        except Exception as exc:  # a failed command leaves the committed model serving
            logger.warning("command %s failed: %s", command.action, reason_code(exc))
            self._report(command.to_version or 0, UpdateOutcome.COMMAND_FAILED, reason_code(exc))

    def _accept_seq(self, seq: int) -> None:
        state: UpdaterState = self._state.model_copy(update={"command_seq": seq})
        self._store.save(state)  # S2: atomic replace
        self._state = state

    def _execute(self, command: Command) -> None:
        if command.action is CommandAction.ROLLBACK:
            self._rollback(command.to_version)
            return
        if command.action is CommandAction.DROP_CANDIDATE:
            self._drop_candidate(command.artifact_id)
            return
        if command.action is CommandAction.REPORT_MISSING:
            dl = self._download
            wanted = command.artifact_id
            if dl is None or (wanted is not None and wanted != dl.manifest.artifact_id):
                raise NotDownloadingError("no such download in progress")
            if not self._request_missing(dl):
                logger.info("report_missing: nothing missing for %s", dl.manifest.artifact_id)
            return
        raise ProtocolError("unsupported command action")  # pragma: no cover

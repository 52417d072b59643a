"""Signed ``drop_candidate`` commands: make devices forget a shadow candidate (§6, §15 U2).

A ``shadow`` manifest leaves a candidate in the device's inactive slot, evaluated beside the
serving model until something replaces it. When a rollout is aborted, the devices that hold
its candidate are told to drop it (:meth:`cloud.rollout.delivery.PublisherLink.
drop_candidate`), and an operator can do the same by hand (``fedge cloud rollout
drop-candidate``). Both go through :func:`drop_candidates`, on one coordinator connection:

1. subscribe to each device's status; the broker first hands over the retained one;
2. the artifact to drop is the one the operator named, or — for a rollout, whose variants
   differ per device — the ``candidate`` of the device's retained status when it is the
   rollout's model version; a device holding nothing (or another version) needs nothing;
3. a signed command (:func:`cloud.deployment.commands.build_command`, the one grammar and
   sequence counter of every command) goes to each device that holds it;
4. the answer is the device's next live (non-retained) status with outcome ``dropped`` or
   ``command_failed``; ``command_failed no_candidate`` means the candidate is gone already
   (e.g. a coordinator resuming after a crash asks again) and counts as done.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass
from enum import StrEnum

from cloud.deployment.commands import CommandResult, await_answers, build_command
from cloud.deployment.evidence import Attribution
from cloud.deployment.link import CoordinatorLink
from cloud.keys import KeyHome
from shared.errors import FedgeError
from shared.protocol import topics
from shared.protocol.codec import encode_message
from shared.protocol.commands import Command, CommandAction
from shared.protocol.messages import UpdateOutcome

__all__ = ["DropOutcome", "DropResult", "drop_candidates"]

logger = logging.getLogger(__name__)

#: The device's answer when it holds no candidate (``edge.updater.purposes``).
NO_CANDIDATE = "no_candidate"


class DropOutcome(StrEnum):
    """What became of one device's candidate."""

    DROPPED = "dropped"  # the device dropped it on this command
    NOT_HELD = "not_held"  # nothing to drop: gone already, or never held (``reason`` says)
    FAILED = "failed"  # refused (``reason``: the device's code) or could not be sent
    TIMEOUT = "timeout"  # no answer in time; the command may still be carried out later

    @property
    def done(self) -> bool:
        """Whether the device no longer holds the candidate."""
        return self in (DropOutcome.DROPPED, DropOutcome.NOT_HELD)


@dataclass(frozen=True)
class DropResult:
    """One device's result.

    Attributes:
        device_id: The device.
        outcome: See :class:`DropOutcome`.
        artifact_id: The candidate the command named (None when none was sent).
        reason: Why, for anything but ``dropped``: the device's reason code, ``no_status``
            (no retained status to learn the candidate from), ``other_candidate``
            (it holds another version), ``no_answer``, or a signing error's code.
        seq: The command's sequence number (None when none was sent).
    """

    device_id: str
    outcome: DropOutcome
    artifact_id: str | None = None
    reason: str | None = None
    seq: int | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {**vars(self), "outcome": str(self.outcome)}


def _result(command: Command, answer: CommandResult) -> DropResult:
    """A drop's :class:`DropResult` from the device's answer (or its absence)."""
    device_id, artifact_id = command.device_id or "", command.artifact_id
    if answer.outcome == str(UpdateOutcome.DROPPED):
        return DropResult(device_id, DropOutcome.DROPPED, artifact_id, None, command.seq)
    if answer.outcome == "timeout":
        return DropResult(device_id, DropOutcome.TIMEOUT, artifact_id, "no_answer", command.seq)
    outcome = DropOutcome.NOT_HELD if answer.reason == NO_CANDIDATE else DropOutcome.FAILED
    return DropResult(device_id, outcome, artifact_id, answer.reason, command.seq)


def _targets(
    link: CoordinatorLink,
    attribution: Attribution,
    device_ids: list[str],
    version: tuple[str, int],
    discover_s: float,
) -> tuple[dict[str, str], dict[str, DropResult]]:
    """From the retained statuses: the candidate artifact to drop per device, or a result."""
    seen: dict[str, str | None] = {}
    other: set[str] = set()
    deadline = time.monotonic() + discover_s
    while len(seen) < len(device_ids) and (left := deadline - time.monotonic()) > 0:
        try:
            msg = link.inbox.get(timeout=min(left, 0.2))
        except queue.Empty:
            continue
        attributed = attribution.status(msg)
        if attributed is None or attributed.device_id not in device_ids:
            continue
        held = attributed.status.candidate
        seen[attributed.device_id] = None
        other.discard(attributed.device_id)
        if held is not None and (held.model_id, held.version) == version:
            seen[attributed.device_id] = held.artifact_id
        elif held is not None:
            other.add(attributed.device_id)
    targets: dict[str, str] = {}
    done: dict[str, DropResult] = {}
    for device_id in device_ids:
        if device_id not in seen:
            done[device_id] = DropResult(device_id, DropOutcome.FAILED, reason="no_status")
        elif (artifact_id := seen[device_id]) is not None:
            targets[device_id] = artifact_id
        else:
            reason = "other_candidate" if device_id in other else NO_CANDIDATE
            done[device_id] = DropResult(device_id, DropOutcome.NOT_HELD, reason=reason)
    return targets, done


def drop_candidates(
    home: KeyHome,
    device_ids: list[str],
    *,
    host: str,
    port: int,
    artifact_id: str | None = None,
    version: tuple[str, int] | None = None,
    timeout_s: float = 30.0,
    discover_s: float = 2.0,
) -> dict[str, DropResult]:
    """Send each device a signed ``drop_candidate`` and wait for the answers.

    Args:
        home: The key home (enrollment records, the coordinator's command signer).
        device_ids: The devices.
        host, port: The broker's TLS listener.
        artifact_id: The candidate to drop (the operator's choice), the same for all.
        version: Instead of ``artifact_id``: ``(model_id, version)``; each device is sent
            the artifact id of its retained status' candidate when it is that version.
        timeout_s: How long to wait for the answers (after the sends).
        discover_s: With ``version``: how long to wait for the retained statuses.

    Returns:
        One :class:`DropResult` per device.

    Raises:
        ConfigError: the broker is unreachable or refused the coordinator.
        ValueError: neither or both of ``artifact_id`` and ``version``.
    """
    if (artifact_id is None) == (version is None):
        raise ValueError("exactly one of artifact_id and version")
    if not device_ids:
        return {}
    link = CoordinatorLink(home, host=host, port=port)
    link.connect([topics.device_status(d) for d in device_ids])
    attribution = Attribution()
    out: dict[str, DropResult] = {}
    sent: dict[str, Command] = {}
    try:
        if version is not None:
            targets, out = _targets(link, attribution, device_ids, version, discover_s)
        else:
            assert artifact_id is not None
            targets = dict.fromkeys(device_ids, artifact_id)
        for device_id, target in targets.items():
            try:
                command, message = build_command(
                    home, CommandAction.DROP_CANDIDATE, device_id, artifact_id=target
                )
            except FedgeError as exc:  # revoked or unknown: nothing to send
                out[device_id] = DropResult(device_id, DropOutcome.FAILED, target, exc.code)
                continue
            link.publish(topics.device_cmd(device_id), encode_message(message))
            sent[device_id] = command
            logger.info("sent drop_candidate %s to %s (seq %d)", target, device_id, command.seq)
        answers = await_answers(link, attribution, sent, timeout_s=timeout_s)
    finally:
        link.close()
    out.update({d: _result(sent[d], answer) for d, answer in answers.items()})
    return out

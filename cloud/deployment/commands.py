"""Send signed commands (``rollback``, ``report_missing``) to a device and await its answer.

A command is signed by the coordinator key (root-certified for role ``coordinator``,
``docs/protocol.md`` §6) and published at QoS 1 on ``fedge/v1/devices/{id}/cmd``. Its
``seq`` is strictly increasing per key home: milliseconds since the epoch, but always
above the last one issued (persisted in ``coordinator/command_seq``), so a clock step
back cannot make a device refuse a fresh command as a replay (rule K6).

The answer is the device's next (non-retained) status whose ``update.outcome`` is
``rolled_back`` (``dropped`` for ``drop_candidate``, naming the command's artifact) or
``command_failed``, or, for ``report_missing``, its resend request. :func:`await_answers`
collects the answers of many devices on one connection, parsing each message once (the
attribution drops a message id it has seen, so a second parse would lose the answer).
"""

from __future__ import annotations

import fcntl
import logging
import queue
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from cloud.deployment.evidence import Attribution
from cloud.deployment.link import CoordinatorLink, Incoming
from cloud.deployment.publisher import select_devices
from cloud.keyfiles import write_public
from cloud.keys import KeyHome
from shared.errors import ConfigError, ProtocolError
from shared.numbers import parse_ascii_uint
from shared.protocol import topics
from shared.protocol.codec import encode_message
from shared.protocol.commands import Command, CommandAction, sign_command
from shared.protocol.messages import CommandMessage, StatusMessage, UpdateOutcome

__all__ = [
    "CommandResult",
    "await_answers",
    "build_command",
    "command_answer",
    "next_seq",
    "send_command",
]

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 300
"""A command is valid for five minutes (K4): long enough for a short reconnect."""


@dataclass(frozen=True)
class CommandResult:
    """What became of one command.

    Attributes:
        device_id: The target.
        action: The command's action.
        seq: Its sequence number.
        outcome: ``rolled_back``, ``dropped``, ``command_failed``, ``requested`` (a resend
            request arrived) or ``timeout`` (no answer; the command may still be applied
            later).
        reason: The device's reason code for ``command_failed``.
        version: The version the device reported (the one now serving after a rollback).
    """

    device_id: str
    action: str
    seq: int
    outcome: str
    reason: str | None = None
    version: int | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return dict(vars(self))


def _seq_path(home: KeyHome) -> Path:
    return home.path / "coordinator" / "command_seq"


def next_seq(home: KeyHome, *, now: float | None = None) -> int:
    """Allocate the next command sequence number (K6) and persist it atomically.

    Two coordinators (or two ``fedge cloud rollback`` runs) sharing a key home hold an
    exclusive lock for the read-increment-write, so they never hand out the same number
    (the device would refuse the second command as a replay).
    """
    path = _seq_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name("command_seq.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            text = path.read_text(encoding="ascii").strip() if path.exists() else "0"
            last = parse_ascii_uint(text, what="command seq", max_value=2**63 - 1)  # N1
        except (OSError, ValueError, ProtocolError) as exc:
            raise ConfigError(f"unreadable command sequence file {path}") from exc
        seq = max(int((time.time() if now is None else now) * 1000), last + 1)
        write_public(path, f"{seq}\n".encode())
    return seq


def build_command(
    home: KeyHome,
    action: CommandAction,
    device_id: str,
    *,
    to_version: int | None = None,
    artifact_id: str | None = None,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> tuple[Command, CommandMessage]:
    """Sign a command for one enrolled device.

    Raises:
        NotFoundError: the device is not enrolled or is revoked.
        ConfigError: the key home is incomplete, or the arguments do not make a valid
            command for ``action`` (``bad_command``).
    """
    select_devices(home, [device_id], None)  # enrolled and not revoked
    moment = time.time() if now is None else now
    try:
        command = Command(
            action=action,
            device_id=device_id,
            seq=next_seq(home, now=moment),
            issued_at=int(moment) - 1,  # tolerate a device clock a second behind
            expires=int(moment) + ttl_s,
            artifact_id=artifact_id,
            to_version=to_version,
        )
    except ValidationError as exc:  # e.g. drop_candidate without the artifact it names
        problems = "; ".join(str(e["msg"]) for e in exc.errors())
        raise ConfigError(f"invalid {action} command: {problems}", code="bad_command") from exc
    key, certificate = home.coordinator_signer()
    envelope = sign_command(command, key, certificate=certificate)
    message = CommandMessage(device_id=device_id, sent_at=moment, envelope=envelope)
    return command, message


def _answer(command: Command, msg: Incoming, attribution: Attribution) -> CommandResult | None:
    """The device's answer to ``command`` in ``msg``, if it is one (attributed by topic)."""
    device_id = command.device_id or ""
    base = (device_id, str(command.action), command.seq)
    if msg.retained:
        return None  # an old status from before the command
    request = attribution.request(msg)
    if request is not None:
        if request.device_id == device_id and command.action is CommandAction.REPORT_MISSING:
            return CommandResult(*base, outcome="requested")
        return None
    attributed = attribution.status(msg)
    if attributed is None or attributed.device_id != device_id:
        return None
    return command_answer(command, attributed.status)


_DONE = {
    CommandAction.ROLLBACK: UpdateOutcome.ROLLED_BACK,
    CommandAction.DROP_CANDIDATE: UpdateOutcome.DROPPED,
}
"""The outcome a device reports when it carried a command out."""


def command_answer(command: Command, status: StatusMessage) -> CommandResult | None:
    """The answer to ``command`` in a status its device sent (attributed by the caller).

    Carried out: ``rolled_back`` for a rollback, ``dropped`` naming the command's artifact
    for a ``drop_candidate``; refused: ``command_failed`` with the device's reason. Any
    other status (a heartbeat, an unrelated update) is not an answer: None.
    """
    update = status.update
    if update is None:
        return None
    done = _DONE.get(command.action)
    if done is not None and update.outcome is done:
        if done is UpdateOutcome.DROPPED and update.artifact_id != command.artifact_id:
            return None  # another candidate's drop: not this command's answer
    elif update.outcome is not UpdateOutcome.COMMAND_FAILED:
        return None
    return CommandResult(
        command.device_id or "",
        str(command.action),
        command.seq,
        outcome=str(update.outcome),
        reason=update.reason,
        version=update.version or None,
    )


def await_answers(
    link: CoordinatorLink,
    attribution: Attribution,
    sent: dict[str, Command],
    *,
    timeout_s: float,
) -> dict[str, CommandResult]:
    """Wait on ``link`` (subscribed to the devices' statuses) for each sent command's
    answer; a device that does not answer in time gets ``timeout``.

    Each message is parsed once and matched to its device's command by its attributed
    topic, never by the payload.
    """
    out: dict[str, CommandResult] = {}
    deadline = time.monotonic() + timeout_s
    while len(out) < len(sent) and (left := deadline - time.monotonic()) > 0:
        try:
            msg = link.inbox.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        if msg.retained:
            continue  # an old status from before the commands
        attributed = attribution.status(msg)
        if attributed is None or attributed.device_id in out:
            continue
        command = sent.get(attributed.device_id)
        if command is not None and (answer := command_answer(command, attributed.status)):
            out[attributed.device_id] = answer
    for device_id, command in sent.items():
        out.setdefault(
            device_id, CommandResult(device_id, str(command.action), command.seq, "timeout")
        )
    return out


def send_command(
    home: KeyHome,
    action: CommandAction,
    device_id: str,
    *,
    host: str,
    port: int,
    to_version: int | None = None,
    artifact_id: str | None = None,
    timeout_s: float = 30.0,
) -> CommandResult:
    """Sign, publish and wait for the device's answer (``timeout`` if none comes).

    Raises:
        ConfigError: broker unreachable or refused the coordinator.
        NotFoundError: the device is not enrolled or is revoked.
    """
    link = CoordinatorLink(home, host=host, port=port)
    link.connect([topics.device_status(device_id), topics.device_requests(device_id)])
    attribution = Attribution()
    try:
        command, message = build_command(
            home, action, device_id, to_version=to_version, artifact_id=artifact_id
        )
        info = link.publish(topics.device_cmd(device_id), encode_message(message))
        info.wait_for_publish(timeout_s)
        logger.info("sent %s to %s (seq %d)", action, device_id, command.seq)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = link.inbox.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            answer = _answer(command, msg, attribution)
            if answer is not None:
                return answer
        return CommandResult(device_id, str(action), command.seq, "timeout")
    finally:
        link.close()

"""The rollout engine's seam to the devices: :class:`RolloutLink`, and its production
implementation :class:`PublisherLink` over the deployment plane.

The engine never touches MQTT: it asks a link to deliver a version to some devices with
a purpose (``install`` or ``shadow``) and gets one :class:`DeviceAnswer` per device, to
roll devices back with signed commands, or to make devices drop the shadow candidate of a
version (signed ``drop_candidate`` commands). :class:`PublisherLink` does the first with
:meth:`cloud.deployment.publisher.Publisher.publish` (signed manifests, chunks, resend
requests, completion per purpose: install → the device serves the target, shadow → it
holds the target as its candidate), the second with
:func:`cloud.deployment.commands.build_command` on one coordinator connection, and the
third with :func:`cloud.rollout.candidates.drop_candidates`. Unit tests
give the engine a fake link; integration tests this one, on real Mosquitto.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from cloud.deployment.commands import await_answers, build_command
from cloud.deployment.evidence import Attribution
from cloud.deployment.link import CoordinatorLink
from cloud.deployment.publisher import Outcome, Publisher, select_devices
from cloud.keys import KeyHome
from cloud.rollout.candidates import drop_candidates
from shared.errors import FedgeError
from shared.protocol import topics
from shared.protocol.codec import encode_message
from shared.protocol.commands import Command, CommandAction

__all__ = ["Answer", "DeviceAnswer", "PublisherLink", "RolloutLink"]

logger = logging.getLogger(__name__)


class Answer(StrEnum):
    """What came back from one device."""

    COMMITTED = "committed"  # serves the target (install done; or already serving it)
    HELD = "held"  # holds the target as its shadow candidate
    FAILED = "failed"  # refused or reverted; ``reason`` says why
    TIMEOUT = "timeout"  # nothing within the timeout
    ROLLED_BACK = "rolled_back"  # answered a rollback command
    ROLLBACK_FAILED = "rollback_failed"  # refused the command, or no answer
    DROPPED = "dropped"  # no longer holds the candidate (dropped now, or held none)
    DROP_FAILED = "drop_failed"  # refused drop_candidate, or no answer


@dataclass(frozen=True)
class DeviceAnswer:
    """One device's answer to a delivery, a rollback or a drop."""

    answer: Answer
    reason: str | None = None


class RolloutLink(Protocol):
    """What the rollout engine needs of the deployment plane."""

    def deliver(
        self, version_ref: str, device_ids: list[str], *, purpose: str, timeout_s: float
    ) -> dict[str, DeviceAnswer]:
        """Send ``version_ref`` to the devices for ``purpose``; wait up to ``timeout_s``."""

    def rollback(self, device_ids: list[str], *, timeout_s: float) -> dict[str, DeviceAnswer]:
        """Send each device a signed rollback command; wait for the answers."""

    def withdraw(self, device_ids: list[str]) -> None:
        """Clear the devices' retained manifests, so none installs the candidate later."""

    def drop_candidate(
        self, version_ref: str, device_ids: list[str], *, timeout_s: float
    ) -> dict[str, DeviceAnswer]:
        """Make each device drop its shadow candidate of ``version_ref``; wait for answers.

        ``dropped`` also for a device that holds no candidate of it (any more): a
        coordinator resuming after a crash asks again, and that is done, not a failure.
        """


class PublisherLink:
    """:class:`RolloutLink` over the deployment plane of the coordinator.

    Args:
        home: The key home (enrollment records, the coordinator's command signer).
        publisher: A new :class:`Publisher` per delivery (its broker address is read then).
        broker: The broker's TLS listener for rollback commands.
        discover_s: How long a publish listens for retained statuses first.
    """

    def __init__(
        self,
        home: KeyHome,
        publisher: Callable[[], Publisher],
        broker: Callable[[], tuple[str, int]],
        *,
        discover_s: float = 1.0,
    ) -> None:
        self._home, self._publisher, self._broker = home, publisher, broker
        self._discover_s = discover_s

    def deliver(
        self, version_ref: str, device_ids: list[str], *, purpose: str, timeout_s: float
    ) -> dict[str, DeviceAnswer]:
        """Publish with the given purpose (the publisher's completion per purpose:
        install → the device serves the target; shadow → it holds it as its candidate)."""
        records = select_devices(self._home, device_ids, None)
        report = self._publisher().publish(
            version_ref, records, timeout_s=timeout_s, discover_s=self._discover_s, purpose=purpose
        )
        ok = Answer.HELD if purpose == "shadow" else Answer.COMMITTED
        out: dict[str, DeviceAnswer] = {}
        for device_id, result in report.devices.items():
            if result.outcome is Outcome.COMMITTED:
                out[device_id] = DeviceAnswer(ok)
            elif result.outcome is Outcome.FAILED:
                out[device_id] = DeviceAnswer(Answer.FAILED, result.reason)
            else:
                out[device_id] = DeviceAnswer(Answer.TIMEOUT, "no_answer")
        return out

    def withdraw(self, device_ids: list[str]) -> None:
        """An empty retained message on each ``devices/{id}/manifest`` (MQTT's way to delete
        a retained message): a device that was sent the candidate but never committed it,
        or that rolled back, does not find the candidate's manifest when it reconnects."""
        if not device_ids:
            return
        host, port = self._broker()
        link = CoordinatorLink(self._home, host=host, port=port)
        link.connect([])
        try:
            infos = [link.publish(topics.device_manifest(d), b"", retain=True) for d in device_ids]
            for info in infos:
                info.wait_for_publish(10.0)
        finally:
            link.close()

    def drop_candidate(
        self, version_ref: str, device_ids: list[str], *, timeout_s: float
    ) -> dict[str, DeviceAnswer]:
        """Signed ``drop_candidate`` commands for the candidate each device's retained status
        names, when it is ``version_ref`` (variants differ per device, so the artifact id is
        the device's own); see :func:`cloud.rollout.candidates.drop_candidates`."""
        model, _, number = version_ref.rpartition("@")
        host, port = self._broker()
        results = drop_candidates(
            self._home,
            device_ids,
            host=host,
            port=port,
            version=(model, int(number) if number.isdigit() else 0),
            timeout_s=timeout_s,
            discover_s=self._discover_s,
        )
        return {
            d: DeviceAnswer(Answer.DROPPED if r.outcome.done else Answer.DROP_FAILED, r.reason)
            for d, r in results.items()
        }

    def rollback(self, device_ids: list[str], *, timeout_s: float) -> dict[str, DeviceAnswer]:
        """Signed rollback commands on one coordinator connection, answers by topic."""
        if not device_ids:
            return {}
        host, port = self._broker()
        link = CoordinatorLink(self._home, host=host, port=port)
        link.connect([topics.device_status(d) for d in device_ids])
        attribution = Attribution()
        out: dict[str, DeviceAnswer] = {}
        sent: dict[str, Command] = {}
        try:
            for device_id in device_ids:
                try:
                    command, message = build_command(self._home, CommandAction.ROLLBACK, device_id)
                except FedgeError as exc:  # revoked meanwhile: nothing to send
                    out[device_id] = DeviceAnswer(Answer.ROLLBACK_FAILED, exc.code)
                    continue
                link.publish(topics.device_cmd(device_id), encode_message(message))
                sent[device_id] = command
            answers = await_answers(link, attribution, sent, timeout_s=timeout_s)
            for device_id, result in answers.items():
                out[device_id] = (
                    DeviceAnswer(Answer.ROLLED_BACK)
                    if result.outcome == "rolled_back"
                    else DeviceAnswer(
                        Answer.ROLLBACK_FAILED,
                        "no_answer" if result.outcome == "timeout" else result.reason,
                    )
                )
        finally:
            link.close()
        for device_id in device_ids:
            out.setdefault(device_id, DeviceAnswer(Answer.ROLLBACK_FAILED, "no_answer"))
        return out

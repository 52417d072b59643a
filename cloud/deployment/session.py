"""One publish in flight: send manifests and chunks, answer resend requests, collect outcomes.

Chunks are published once per release (QoS 1) when every device has subscribed (it
reported ``downloading``) or a grace period has passed; ``ResendRequest`` messages are then
answered until every device reports ``committed`` or ``failed``, or the timeout passes.
Requests are coalesced (``docs/protocol.md`` §7): a chunk goes out at most once per resend
window, a window scaled to the fleet's expected full-delivery time, because a republished
chunk reaches every subscriber of the shared chunk topic. A device that reports
``delta_base_mismatch`` gets the full artifact once.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cloud.coordinator_mqtt import CoordinatorLink, Incoming
from cloud.publish_report import Outcome, PublishReport
from shared.artifacts import Release, sign_manifest
from shared.errors import FedgeError
from shared.protocol import topics
from shared.protocol.codec import decode_message_as
from shared.protocol.delivery import (
    ManifestMessage,
    ResendRequest,
    decode_delivery_as,
    encode_chunk,
    encode_delivery,
)
from shared.protocol.delivery_topics import artifact_chunk, device_requests
from shared.protocol.messages import StatusMessage, UpdateOutcome

if TYPE_CHECKING:
    from cloud.publisher import Publisher

__all__ = ["Plan", "Rollout", "resend_window", "status_of"]

logger = logging.getLogger(__name__)

_RESEND_COOLDOWN_S = 0.5  # shortest resend window (§7)
_RESEND_WINDOW_MAX_S = 10.0  # longest resend window
# Bytes per second the broker is assumed to fan out to subscribers (a conservative figure
# for Mosquitto with TLS on one host); sets the resend window for a fleet (§7).
_FANOUT_BYTES_PER_S = 100e6
_SUBSCRIBE_GRACE_S = 2.0


@dataclass
class Plan:
    """One release and the devices it goes to."""

    release: Release
    devices: list[str]
    base_version: int | None
    waiting: set[str] = field(default_factory=set)  # not yet subscribed to the chunks
    chunks_sent: bool = False
    due: float = 0.0  # when to send the chunks even if some devices have not subscribed
    pending: set[int] = field(default_factory=set)  # asked for, not yet republished


def resend_window(devices: int, artifact_bytes: int) -> float:
    """Seconds between two sends of one chunk: the fleet's expected full-delivery time.

    Within it, a chunk sent is still reaching the fleet, so asking again for it would only
    send every subscriber another copy (§7). At least ``_RESEND_COOLDOWN_S``, at most
    ``_RESEND_WINDOW_MAX_S``.
    """
    expected = devices * artifact_bytes / _FANOUT_BYTES_PER_S
    return min(max(_RESEND_COOLDOWN_S, expected), _RESEND_WINDOW_MAX_S)


def status_of(msg: Incoming) -> StatusMessage | None:
    """The status in ``msg``, or None when it is not a (valid) status message."""
    if not msg.topic.endswith("/status"):
        return None
    try:
        return decode_message_as(msg.payload, StatusMessage)
    except FedgeError:
        return None


_DONE = frozenset({UpdateOutcome.COMMITTED, UpdateOutcome.UP_TO_DATE})


class Rollout:
    """One publish in flight: sends, answers resend requests, collects outcomes."""

    def __init__(
        self,
        pub: Publisher,
        link: CoordinatorLink,
        plans: list[Plan],
        report: PublishReport,
        target: tuple[str, int, str],
        data: bytes,
        preexisting: set[str] | frozenset[str] = frozenset(),
        on_progress: Callable[[PublishReport], None] | None = None,
    ) -> None:
        self.pub, self.link, self.report, self.data = pub, link, report, data
        self.on_progress = on_progress
        self.preexisting = set(preexisting)
        self.model, self.version, self.precision = target
        self.plans: dict[str, Plan] = {}
        self.by_device: dict[str, Plan] = {}
        self.recent: dict[tuple[str, int], float] = {}  # last send of each chunk
        self.retried: set[str] = set()
        for plan in plans:
            self._send_plan(plan)

    def _send_plan(self, plan: Plan) -> None:
        m = plan.release.manifest
        self.plans[m.artifact_id] = plan
        release_key, cert = self.pub.home.release_signer()
        revocations = self.pub.home.revocations()
        for device_id in plan.devices:
            self.by_device[device_id] = plan
            result = self.report.devices[device_id]
            result.encoding, result.base_version = str(m.encoding), plan.base_version
            env = sign_manifest(
                m.for_devices([device_id]), release_key, certificate=cert, revocations=revocations
            )
            message = ManifestMessage(device_id=device_id, sent_at=self.pub.clock(), envelope=env)
            payload = encode_delivery(message)
            self.link.publish(topics.device_manifest(device_id), payload, retain=True)
        plan.waiting = set(plan.devices)
        plan.due = time.monotonic() + _SUBSCRIBE_GRACE_S
        self.report.mark("manifests_sent")
        logger.info("manifest v%d (%s) to %d device(s)", m.version, m.encoding, len(plan.devices))

    def _window(self, plan: Plan) -> float:
        m = plan.release.manifest
        return resend_window(len(plan.devices), m.chunk_count * m.chunk_size)

    def _send_chunks(self, plan: Plan) -> None:
        """The initial full send of ``plan``'s chunks."""
        now = time.monotonic()
        for chunk in plan.release.chunks:
            self.recent[(chunk.artifact_id, chunk.index)] = now
            self.link.publish(artifact_chunk(chunk.artifact_id, chunk.index), encode_chunk(chunk))
        self.report.mark("chunks_sent")

    def _flush(self, plan: Plan) -> None:
        """Republish the requested chunks whose resend window has passed (§7).

        Requests for a chunk sent less than a window ago stay pending: that send is
        probably still reaching the asker, and one later send answers them all.
        """
        if not plan.pending:
            return
        now = time.monotonic()
        window = self._window(plan)
        chunks = plan.release.chunks
        for index in sorted(plan.pending):
            chunk = chunks[index]
            key = (chunk.artifact_id, index)
            if now - self.recent.get(key, -1e9) < window:
                continue
            plan.pending.discard(index)
            self.recent[key] = now
            self.link.publish(artifact_chunk(chunk.artifact_id, index), encode_chunk(chunk))

    def _open(self) -> bool:
        return any(r.outcome is Outcome.TIMEOUT for r in self.report.devices.values())

    def wait(self, timeout_s: float) -> None:
        """Run until every device has an outcome or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while self._open() and time.monotonic() < deadline:
            for plan in self.plans.values():
                # Chunks are not retained: send them once every device has subscribed
                # (it reported ``downloading``), or after a grace period; stragglers
                # ask for what they missed (§7).
                if not plan.chunks_sent and (not plan.waiting or time.monotonic() >= plan.due):
                    self._send_chunks(plan)
                    plan.chunks_sent = True
                self._flush(plan)
            try:
                msg = self.link.inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            if msg.topic.endswith("/requests"):
                self._on_request(msg)
            else:
                self._on_status(msg)

    def _on_request(self, msg: Incoming) -> None:
        try:
            request = decode_delivery_as(msg.payload, ResendRequest)
        except FedgeError:
            return
        plan = self.plans.get(request.artifact_id)
        # The broker ACL makes the requests topic authentic (§7); the body must agree.
        if (
            plan is not None
            and msg.topic == device_requests(request.device_id)
            and request.device_id in plan.devices
        ):
            if not plan.chunks_sent:
                # The first full send is still due and will reach this (subscribed)
                # device: answering now would send the chunks twice to the whole fleet.
                plan.waiting.discard(request.device_id)
                return
            count = plan.release.manifest.chunk_count
            plan.pending.update(i for i in request.missing if 0 <= i < count)

    def _on_status(self, msg: Incoming) -> None:
        before = [r.outcome for r in self.report.devices.values()]
        self._apply_status(msg)
        after = [r.outcome for r in self.report.devices.values()]
        if after != before and self.on_progress is not None:
            self.on_progress(self.report)

    def _apply_status(self, msg: Incoming) -> None:
        status = status_of(msg)
        if status is None or status.device_id not in self.report.devices:
            return
        result = self.report.devices[status.device_id]
        plan = self.by_device.get(status.device_id)
        update = status.update
        outcome = update.outcome if update is not None and update.version == self.version else None
        # The device's answer to this manifest decides. Its serving version alone counts
        # only when it was not already at this number (another model may share it).
        serving_it = (
            status.model_version == str(self.version) and status.device_id not in self.preexisting
        )
        if msg.retained:
            # A retained status may predate this publish, so its ``update`` proves nothing;
            # but a device that did not serve this version when we started and serves it
            # now has installed it. This is how a commit made while the coordinator was
            # reconnecting (e.g. across a broker restart) is still seen.
            if serving_it and result.outcome is Outcome.TIMEOUT:
                result.outcome, result.reason = Outcome.COMMITTED, None
            return
        if outcome in _DONE or (serving_it and outcome is not UpdateOutcome.FAILED):
            result.outcome, result.reason = Outcome.COMMITTED, None
        elif update is None or update.version not in (0, self.version):
            return
        elif update.outcome is UpdateOutcome.DOWNLOADING and plan is not None:
            plan.waiting.discard(status.device_id)
        elif update.outcome is UpdateOutcome.FAILED:
            if update.reason == "delta_base_mismatch" and status.device_id not in self.retried:
                self.retried.add(status.device_id)  # §4: fall back to the full artifact, once
                record = self.pub.home.fleet()[status.device_id]
                full = self.pub.build(
                    self.model, self.version, self.precision, self.data, [record], None
                )
                self._send_plan(full)
                return
            result.outcome, result.reason = Outcome.FAILED, update.reason

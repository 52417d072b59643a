"""One publish in flight: send manifests and chunks, answer resend requests, collect outcomes.

Given signed :class:`~cloud.deployment.release.Plan` s, a transport and a clock (so it runs
in unit tests on an in-memory broker and in production on MQTT). Chunks are published once
per release (QoS 1) when every device has subscribed (it reported ``downloading`` for this
artifact) or a grace period has passed; ``ResendRequest`` messages are then answered until
every device has an outcome, or the timeout passes. Requests are coalesced
(``docs/protocol.md`` §7): a chunk goes out at most once per resend window, scaled to the
fleet's expected full-delivery time, because a republished chunk reaches every subscriber.

Outcomes (§9, rules O1-O3), from statuses attributed by their topic
(:mod:`cloud.deployment.evidence`):

* O1 committed — the status says the device serves the target artifact (model id, version,
  sha256), live or retained: that is the commit, nothing else is. For a plan of another
  purpose (§15) the step is complete when the status names the target as its shadow
  ``candidate`` (``shadow``) or carries a timing of the plan's artifact id in ``variants``
  (``trial``) — :meth:`~cloud.deployment.release.Target.reached`;
* O2 failed — a *live* status whose ``update`` is a failure for this plan's artifact id (or,
  for a manifest refused before it verified, version 0 or the target version with no
  artifact id). A retained ``update`` may predate this publish and decides nothing;
* O3 a device that reports ``delta_base_mismatch`` gets the full artifact, once.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

from cloud.deployment.evidence import Attribution, DeviceRequest, DeviceStatus
from cloud.deployment.link import CoordinatorTransport
from cloud.deployment.release import Plan
from cloud.deployment.report import Outcome, PublishReport
from shared.protocol import topics
from shared.protocol.codec import encode_chunk
from shared.protocol.messages import UpdateOutcome

__all__ = ["PublishSession", "resend_window"]

logger = logging.getLogger(__name__)

_RESEND_COOLDOWN_S = 0.5  # shortest resend window (§7)
_RESEND_WINDOW_MAX_S = 10.0  # longest resend window
# Bytes per second the broker is assumed to fan out to subscribers (a conservative figure
# for Mosquitto with TLS on one host); sets the resend window for a fleet (§7).
_FANOUT_BYTES_PER_S = 100e6
_SUBSCRIBE_GRACE_S = 2.0


def resend_window(devices: int, artifact_bytes: int) -> float:
    """Seconds between two sends of one chunk: the fleet's expected full-delivery time.

    Within it, a chunk sent is still reaching the fleet, so asking again for it would only
    send every subscriber another copy (§7). At least ``_RESEND_COOLDOWN_S``, at most
    ``_RESEND_WINDOW_MAX_S``.
    """
    expected = devices * artifact_bytes / _FANOUT_BYTES_PER_S
    return min(max(_RESEND_COOLDOWN_S, expected), _RESEND_WINDOW_MAX_S)


class PublishSession:
    """One publish in flight.

    Args:
        transport: The coordinator's broker connection.
        plans: Signed plans; every device of every plan must be in ``report``.
        report: Where outcomes go (devices already decided are left alone).
        attribution: Parses and attributes device messages (shared with discovery so
            its drop counters cover the whole publish).
        full_plan: Builds the full-artifact plan for one device (O3).
        on_progress: Called with the report whenever an outcome changes.
        clock: Monotonic seconds.
        observe: Called with every attributed status (e.g. to record its ``variants``).
    """

    def __init__(
        self,
        transport: CoordinatorTransport,
        plans: list[Plan],
        report: PublishReport,
        *,
        attribution: Attribution,
        full_plan: Callable[[str], Plan],
        on_progress: Callable[[PublishReport], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[DeviceStatus], None] | None = None,
    ) -> None:
        self.transport, self.report, self.attribution = transport, report, attribution
        self._observe = observe
        self._full_plan = full_plan
        self.on_progress = on_progress
        self._clock = clock
        self.plans: dict[str, Plan] = {}
        self.by_device: dict[str, Plan] = {}
        self.recent: dict[tuple[str, int], float] = {}  # last send of each chunk
        self.retried: set[str] = set()
        for plan in plans:
            self._send_plan(plan)

    def _send_plan(self, plan: Plan) -> None:
        m = plan.release.manifest
        self.plans[plan.artifact_id] = plan
        for device_id in plan.devices:
            self.by_device[device_id] = plan
            result = self.report.devices[device_id]
            result.encoding, result.base_version = str(m.encoding), plan.base_version
            result.precision, result.artifact_id = plan.target.precision, plan.artifact_id
            topic, payload = plan.manifests[device_id]
            self.transport.publish(topic, payload, retain=True)
        plan.waiting = set(plan.devices)
        plan.due = self._clock() + _SUBSCRIBE_GRACE_S
        self.report.mark("manifests_sent")
        logger.info("manifest v%d (%s) to %d device(s)", m.version, m.encoding, len(plan.devices))

    def _window(self, plan: Plan) -> float:
        m = plan.release.manifest
        return resend_window(len(plan.devices), m.chunk_count * m.chunk_size)

    def _send_chunks(self, plan: Plan) -> None:
        """The initial full send of ``plan``'s chunks."""
        now = self._clock()
        for chunk in plan.release.chunks:
            self.recent[(chunk.artifact_id, chunk.index)] = now
            topic = topics.artifact_chunk(chunk.artifact_id, chunk.index)
            self.transport.publish(topic, encode_chunk(chunk))
        plan.chunks_sent = True
        self.report.mark("chunks_sent")

    def _flush(self, plan: Plan) -> None:
        """Republish the requested chunks whose resend window has passed (§7).

        Requests for a chunk sent less than a window ago stay pending: that send is
        probably still reaching the asker, and one later send answers them all.
        """
        if not plan.pending:
            return
        now = self._clock()
        window = self._window(plan)
        chunks = plan.release.chunks
        for index in sorted(plan.pending):
            chunk = chunks[index]
            key = (chunk.artifact_id, index)
            if now - self.recent.get(key, -1e9) < window:
                continue
            plan.pending.discard(index)
            self.recent[key] = now
            self.transport.publish(
                topics.artifact_chunk(chunk.artifact_id, index), encode_chunk(chunk)
            )

    def _open(self) -> bool:
        return any(r.outcome is Outcome.TIMEOUT for r in self.report.devices.values())

    def step(self, wait_s: float = 0.05) -> None:
        """Send what is due, then handle at most one incoming message (waiting ``wait_s``)."""
        for plan in list(self.plans.values()):
            # Chunks are not retained: send them once every device has subscribed, or
            # after a grace period; stragglers ask for what they missed (§7).
            if not plan.chunks_sent and (not plan.waiting or self._clock() >= plan.due):
                self._send_chunks(plan)
            self._flush(plan)
        try:
            msg = self.transport.inbox.get(timeout=wait_s)
        except queue.Empty:
            return
        request = self.attribution.request(msg)
        if request is not None:
            self._on_request(request)
            return
        status = self.attribution.status(msg)
        if status is not None:
            if self._observe is not None:
                self._observe(status)
            self.on_status(status)

    def wait(self, timeout_s: float) -> None:
        """Run until every device has an outcome or ``timeout_s`` passes."""
        deadline = self._clock() + timeout_s
        while self._open() and self._clock() < deadline:
            self.step()

    def _on_request(self, req: DeviceRequest) -> None:
        plan = self.plans.get(req.request.artifact_id)
        if plan is None or req.device_id not in plan.devices:
            return
        if not plan.chunks_sent:
            # The first full send is still due and will reach this (subscribed) device:
            # answering now would send the chunks twice to the whole fleet.
            plan.waiting.discard(req.device_id)
            return
        count = plan.release.manifest.chunk_count
        plan.pending.update(i for i in req.request.missing if 0 <= i < count)

    def on_status(self, status: DeviceStatus) -> None:
        """Apply one attributed status (rules O1-O3); reports progress on a change."""
        result = self.report.devices.get(status.device_id)
        plan = self.by_device.get(status.device_id)
        if result is None or plan is None or result.outcome is not Outcome.TIMEOUT:
            return
        before = result.outcome
        self._apply(status, plan)
        if result.outcome is not before and self.on_progress is not None:
            self.on_progress(self.report)

    def _apply(self, status: DeviceStatus, plan: Plan) -> None:
        result = self.report.devices[status.device_id]
        message = status.status
        if plan.target.reached(message, plan.artifact_id):  # O1
            result.outcome, result.reason = Outcome.COMMITTED, None
            return
        update = message.update
        if status.retained or update is None:
            return  # O2: a retained outcome may be older than this publish
        about_this = update.artifact_id == plan.artifact_id or (
            update.artifact_id is None and update.version in (0, plan.target.version)
        )
        if not about_this:
            return
        if update.outcome is UpdateOutcome.DOWNLOADING:
            plan.waiting.discard(status.device_id)
            return
        if update.outcome is not UpdateOutcome.FAILED:
            return
        if update.reason == "delta_base_mismatch" and status.device_id not in self.retried:
            self.retried.add(status.device_id)  # O3: the full artifact, once
            plan.waiting.discard(status.device_id)
            self._send_plan(self._full_plan(status.device_id))
            return
        result.outcome, result.reason = Outcome.FAILED, update.reason

"""Publish an approved model version to devices over MQTT and report per-device outcomes.

Steps (rules cite ``docs/protocol.md``):

1. P1 only an approved TFLite artifact is ever sent: :meth:`Registry.deployable_artifact`
   raises ``NotDeployableError`` for a rejected one;
2. the devices' retained status says which version each runs; when the registry holds that
   version's artifact a delta against it is built (kept only when smaller, §4);
3. one release per delta base: content key wrapped for each device's X25519 key from its
   enrollment record, manifests signed per device by the release key (with its root
   certificate and the newest revocation list) and retained on ``devices/{id}/manifest``;
4. chunks published once per release (QoS 1) when the devices have subscribed, then
   ``ResendRequest`` answered until every device reports ``committed`` or ``failed``,
   or the timeout passes. Requests are coalesced (§7): a chunk goes out at most once per
   resend window, a window scaled to the fleet's expected full-delivery time, because a
   republished chunk reaches every subscriber of the shared chunk topic. A device that
   reports ``delta_base_mismatch`` gets the full artifact once.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from cloud.coordinator_mqtt import CoordinatorLink, Incoming
from cloud.keys import DeviceRecord, KeyHome
from cloud.registry import Registry
from shared.artifacts import ArtifactBuilder, BaseArtifact, Precision, Release, sign_manifest
from shared.artifacts.manifest import b64decode
from shared.crypto import PublicKey
from shared.errors import ConfigError, FedgeError, NotFoundError
from shared.protocol import topics
from shared.protocol.codec import decode_message_as
from shared.protocol.delivery import (
    ManifestMessage,
    ResendRequest,
    decode_delivery_as,
    encode_chunk,
    encode_delivery,
)
from shared.protocol.delivery_topics import all_device_requests, artifact_chunk, device_requests
from shared.protocol.messages import StatusMessage, UpdateOutcome

__all__ = ["DeviceResult", "Outcome", "PublishReport", "Publisher", "select_devices"]

logger = logging.getLogger(__name__)

_RESEND_COOLDOWN_S = 0.5  # shortest resend window (§7)
_RESEND_WINDOW_MAX_S = 10.0  # longest resend window
# Bytes per second the broker is assumed to fan out to subscribers (a conservative figure
# for Mosquitto with TLS on one host); sets the resend window for a fleet (§7).
_FANOUT_BYTES_PER_S = 100e6
_SUBSCRIBE_GRACE_S = 2.0


class Outcome(StrEnum):
    """Final per-device outcome of a publish."""

    COMMITTED = "committed"
    FAILED = "failed"
    TIMEOUT = "timeout"


@dataclass
class DeviceResult:
    """What happened on one device."""

    device_id: str
    outcome: Outcome = Outcome.TIMEOUT
    reason: str | None = None
    encoding: str | None = None
    base_version: int | None = None


@dataclass
class PublishReport:
    """Per-device results and totals of one publish."""

    version: str
    artifact_sha256: str
    devices: dict[str, DeviceResult]
    bytes_sent: int = 0
    seconds: float = 0.0
    # Seconds from the start of the publish at which each phase ended (first occurrence):
    # discovered, built, manifests_sent, chunks_sent; tells an operator where time went.
    phases: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic, repr=False)

    def mark(self, phase: str) -> None:
        """Record the first time ``phase`` was reached."""
        self.phases.setdefault(phase, round(time.monotonic() - self.started, 3))

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (no key material)."""
        return {
            "version": self.version,
            "artifact_sha256": self.artifact_sha256,
            "bytes_sent": self.bytes_sent,
            "seconds": round(self.seconds, 3),
            "phases": dict(self.phases),
            "devices": {d: vars(r) | {"outcome": str(r.outcome)} for d, r in self.devices.items()},
        }


def select_devices(home: KeyHome, device_ids: list[str], group: str | None) -> list[DeviceRecord]:
    """Enrollment records of the targets (``device_ids`` or every member of ``group``).

    Raises:
        ConfigError: neither or both given, or an empty group.
        NotFoundError: a device is not enrolled or is revoked.
    """
    if bool(device_ids) == (group is not None):
        raise ConfigError("give either --devices or --group")
    fleet = home.fleet()
    if group is not None:
        device_ids = sorted(d for d, r in fleet.items() if group in r.groups and not r.revoked)
        if not device_ids:
            raise ConfigError(f"group {group} has no enrolled devices")
    out = []
    for device_id in dict.fromkeys(device_ids):
        record = fleet.get(device_id)
        if record is None or record.revoked:
            raise NotFoundError(f"device {device_id} is not enrolled (or revoked)")
        out.append(record)
    return out


@dataclass
class _Plan:
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


class Publisher:
    """Sends one registry version to devices as the coordinator.

    Args:
        registry: The model registry.
        home: The coordinator key home (release key, fleet records, broker credentials).
        host, port: Broker TLS listener.
        now: Wall clock (manifest issue time).
        chunk_size: Chunk size for releases (≤ 64 KiB).
    """

    def __init__(
        self,
        registry: Registry,
        home: KeyHome,
        *,
        host: str,
        port: int,
        now: Callable[[], float] = time.time,
        chunk_size: int = 65536,
    ) -> None:
        self.registry = registry
        self.home = home
        self._host, self._port = host, port
        self.clock = now
        self._builder = ArtifactBuilder(chunk_size=chunk_size)

    def publish(
        self,
        ref: str,
        devices: list[DeviceRecord],
        *,
        timeout_s: float = 120.0,
        discover_s: float = 1.0,
    ) -> PublishReport:
        """Publish ``ref`` to ``devices`` and wait for their outcomes.

        Raises:
            NotDeployableError: the version has no approved TFLite artifact (P1).
            ConfigError: the broker cannot be reached.
        """
        art = self.registry.deployable_artifact(ref)  # P1: never a rejected artifact
        info = self.registry.get_version(ref)
        data = self.registry.read_artifact(art)
        report = PublishReport(
            info.ref, art.sha256, {d.device_id: DeviceResult(d.device_id) for d in devices}
        )
        link = CoordinatorLink(
            self.home, host=self._host, port=self._port, client_id=f"publisher-{uuid.uuid4().hex}"
        )
        link.connect([topics.all_devices(topics.DeviceLeaf.STATUS), all_device_requests()])
        try:
            running = self._discover(link, devices, discover_s)
            report.mark("discovered")
            # A device already above the target would refuse it as a rollback (the floor
            # is per device, across model lines): say so instead of sending it.
            newer = {d.device_id for d in devices if running.get(d.device_id, 0) > info.number}
            for device_id in newer:
                result = report.devices[device_id]
                result.outcome, result.reason = Outcome.FAILED, "older_than_installed"
            targets = [d for d in devices if d.device_id not in newer]
            plans = self._plan(info.model, info.number, art.precision, data, targets, running)
            report.mark("built")
            target = (info.model, info.number, art.precision)
            # Devices that already reported this version number before we sent anything:
            # their status alone proves nothing (it may be another model with the same
            # number), only their answer to this manifest does.
            preexisting = {d for d, v in running.items() if v == info.number}
            if targets:
                _Run(self, link, plans, report, target, data, preexisting).wait(timeout_s)
        finally:
            report.bytes_sent = link.bytes_sent
            report.seconds = time.monotonic() - report.started
            link.close()
        return report

    def _discover(
        self, link: CoordinatorLink, devices: list[DeviceRecord], wait_s: float
    ) -> dict[str, int]:
        """Installed version per device, from their retained status messages."""
        wanted = {d.device_id for d in devices}
        heard: set[str] = set()  # a device with no model yet has nothing to add to running
        running: dict[str, int] = {}
        deadline = time.monotonic() + wait_s
        while wanted - heard and time.monotonic() < deadline:
            try:
                msg = link.inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            status = _status(msg)
            if status is None or status.device_id not in wanted:
                continue
            heard.add(status.device_id)
            if (status.model_version or "").isdigit():
                running[status.device_id] = int(status.model_version or 0)
        return running

    def _plan(
        self,
        model: str,
        version: int,
        precision: str,
        data: bytes,
        devices: list[DeviceRecord],
        running: dict[str, int],
    ) -> list[_Plan]:
        groups: dict[int | None, list[DeviceRecord]] = {}
        for d in devices:
            n = running.get(d.device_id)
            groups.setdefault(n if n is not None and n < version else None, []).append(d)
        plans = []
        for base_version, members in groups.items():
            base = self._base(model, base_version, precision)
            plans.append(self.build(model, version, precision, data, members, base))
        return plans

    def _base(self, model: str, version: int | None, precision: str) -> BaseArtifact | None:
        if version is None:
            return None
        try:
            art = self.registry.deployable_artifact(f"{model}@{version}", precision)
            return BaseArtifact(version, self.registry.read_artifact(art))
        except FedgeError:  # the base is gone or was never deployable: send it full
            return None

    def build(
        self,
        model: str,
        version: int,
        precision: str,
        data: bytes,
        members: list[DeviceRecord],
        base: BaseArtifact | None,
    ) -> _Plan:
        """Build one release for ``members`` (a delta against ``base`` when smaller)."""
        release = self._builder.build(
            data,
            model_id=model,
            version=version,
            precision=Precision(precision),
            hardware_ids=sorted({m.hardware_id for m in members}),
            recipients={
                m.device_id: PublicKey.from_bytes(b64decode(m.box_public)) for m in members
            },
            rollout_id=f"publish-{version}",
            now=int(self.clock()),
            base=base,
        )
        delta = release.manifest.delta_base is not None
        return _Plan(
            release, [m.device_id for m in members], base.version if delta and base else None
        )


def _box(record: DeviceRecord) -> PublicKey:
    return PublicKey.from_bytes(b64decode(record.box_public))


def _status(msg: Incoming) -> StatusMessage | None:
    if not msg.topic.endswith("/status"):
        return None
    try:
        return decode_message_as(msg.payload, StatusMessage)
    except FedgeError:
        return None


_DONE = frozenset({UpdateOutcome.COMMITTED, UpdateOutcome.UP_TO_DATE})


class _Run:
    """One publish in flight: sends, answers resend requests, collects outcomes."""

    def __init__(
        self,
        pub: Publisher,
        link: CoordinatorLink,
        plans: list[_Plan],
        report: PublishReport,
        target: tuple[str, int, str],
        data: bytes,
        preexisting: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.pub, self.link, self.report, self.data = pub, link, report, data
        self.preexisting = set(preexisting)
        self.model, self.version, self.precision = target
        self.plans: dict[str, _Plan] = {}
        self.by_device: dict[str, _Plan] = {}
        self.recent: dict[tuple[str, int], float] = {}  # last send of each chunk
        self.retried: set[str] = set()
        for plan in plans:
            self._send_plan(plan)

    def _send_plan(self, plan: _Plan) -> None:
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

    def _window(self, plan: _Plan) -> float:
        m = plan.release.manifest
        return resend_window(len(plan.devices), m.chunk_count * m.chunk_size)

    def _send_chunks(self, plan: _Plan) -> None:
        """The initial full send of ``plan``'s chunks."""
        now = time.monotonic()
        for chunk in plan.release.chunks:
            self.recent[(chunk.artifact_id, chunk.index)] = now
            self.link.publish(artifact_chunk(chunk.artifact_id, chunk.index), encode_chunk(chunk))
        self.report.mark("chunks_sent")

    def _flush(self, plan: _Plan) -> None:
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
            elif not msg.retained:  # a retained status predates this publish
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
        status = _status(msg)
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

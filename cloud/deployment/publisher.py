"""Publish an approved model version to devices over MQTT and report per-device outcomes.

Steps (rules cite ``docs/protocol.md``):

1. P1 only an approved TFLite artifact is ever sent: :meth:`Registry.deployable_artifact`
   raises ``NotDeployableError`` for a rejected one;
2. the devices' retained status says which version each runs; when the registry holds that
   version's artifact a delta against it is built (kept only when smaller, §4);
3. one release per delta base: content key wrapped for each device's X25519 key from its
   enrollment record, manifests signed per device by the release key (with its root
   certificate and the newest revocation list) and retained on ``devices/{id}/manifest``;
4. the rollout (:mod:`cloud.rollout`) sends the chunks once the devices have subscribed,
   answers resend requests (coalesced, §7) and collects every device's outcome.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Callable

from cloud.coordinator_mqtt import CoordinatorLink
from cloud.keys import DeviceRecord, KeyHome
from cloud.publish_report import DeviceResult, Outcome, PublishReport
from cloud.registry import Registry
from cloud.rollout import Plan, Rollout, status_of
from shared.artifacts import ArtifactBuilder, BaseArtifact, Precision
from shared.artifacts.manifest import b64decode
from shared.crypto import PublicKey
from shared.errors import ConfigError, FedgeError, NotFoundError
from shared.protocol import topics
from shared.protocol.delivery_topics import all_device_requests

__all__ = ["DeviceResult", "Outcome", "PublishReport", "Publisher", "select_devices"]

logger = logging.getLogger(__name__)


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
        on_progress: Callable[[PublishReport], None] | None = None,
    ) -> PublishReport:
        """Publish ``ref`` to ``devices`` and wait for their outcomes.

        ``on_progress`` is called with the report whenever a device's outcome changes.

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
                rollout = Rollout(self, link, plans, report, target, data, preexisting, on_progress)
                rollout.wait(timeout_s)
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
            status = status_of(msg)
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
    ) -> list[Plan]:
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
    ) -> Plan:
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
        return Plan(
            release, [m.device_id for m in members], base.version if delta and base else None
        )

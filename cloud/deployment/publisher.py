"""Publish an approved model version to devices over MQTT and report per-device outcomes.

Steps (rules cite ``docs/protocol.md``):

1. P1 only an approved TFLite artifact is ever sent: :meth:`Registry.deployable_artifact`
   raises ``NotDeployableError`` when the version has none;
2. discovery: each target's retained status, attributed by its topic
   (:mod:`cloud.deployment.evidence`), says exactly what it serves, its floor and what its
   profile accepts;
3. per device, before anything is sent (rules Q1-Q4): Q1 a device already serving the
   target is committed; Q2 a target at or below the device's floor is refused
   (``replay`` / ``older_than_installed``); Q3 the artifact is the smallest approved one
   whose precision the device accepts and whose size fits it — none is
   ``precision_not_accepted`` / ``model_too_large``; Q4 a delta is built against the
   exact file (sha256) the device serves when the registry holds it, kept only if smaller;
4. one release per (precision, base), manifests signed per device and retained on
   ``devices/{id}/manifest``; the :class:`~cloud.deployment.session.PublishSession` sends
   the chunks, answers resend requests and collects every device's outcome.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

from cloud.deployment.evidence import Attribution, DeviceStatus
from cloud.deployment.link import CoordinatorLink, CoordinatorTransport
from cloud.deployment.release import Plan, Signer, Target, build_plan
from cloud.deployment.report import DeviceResult, Outcome, PublishReport
from cloud.deployment.session import PublishSession
from cloud.keys import DeviceRecord, KeyHome
from cloud.registry import ArtifactStatus, Registry
from cloud.registry.registry import ArtifactInfo, VersionInfo
from shared.artifacts import ArtifactBuilder, BaseArtifact
from shared.errors import ConfigError, FedgeError, NotFoundError
from shared.precision import precision_rank
from shared.protocol import topics

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


def _choose(
    approved: list[ArtifactInfo], heard: DeviceStatus | None
) -> tuple[ArtifactInfo | None, str | None]:
    """Q3: the preferred approved artifact the device accepts, or None and the reason."""
    status = heard.status if heard is not None else None
    fits = approved
    if status is not None and status.accepts is not None:
        fits = [a for a in fits if a.precision in {str(p) for p in status.accepts}]
        if not fits:
            return None, "precision_not_accepted"
    if status is not None and status.max_model_bytes is not None:
        limit = status.max_model_bytes
        fits = [a for a in fits if a.bytes <= limit]
        if not fits:
            return None, "model_too_large"
    return min(fits, key=lambda a: (precision_rank(a.precision), a.bytes)), None


def _below_floor(version: int, heard: DeviceStatus | None) -> str | None:
    """Q2: why the device would refuse ``version`` as a rollback, if it would."""
    if heard is None:
        return None
    status = heard.status
    floor = status.floor
    if floor is None and status.serving is not None:
        floor = status.serving.version
    if floor is None or version > floor:
        return None
    return "replay" if version == floor else "older_than_installed"


class Publisher:
    """Sends one registry version to devices as the coordinator.

    Args:
        registry: The model registry.
        home: The coordinator key home (release key, fleet records, broker credentials).
        host, port: Broker TLS listener.
        now: Wall clock (manifest issue time).
        chunk_size: Chunk size for releases (≤ 64 KiB).
        connect: Opens the coordinator's transport (default: MQTT to ``host:port``);
            tests pass an in-memory broker.
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
        connect: Callable[[list[str]], CoordinatorTransport] | None = None,
    ) -> None:
        self.registry = registry
        self.home = home
        self._host, self._port = host, port
        self.clock = now
        self._builder = ArtifactBuilder(chunk_size=chunk_size)
        self._connect = connect or self._connect_mqtt

    def _connect_mqtt(self, subscriptions: list[str]) -> CoordinatorTransport:
        link = CoordinatorLink(self.home, host=self._host, port=self._port)
        link.connect(subscriptions)
        return link

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
        default = self.registry.deployable_artifact(ref)  # P1: never a rejected artifact
        info = self.registry.get_version(ref)
        approved = [
            a
            for a in info.artifacts
            if a.format == "tflite" and a.status == ArtifactStatus.APPROVED
        ]
        report = PublishReport(
            info.ref, default.sha256, {d.device_id: DeviceResult(d.device_id) for d in devices}
        )
        attribution = Attribution()
        transport = self._connect(
            [
                topics.all_devices(topics.DeviceLeaf.STATUS),
                topics.all_devices(topics.DeviceLeaf.REQUESTS),
            ]
        )
        try:
            heard = self._discover(transport, attribution, devices, discover_s)
            report.mark("discovered")
            plans = self._plans(info, approved, devices, heard, report)
            report.mark("built")
            if plans:
                records = {d.device_id: d for d in devices}
                session = PublishSession(
                    transport,
                    plans,
                    report,
                    attribution=attribution,
                    full_plan=lambda device_id: self._full_plan(
                        info, report.devices[device_id], records[device_id]
                    ),
                    on_progress=on_progress,
                )
                session.wait(timeout_s)
        finally:
            report.bytes_sent = transport.bytes_sent
            report.seconds = time.monotonic() - report.started
            report.dropped = dict(attribution.dropped)
            close = getattr(transport, "close", None)
            if close is not None:
                close()
        return report

    def _discover(
        self,
        transport: CoordinatorTransport,
        attribution: Attribution,
        devices: list[DeviceRecord],
        wait_s: float,
    ) -> dict[str, DeviceStatus]:
        """Each target's newest status (retained or live), attributed by its topic."""
        wanted = {d.device_id for d in devices}
        heard: dict[str, DeviceStatus] = {}
        deadline = time.monotonic() + wait_s
        while wanted - heard.keys() and time.monotonic() < deadline:
            try:
                msg = transport.inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            status = attribution.status(msg)
            if status is not None and status.device_id in wanted:
                heard[status.device_id] = status
        return heard

    def _plans(
        self,
        info: VersionInfo,
        approved: list[ArtifactInfo],
        devices: list[DeviceRecord],
        heard: dict[str, DeviceStatus],
        report: PublishReport,
    ) -> list[Plan]:
        """Q1-Q4 per device, then one plan per (artifact, delta base)."""
        groups: dict[tuple[str, str | None], list[DeviceRecord]] = {}
        chosen: dict[str, ArtifactInfo] = {}
        bases: dict[str | None, BaseArtifact | None] = {None: None}
        for record in devices:
            result = report.devices[record.device_id]
            status = heard.get(record.device_id)
            artifact, refusal = _choose(approved, status)  # Q3
            if artifact is None:
                result.outcome, result.reason = Outcome.FAILED, refusal
                logger.warning("%s: not sent (%s)", record.device_id, refusal)
                continue
            result.precision = artifact.precision
            target = Target(info.model, info.number, artifact.precision, artifact.sha256)
            serving = status.status.serving if status is not None else None
            if target.served_by(serving):  # Q1
                result.outcome = Outcome.COMMITTED
                continue
            refusal = _below_floor(info.number, status)  # Q2
            if refusal is not None:
                result.outcome, result.reason = Outcome.FAILED, refusal
                continue
            base_sha = None
            if serving is not None and serving.model_id == info.model:  # Q4
                base_sha = serving.sha256
                if base_sha not in bases:
                    bases[base_sha] = self._base(info.model, serving.version, base_sha)
                if bases[base_sha] is None:
                    base_sha = None
            chosen[artifact.sha256] = artifact
            groups.setdefault((artifact.sha256, base_sha), []).append(record)
        signer = self._signer()
        plans = []
        for (sha, base_sha), members in groups.items():
            artifact = chosen[sha]
            target = Target(info.model, info.number, artifact.precision, artifact.sha256)
            data = self.registry.read_artifact(artifact)
            plans.append(
                build_plan(
                    self._builder,
                    data,
                    target,
                    members,
                    bases[base_sha],
                    signer=signer,
                    now=self.clock(),
                )
            )
        return plans

    def _full_plan(self, info: VersionInfo, result: DeviceResult, record: DeviceRecord) -> Plan:
        """O3: the full artifact for one device whose delta base did not match."""
        artifact = next(
            a
            for a in info.artifacts
            if a.format == "tflite"
            and a.precision == result.precision
            and a.status == ArtifactStatus.APPROVED
        )
        target = Target(info.model, info.number, artifact.precision, artifact.sha256)
        data = self.registry.read_artifact(artifact)
        return build_plan(
            self._builder, data, target, [record], None, signer=self._signer(), now=self.clock()
        )

    def _signer(self) -> Signer:
        key, certificate = self.home.release_signer()
        return Signer(key, certificate, self.home.revocations())

    def _base(self, model: str, version: int, sha256: str) -> BaseArtifact | None:
        """Q4: the exact file a device serves, if the registry holds it."""
        try:
            held = self.registry.get_version(f"{model}@{version}")
        except FedgeError:
            return None
        for art in held.artifacts:
            if art.format == "tflite" and art.sha256 == sha256:
                try:
                    return BaseArtifact(version, self.registry.read_artifact(art))
                except FedgeError:  # the blob is gone: send it full
                    return None
        return None

"""Publish an approved model version to devices over MQTT and report per-device outcomes.

Steps (rules cite ``docs/protocol.md``):

1. P1 only an approved TFLite artifact is ever sent: :meth:`Registry.deployable_artifact`
   raises ``NotDeployableError`` when the version has none;
2. discovery: each target's retained status, attributed by its topic
   (:mod:`cloud.deployment.evidence`), says exactly what it serves, its floor and what its
   profile accepts;
3. per device, before anything is sent (rules Q1-Q4): Q1 a device already serving an
   approved variant of the version (for ``shadow``: holding it as its candidate) is done;
   Q2 a target at or below the device's floor is refused (``replay`` /
   ``older_than_installed``); Q3 the variant is chosen by
   :mod:`cloud.deployment.variants` (§15: excluded variants are never sent; a profile pin
   wins; else the fastest measured on the device's hardware class; else the static
   preference) — when the class has not measured this version's eligible variants, they
   are first sent as ``trial`` manifests to a bounded sample of the class
   (:mod:`cloud.deployment.trials`) and the choice made from the timings; Q4 a delta is
   built against the exact file (sha256) the device serves when the registry holds it,
   kept only if smaller;
4. one release per (precision, base), manifests signed per device and retained on
   ``devices/{id}/manifest``; the :class:`~cloud.deployment.session.PublishSession` sends
   the chunks, answers resend requests and collects every device's outcome.

Every status seen (discovery, trials, the publish) that carries ``variants`` is recorded in
the fleet database (:mod:`cloud.fleet.store_variants`) under the hardware class of the
device's enrollment record, so later publishes choose from measurements.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

from cloud.deployment.evidence import Attribution, DeviceStatus
from cloud.deployment.link import CoordinatorLink, CoordinatorTransport
from cloud.deployment.measured import Measurements, choice_for, limits, trial_outcomes
from cloud.deployment.release import Plan, Signer, Target, build_plan
from cloud.deployment.report import DeviceResult, Outcome, PublishReport
from cloud.deployment.session import PublishSession
from cloud.deployment.trials import TrialResult, run_trials
from cloud.deployment.variants import Variant, needs_trial, sample
from cloud.fleet.store import FleetStore
from cloud.keys import DeviceRecord, KeyHome
from cloud.registry import ArtifactStatus, Registry
from cloud.registry.registry import ArtifactInfo, VersionInfo
from shared.artifacts import ArtifactBuilder, BaseArtifact, Purpose
from shared.errors import ConfigError, FedgeError, NotFoundError
from shared.protocol import topics

__all__ = [
    "DEFAULT_TRIAL_SAMPLE",
    "DeviceResult",
    "Outcome",
    "PublishReport",
    "Publisher",
    "select_devices",
]

logger = logging.getLogger(__name__)

#: Devices per hardware class that time the unmeasured variants (the rest wait for them).
DEFAULT_TRIAL_SAMPLE = 3
#: Longest wait for one round of trials (one variant per device), seconds.
DEFAULT_TRIAL_TIMEOUT_S = 30.0


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
        fleet: Where variant measurements are kept (default: the registry's database).
        trial_sample: Devices per hardware class that time unmeasured variants (§15).
        trial_timeout_s: Longest wait for one round of trials.
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
        fleet: FleetStore | None = None,
        trial_sample: int = DEFAULT_TRIAL_SAMPLE,
        trial_timeout_s: float = DEFAULT_TRIAL_TIMEOUT_S,
    ) -> None:
        self.registry = registry
        self.home = home
        self._host, self._port = host, port
        self.clock = now
        self._builder = ArtifactBuilder(chunk_size=chunk_size)
        self._connect = connect or self._connect_mqtt
        self._fleet = fleet
        self.trial_sample = trial_sample
        self.trial_timeout_s = trial_timeout_s
        self._records: dict[str, DeviceRecord] = {}
        self._book = Measurements(lambda: self.fleet, self._records, self.clock)

    @property
    def fleet(self) -> FleetStore:
        """The fleet store holding variant measurements (opened on first use)."""
        if self._fleet is None:
            self._fleet = FleetStore.from_registry(self.registry)
        return self._fleet

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
        purpose: Purpose | str = Purpose.INSTALL,
    ) -> PublishReport:
        """Publish ``ref`` to ``devices`` for ``purpose`` and wait for their outcomes.

        ``purpose`` (§15): ``install`` (default) — a device is ``committed`` when it serves
        its variant; ``shadow`` — when it holds it as its shadow candidate (a later
        ``install`` of the same version is installed from that copy); ``trial`` — every
        device times every eligible variant, ``committed`` when all timings are in.
        ``on_progress`` is called with the report whenever a device's outcome changes.

        Raises:
            NotDeployableError: the version has no approved TFLite artifact (P1).
            ConfigError: the broker cannot be reached, or ``purpose`` is unknown.
        """
        try:
            purpose = Purpose(purpose)
        except ValueError as exc:
            raise ConfigError(f"unknown purpose {purpose!r}", code="invalid_argument") from exc
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
        report.purpose = str(purpose)
        self._records.clear()
        self._records.update({d.device_id: d for d in devices})
        self._book = Measurements(lambda: self.fleet, self._records, self.clock)
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
            trials = self._trials(transport, attribution, info, approved, heard, purpose)
            report.trials = {d: trials.summary(d) for d in trials.devices}
            if purpose is Purpose.TRIAL:
                trial_outcomes(report, trials)
            else:
                plans = self._plans(info, approved, devices, heard, report, trials, purpose)
                report.mark("built")
                if plans:
                    session = PublishSession(
                        transport,
                        plans,
                        report,
                        attribution=attribution,
                        full_plan=lambda device_id: self._full_plan(
                            info, report.devices[device_id], self._records[device_id], purpose
                        ),
                        on_progress=on_progress,
                        observe=self._book.record,
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
                self._book.record(status)
        return heard

    def _trials(
        self,
        transport: CoordinatorTransport,
        attribution: Attribution,
        info: VersionInfo,
        approved: list[ArtifactInfo],
        heard: dict[str, DeviceStatus],
        purpose: Purpose,
    ) -> TrialResult:
        """C5: time the variants a class has not measured, on a sample of the class."""
        variants = [Variant(a.precision, a.sha256, a.bytes) for a in approved]
        classes: dict[str, list[str]] = {}
        queue_: dict[str, list[Variant]] = {}
        for device_id, record in self._records.items():
            status = heard.get(device_id)
            if _below_floor(info.number, status) is not None or self._done(
                info, approved, status, purpose
            ):
                continue  # Q1/Q2: it will not install this version anyway
            medians = (
                {}
                if purpose is Purpose.TRIAL
                else self._book.medians(record.hardware_id, info.model, info.number)
            )
            wanted = needs_trial(variants, limits(status), medians)
            if wanted:
                queue_[device_id] = wanted
                classes.setdefault(record.hardware_id, []).append(device_id)
        if purpose is not Purpose.TRIAL:  # an explicit trial asks every device
            chosen = {d for ids in classes.values() for d in sample(ids, self.trial_sample)}
            queue_ = {d: v for d, v in queue_.items() if d in chosen}
        if not queue_:
            return TrialResult()
        data = {a.sha256: a for a in approved}
        signer = self._signer()

        def make_plan(variant: Variant, members: list[str]) -> Plan:
            target = Target(
                info.model, info.number, variant.precision, variant.sha256, Purpose.TRIAL
            )
            blob = self.registry.read_artifact(data[variant.sha256])
            plan = build_plan(
                self._builder,
                blob,
                target,
                [self._records[d] for d in members],
                None,
                signer=signer,
                now=self.clock(),
            )
            self._book.sizes[plan.artifact_id] = variant.size
            return plan

        logger.info("trials of %s on %d device(s)", info.ref, len(queue_))
        return run_trials(
            transport,
            attribution,
            queue_,
            make_plan=make_plan,
            timeout_s=self.trial_timeout_s,
            observe=self._book.record,
        )

    # --- choice and plans --------------------------------------------------------------

    @staticmethod
    def _done(
        info: VersionInfo,
        approved: list[ArtifactInfo],
        heard: DeviceStatus | None,
        purpose: Purpose,
    ) -> ArtifactInfo | None:
        """Q1: the approved variant the device already serves (or holds, for ``shadow``)."""
        if heard is None:
            return None
        for a in approved:
            target = Target(info.model, info.number, a.precision, a.sha256, purpose)
            if purpose is not Purpose.TRIAL and target.reached(heard.status, None):
                return a
        return None

    def _plans(
        self,
        info: VersionInfo,
        approved: list[ArtifactInfo],
        devices: list[DeviceRecord],
        heard: dict[str, DeviceStatus],
        report: PublishReport,
        trials: TrialResult,
        purpose: Purpose,
    ) -> list[Plan]:
        """Q1-Q4 per device, then one plan per (artifact, delta base)."""
        groups: dict[tuple[str, str | None], list[DeviceRecord]] = {}
        by_sha = {a.sha256: a for a in approved}
        variants = [Variant(a.precision, a.sha256, a.bytes) for a in approved]
        bases: dict[str | None, BaseArtifact | None] = {None: None}
        for record in devices:
            result = report.devices[record.device_id]
            status = heard.get(record.device_id)
            done = self._done(info, approved, status, purpose)
            if done is not None:  # Q1
                result.outcome, result.precision = Outcome.COMMITTED, done.precision
                continue
            medians = self._book.medians(record.hardware_id, info.model, info.number)
            choice = choice_for(variants, record, self._records, status, trials, medians)  # Q3
            result.choice = choice.to_dict()
            if choice.variant is None:
                result.outcome, result.reason = Outcome.FAILED, choice.reason
                logger.warning("%s: not sent (%s)", record.device_id, choice.reason)
                continue
            artifact = by_sha[choice.variant.sha256]
            result.precision = artifact.precision
            refusal = _below_floor(info.number, status)  # Q2
            if refusal is not None:
                result.outcome, result.reason = Outcome.FAILED, refusal
                continue
            serving = status.status.serving if status is not None else None
            base_sha = None
            if serving is not None and serving.model_id == info.model:  # Q4
                base_sha = serving.sha256
                if base_sha not in bases:
                    bases[base_sha] = self._base(info.model, serving.version, base_sha)
                if bases[base_sha] is None:
                    base_sha = None
            groups.setdefault((artifact.sha256, base_sha), []).append(record)
        signer = self._signer()
        plans = []
        for (sha, base_sha), members in groups.items():
            artifact = by_sha[sha]
            target = Target(info.model, info.number, artifact.precision, artifact.sha256, purpose)
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

    def _full_plan(
        self, info: VersionInfo, result: DeviceResult, record: DeviceRecord, purpose: Purpose
    ) -> Plan:
        """O3: the full artifact for one device whose delta base did not match."""
        artifact = next(
            a
            for a in info.artifacts
            if a.format == "tflite"
            and a.precision == result.precision
            and a.status == ArtifactStatus.APPROVED
        )
        target = Target(info.model, info.number, artifact.precision, artifact.sha256, purpose)
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

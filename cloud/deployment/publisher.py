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

This module orchestrates the phases; each lives beside its peers: discovery and Q1/Q2 in
:mod:`cloud.deployment.discovery`, the trials in :mod:`cloud.deployment.trials`, Q3/Q4 and
the signed plans in :mod:`cloud.deployment.planning`, the measurements in
:mod:`cloud.deployment.measured`, the publish in flight in :mod:`cloud.deployment.session`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cloud.deployment.discovery import discover
from cloud.deployment.evidence import Attribution, DeviceStatus
from cloud.deployment.link import CoordinatorLink, CoordinatorTransport
from cloud.deployment.measured import Measurements, trial_outcomes, trial_queue
from cloud.deployment.planning import Planner
from cloud.deployment.report import DeviceResult, Outcome, PublishReport
from cloud.deployment.session import PublishSession
from cloud.deployment.trials import TrialResult, run_trials
from cloud.fleet.store import FleetStore
from cloud.keys import DeviceRecord, KeyHome
from cloud.registry import ArtifactStatus, Registry
from cloud.registry.registry import ArtifactInfo, VersionInfo
from shared.artifacts import ArtifactBuilder, Purpose
from shared.errors import ConfigError, NotFoundError
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
        self._planner = self._new_planner()

    def _new_planner(self) -> Planner:
        return Planner(
            self.registry, self.home, self._builder, self.clock, self._records, self._book
        )

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
        planner = self._planner = self._new_planner()
        attribution = Attribution()
        transport = self._connect(
            [
                topics.all_devices(topics.DeviceLeaf.STATUS),
                topics.all_devices(topics.DeviceLeaf.REQUESTS),
            ]
        )
        try:
            heard = discover(transport, attribution, devices, discover_s, observe=self._book.record)
            report.mark("discovered")
            trials = self._trials(transport, attribution, info, approved, heard, purpose)
            report.trials = {d: trials.summary(d) for d in trials.devices}
            if purpose is Purpose.TRIAL:
                trial_outcomes(report, trials)
            else:
                plans = planner.plans(info, approved, devices, heard, report, trials, purpose)
                report.mark("built")
                if plans:
                    session = PublishSession(
                        transport,
                        plans,
                        report,
                        attribution=attribution,
                        full_plan=lambda device_id: planner.full_plan(
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
        queue_ = trial_queue(
            info,
            approved,
            heard,
            purpose,
            records=self._records,
            book=self._book,
            sample_size=self.trial_sample,
        )
        if not queue_:
            return TrialResult()
        make_plan = self._planner.trial_plan(info, approved)
        logger.info("trials of %s on %d device(s)", info.ref, len(queue_))
        return run_trials(
            transport,
            attribution,
            queue_,
            make_plan=make_plan,
            timeout_s=self.trial_timeout_s,
            observe=self._book.record,
        )

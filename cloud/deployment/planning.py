"""One publish's signed plans, built from the registry (``docs/protocol.md`` rules Q1-Q4, O3).

:class:`Planner` turns what discovery and the trials found into
:class:`~cloud.deployment.release.Plan` s: per device Q1 (already served: done), Q3 (the
variant, :func:`cloud.deployment.measured.choice_for`), Q2 (below the floor: refused) and
Q4 (a delta against the exact file the device serves, when the registry holds it), then
one plan per (artifact, delta base). It also builds the ``trial`` plans of the trial phase
and the full-artifact plan of a device whose delta base did not match (O3). Building is
:func:`cloud.deployment.release.build_plan`'s (pure); this module adds the registry reads
and the release key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from cloud.deployment.discovery import already_served, below_floor
from cloud.deployment.evidence import DeviceStatus
from cloud.deployment.measured import Measurements, choice_for
from cloud.deployment.release import Plan, Signer, Target, build_plan
from cloud.deployment.report import DeviceResult, Outcome, PublishReport
from cloud.deployment.trials import TrialResult
from cloud.deployment.variants import Variant
from cloud.keys import DeviceRecord, KeyHome
from cloud.registry import ArtifactStatus, Registry
from cloud.registry.registry import ArtifactInfo, VersionInfo
from shared.artifacts import ArtifactBuilder, BaseArtifact, Purpose
from shared.errors import FedgeError

__all__ = ["Planner"]

# The publisher's logger: what it logged before this module was split off, it still does.
logger = logging.getLogger("cloud.deployment.publisher")


class Planner:
    """Builds the signed plans of one publish.

    Args:
        registry: The model registry (artifact bytes, delta bases).
        home: The coordinator key home (release key, revocations).
        builder: Encodes releases (chunk size).
        clock: Wall clock (manifest issue time).
        records: The targets' enrollment records, by device id.
        book: The publish's variant measurements (medians read, trial sizes noted).
    """

    def __init__(
        self,
        registry: Registry,
        home: KeyHome,
        builder: ArtifactBuilder,
        clock: Callable[[], float],
        records: Mapping[str, DeviceRecord],
        book: Measurements,
    ) -> None:
        self.registry = registry
        self.home = home
        self._builder = builder
        self.clock = clock
        self._records = records
        self._book = book

    def trial_plan(
        self, info: VersionInfo, approved: Sequence[ArtifactInfo]
    ) -> Callable[[Variant, list[str]], Plan]:
        """The ``trial`` plan builder of the trial phase: one variant, some devices.

        The release key is read now, once for every plan of the phase.
        """
        data = {a.sha256: a for a in approved}
        signer = self.signer()

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

        return make_plan

    def plans(
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
            done = already_served(info, approved, status, purpose)
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
            refusal = below_floor(info.number, status)  # Q2
            if refusal is not None:
                result.outcome, result.reason = Outcome.FAILED, refusal
                continue
            serving = status.status.serving if status is not None else None
            base_sha = None
            if serving is not None and serving.model_id == info.model:  # Q4
                base_sha = serving.sha256
                if base_sha not in bases:
                    bases[base_sha] = self.base(info.model, serving.version, base_sha)
                if bases[base_sha] is None:
                    base_sha = None
            groups.setdefault((artifact.sha256, base_sha), []).append(record)
        signer = self.signer()
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

    def full_plan(
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
            self._builder, data, target, [record], None, signer=self.signer(), now=self.clock()
        )

    def signer(self) -> Signer:
        """The release key, its certificate and the newest revocation list (read now)."""
        key, certificate = self.home.release_signer()
        return Signer(key, certificate, self.home.revocations())

    def base(self, model: str, version: int, sha256: str) -> BaseArtifact | None:
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

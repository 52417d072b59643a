"""Rollout policy: who gets a version, in which cohorts, and which field evidence gates it.

A :class:`RolloutPolicy` is plain data (pydantic, ``extra="forbid"``): the API takes it as
JSON, ``fedge cloud rollout create --policy-file`` reads it from TOML or YAML
(:func:`load_policies`: one policy, or a ``[policies.NAME]`` table of named ones), and
named policies are stored in the database (``FleetStore.save_rollout_policy``), where a
federation run that ends in a rollout finds them.

Cohorts are cumulative: ``[{"count": 1}, {"percent": 25}, {"percent": 100}]`` is a canary
of one device, then up to 25 % of the fleet, then everyone. The last cohort always takes
whatever is left, so every targeted device is in exactly one cohort.
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import ConfigError

__all__ = [
    "CohortSpec",
    "FieldGate",
    "Gates",
    "InstallGate",
    "MissingEvidence",
    "OfflinePolicy",
    "ResolvedCohort",
    "RolloutPolicy",
    "ShadowGate",
    "TargetSpec",
    "load_policies",
    "parse_policy",
]

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(ge=0.0, le=7 * 86400.0)]
Factor = Annotated[float, Field(gt=0.0, le=1000.0)]
Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class OfflinePolicy(StrEnum):
    """How a device that did not answer within its timeout counts."""

    FAIL = "fail"  # a failure: it counts toward the failure threshold
    SKIP = "skip"  # skipped: left out of the rates; it gets the version when it returns


class MissingEvidence(StrEnum):
    """What a field gate decides when the bake ends without enough samples."""

    FAIL = "fail"  # no evidence is no promotion (the safe default)
    PASS = "pass"  # a fleet without traffic: install success alone decides


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetSpec(_Model):
    """Which devices a rollout targets: the union of groups, tags and explicit devices."""

    groups: list[Label] = Field(default_factory=list, max_length=100)
    tags: list[Label] = Field(default_factory=list, max_length=100)
    devices: list[Label] = Field(default_factory=list, max_length=100_000)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not (self.groups or self.tags or self.devices):
            raise ValueError("a target needs groups, tags or devices")
        return self


class CohortSpec(_Model):
    """One cohort: ``count`` devices, or up to ``percent`` of the fleet (cumulative).

    The optional fields override the policy's defaults for this cohort.
    """

    count: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    percent: Annotated[float, Field(gt=0.0, le=100.0)] | None = None
    success_threshold: Fraction | None = None
    failure_threshold: Fraction | None = None
    bake_s: Seconds | None = None
    device_timeout_s: Annotated[float, Field(gt=0.0, le=86400.0)] | None = None

    @model_validator(mode="after")
    def _one_size(self) -> Self:
        if (self.count is None) == (self.percent is None):
            raise ValueError("a cohort needs exactly one of count and percent")
        return self


class InstallGate(_Model):
    """Install + probation outcomes of a cohort.

    ``success_threshold``: the fraction of the cohort (skipped devices left out) that must
    commit to advance. ``failure_threshold``: the fraction that failed (refused, reverted in
    probation, or timed out under ``offline=fail``) at or above which the rollout aborts.
    """

    success_threshold: Fraction = 1.0
    failure_threshold: Fraction = 0.2


class ShadowGate(_Model):
    """The candidate run in shadow beside the serving model, on the same sampled requests.

    ``min_agreement`` applies to classifiers (top-1 match rate), ``max_mean_abs_diff`` to
    regressors (unset: not gated). ``max_error_rate`` counts errors and timeouts of the
    candidate over its attempts. ``bake_s``: how long the cohort runs the shadow at least.
    """

    min_agreement: Fraction = 0.95
    max_mean_abs_diff: Annotated[float, Field(ge=0.0)] | None = None
    max_latency_factor: Factor = 1.5
    max_error_rate: Fraction = 0.01
    min_samples: Annotated[int, Field(ge=1)] = 50
    bake_s: Seconds = 60.0


class FieldGate(_Model):
    """After install: the cohort's telemetry against the same devices' windows before.

    ``error_margin``: the error rate may grow by at most this much (absolute).
    ``max_latency_factor``: p95 latency may grow by at most this factor.
    ``baseline_s``: how far before the rollout started the "before" windows reach.
    """

    error_margin: Fraction = 0.01
    max_latency_factor: Factor = 1.5
    min_requests: Annotated[int, Field(ge=1)] = 50
    baseline_s: Annotated[float, Field(gt=0.0, le=30 * 86400.0)] = 3600.0


class Gates(_Model):
    """Which gates run (None: that gate is off; install outcomes are always gated)."""

    shadow: ShadowGate | None = None
    install: InstallGate = Field(default_factory=InstallGate)
    field: FieldGate | None = Field(default_factory=FieldGate)


class ResolvedCohort(_Model):
    """A cohort's settings once the policy's defaults are applied."""

    index: int
    success_threshold: float
    failure_threshold: float
    bake_s: float
    device_timeout_s: float


class RolloutPolicy(_Model):
    """How a version reaches a fleet.

    Attributes:
        target: Which devices.
        cohorts: Cumulative cohorts; the first is the canary, the last takes the rest.
        bake_s: Default time a cohort bakes after install before its field gate decides.
        device_timeout_s: Default time a device has to commit (or hold a shadow copy).
        max_concurrent_downloads: Devices sent a manifest at once within a cohort.
        manual_approval: Wait for ``approve`` before every cohort after the canary.
        gates: Which evidence gates run, with their thresholds.
        offline: How a device that timed out counts.
        missing_evidence: What a field gate decides when the bake ends without samples.
        evidence_timeout_s: How long past the bake a gate waits for enough samples.
    """

    target: TargetSpec
    cohorts: list[CohortSpec] = Field(
        default_factory=lambda: [
            CohortSpec(count=1),
            CohortSpec(percent=25.0),
            CohortSpec(percent=100.0),
        ],
        min_length=1,
        max_length=20,
    )
    bake_s: Seconds = 60.0
    device_timeout_s: Annotated[float, Field(gt=0.0, le=86400.0)] = 120.0
    max_concurrent_downloads: Annotated[int, Field(ge=1, le=100_000)] = 50
    manual_approval: bool = False
    gates: Gates = Field(default_factory=Gates)
    offline: OfflinePolicy = OfflinePolicy.FAIL
    missing_evidence: MissingEvidence = MissingEvidence.FAIL
    evidence_timeout_s: Seconds = 300.0

    def cohort(self, index: int) -> ResolvedCohort:
        """Cohort ``index`` with the policy's defaults filled in."""
        spec = self.cohorts[index]
        install = self.gates.install
        return ResolvedCohort(
            index=index,
            success_threshold=(
                install.success_threshold
                if spec.success_threshold is None
                else spec.success_threshold
            ),
            failure_threshold=(
                install.failure_threshold
                if spec.failure_threshold is None
                else spec.failure_threshold
            ),
            bake_s=self.bake_s if spec.bake_s is None else spec.bake_s,
            device_timeout_s=(
                self.device_timeout_s if spec.device_timeout_s is None else spec.device_timeout_s
            ),
        )


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "policy"
    return f"{where}: {first.get('msg', 'invalid')}"


def parse_policy(data: Any) -> RolloutPolicy:
    """A policy from plain data (``ConfigError`` code ``invalid_policy`` with the reason)."""
    try:
        return RolloutPolicy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid rollout policy: {_reason(exc)}", code="invalid_policy") from exc


def load_policies(path: Path) -> dict[str, RolloutPolicy]:
    """Policies from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file.

    A file with a ``policies`` table holds named policies (``[policies.canary-then-all]``);
    otherwise the whole file is one policy, named after the file's stem.

    Raises:
        ConfigError: unreadable file, bad syntax (code ``invalid_policy``), invalid policy.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(
                f"{path.name}: a policy file is .toml, .yaml or .yml", code="invalid_policy"
            )
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path.name}: not valid {path.suffix[1:]}: {str(exc).splitlines()[0]}",
            code="invalid_policy",
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: expected a table/mapping", code="invalid_policy")
    named = data.get("policies")
    if isinstance(named, dict):
        return {str(name): parse_policy(body) for name, body in named.items()}
    return {path.stem: parse_policy(data)}

"""Model version, deployment and federation-run models of the control API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud.api.schemas_base import VersionRefField, _Out
from cloud.federation import defaults
from cloud.fleet.records import DeploymentState, FederationRunState
from shared.identifiers import IdentifierField

# --- models -------------------------------------------------------------------------------


class ArtifactOut(BaseModel):
    """One artifact of a version."""

    format: str
    precision: str
    sha256: str
    bytes: int
    status: str
    reason: str | None
    metrics: dict[str, Any]
    url: str = Field(description="Download path (`GET /v1/artifacts/{sha256}`).")


class VersionOut(BaseModel):
    """A model version with its lineage and artifacts."""

    model: str
    number: int
    ref: str
    parent: str | None
    source: str
    source_ref: str | None
    metrics: dict[str, Any]
    created_at: datetime
    artifacts: list[ArtifactOut]


class VersionList(BaseModel):
    """Model versions, by model then number."""

    items: list[VersionOut]


# --- deployments --------------------------------------------------------------------------


class DeploymentIn(BaseModel):
    """Publish ``version`` to ``devices`` or to every member of ``group`` (one of the two)."""

    model_config = ConfigDict(extra="forbid")

    version: VersionRefField
    devices: list[IdentifierField] | None = Field(default=None, min_length=1, max_length=1000)
    group: IdentifierField | None = None

    @model_validator(mode="after")
    def _one_target(self) -> DeploymentIn:
        if (self.devices is None) == (self.group is None):
            raise ValueError("give exactly one of devices and group")
        return self


class DeviceOutcomeOut(_Out):
    """One device's outcome in a deployment."""

    device_id: str
    outcome: str = Field(description="committed | failed | timeout | pending")
    reason: str | None = None
    precision: str | None = None
    encoding: str | None = None
    variant: dict[str, Any] | None = Field(
        default=None,
        description="The variant chosen and why (protocol §15): precision, basis "
        "(pinned | measured | static | none), median_us, excluded, explain.",
    )


class DeploymentOut(_Out):
    """A publish job and its per-device progress."""

    deployment_id: str
    version_ref: str
    state: DeploymentState
    created_at: float
    created_by: str
    finished_at: float | None
    error: str | None
    devices: list[DeviceOutcomeOut]
    bytes_sent: int | None = None
    runner: str | None = Field(
        default=None, description="The serve process that runs the job (host:pid:random)."
    )
    heartbeat_at: float | None = Field(
        default=None,
        description="When that process last said the job is alive (Unix seconds); an open "
        "deployment whose heartbeat goes stale is failed as interrupted.",
    )


class DeploymentPage(BaseModel):
    """Deployments, newest first."""

    items: list[DeploymentOut]
    next_cursor: str | None


# --- federation ---------------------------------------------------------------------------


class FederationRunIn(BaseModel):
    """Start a federated run: the options of ``fedge cloud federate`` (same names, same
    defaults; ``fedge cloud federate --api URL`` sends exactly these).

    ``clients`` simulated devices take part (Simulation Engine), or, with
    ``engine: deployment``, the enrolled devices connect as SuperNodes; ``devices`` then
    names them (the run waits for that many; each must be enrolled and not revoked).
    """

    model_config = ConfigDict(extra="forbid")

    rollout_policy: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="When the run succeeds, roll its best round out under this named "
        "rollout policy (`PUT /v1/rollout-policies/{name}`); the rollout's `source` is "
        "`federation:<run_id>`.",
    )
    data: Literal["digits", "mnist-5k"] = Field(
        default="digits", description="Built-in data set (a server path is not accepted)."
    )
    clients: int | None = Field(
        default=None, ge=1, le=256, description="Devices per run (default 3, or len(devices))."
    )
    devices: list[IdentifierField] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="Deployment Engine only: the enrolled devices that take part.",
    )
    rounds: int = Field(default=3, ge=1, le=1000)
    strategy: Literal["fedavg", "fedprox", "fedadam", "trimmed-mean", "median"] = "fedavg"
    fraction: float = Field(default=1.0, gt=0, le=1, description="Share sampled per round.")
    min_clients: int | None = Field(default=None, ge=1, le=1000)
    round_timeout: float = Field(default=300.0, gt=0, le=86400)
    local_epochs: int = Field(default=defaults.LOCAL_EPOCHS, ge=1, le=100)
    lr: float = Field(default=defaults.LR, gt=0, le=10)
    lr_decay: float = Field(default=defaults.LR_DECAY, gt=0, le=1)
    batch_size: int = Field(default=defaults.BATCH_SIZE, ge=1, le=4096)
    proximal_mu: float = Field(default=defaults.PROXIMAL_MU, ge=0, le=100)
    update: Literal["fp32", "int8", "topk"] = Field(
        default="int8", description="Update compression (not used under SecAgg+)."
    )
    topk_fraction: float = Field(default=0.1, gt=0, le=1)
    alpha: float | None = Field(default=None, gt=0, le=1e6, description="Dirichlet label skew.")
    init: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@([0-9]{1,9}|latest))?$",
        description="Start from this registry version (MODEL@N).",
    )
    name: IdentifierField | None = Field(
        default=None, description="Registry model name of the rounds."
    )
    quantize: bool = Field(default=True, description="Quantize the best round at the end.")
    max_drop: float = Field(default=1.0, ge=0, le=100)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    secagg: bool | None = Field(
        default=None,
        description="Secure aggregation (SecAgg+); default on for fedavg, fedprox, fedadam.",
    )
    secagg_impl: Literal["fedge", "flower"] | None = Field(
        default=None,
        description="Which secure aggregation: `fedge` (full-strength PRG masks, packed "
        "uploads; protocol §17) or `flower` (Flower 1.41's SecAgg+). Default: fedge, "
        "Flower's for fedadam.",
    )
    secagg_timeout: float = Field(default=120.0, gt=0, le=86400)
    engine: Literal["simulation", "deployment"] = "simulation"

    @model_validator(mode="after")
    def _devices_need_the_deployment_engine(self) -> FederationRunIn:
        if self.devices is not None:
            if self.engine != "deployment":
                raise ValueError("devices take part on the deployment engine only")
            if len(set(self.devices)) != len(self.devices):
                raise ValueError("devices must be distinct")
            if self.clients is not None and self.clients != len(self.devices):
                raise ValueError("clients must equal the number of devices")
        return self


class FederationRoundOut(_Out):
    """One finished round of a run (None: not finite, e.g. a diverged model)."""

    round: int
    accuracy: float | None
    loss: float | None
    participants: int
    rejected: int
    failed: int
    bytes_up: int
    bytes_down: int
    seconds: float
    version: str | None = Field(description="The registry version the round produced.")


class FederationRunOut(_Out):
    """A federated run and its per-round metrics."""

    run_id: str
    name: str | None = Field(description="Registry model name of the rounds (once known).")
    state: FederationRunState = Field(
        description="pending | running | stopping | succeeded | failed | stopped"
    )
    plan: dict[str, Any] = Field(description="What was asked (the request, resolved).")
    created_at: float
    created_by: str
    started_at: float | None
    finished_at: float | None
    error: str | None
    best_version: str | None = Field(description="The most accurate round's version.")
    rounds: list[FederationRoundOut]


class FederationRunPage(BaseModel):
    """Federated runs, newest first."""

    items: list[FederationRunOut]
    next_cursor: str | None

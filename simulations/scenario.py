"""Simulation scenarios: a TOML file describing a fleet, its data, learning, rollout and faults.

Scenarios ship in ``simulations/scenarios/<name>.toml`` (``smart-home``, ``smart-city``) and
are validated into a frozen :class:`Scenario`; an unknown key or a bad value is a
:class:`~shared.errors.ConfigError` naming the field, never a silent default. Device kinds
are the real firmware profiles in ``firmware_configs/`` (their ``trains`` flag, network tag
and groups); the scenario adds what a profile cannot know — how fast a device of that
kind trains, how often it is online, how its link performs.

The ``[rollout.policy]`` table is a real :class:`cloud.rollout.policy.RolloutPolicy` (the
same schema ``fedge cloud rollout create --policy-file`` reads), so a policy tried here can
be used on the fleet as is.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud.rollout.policy import RolloutPolicy
from shared.errors import ConfigError
from shared.profiles import DeviceProfile, profile_from_toml

__all__ = [
    "SCENARIO_DIR",
    "Scenario",
    "available_scenarios",
    "load_profiles",
    "load_scenario",
]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
PROFILE_DIR = Path(__file__).resolve().parents[1] / "firmware_configs"

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataSection(_Strict):
    """Which data set and how it is split across the devices that train."""

    dataset: str = "digits"
    partitioner: Literal["iid", "dirichlet", "shard", "quantity"] = "dirichlet"
    alpha: Positive = 0.5
    shards_per_client: Annotated[int, Field(ge=1)] = 2


class LinkSection(_Strict):
    """One network technology: bandwidths in Mbit/s and a round-trip latency."""

    down_mbps: Positive
    up_mbps: Positive
    latency_ms: Annotated[float, Field(ge=0.0)] = 20.0


class ProfileBehaviour(_Strict):
    """What the scenario says about one device kind (a firmware profile).

    Attributes:
        share: Share of the fleet of this kind (shares are normalised).
        train_samples_per_s: Local SGD throughput (samples x epochs per second).
        availability: Share of the time the device is online (a duty cycle per device).
        dropout: Probability a device that started a round vanishes before replying.
        install_scale: Multiplier on the measured per-device install cost (slower CPUs).
        speed_spread: Sigma of the per-device log-normal slowdown (background load,
            thermal throttling, weak signal): the source of stragglers.
    """

    share: Positive
    train_samples_per_s: Positive = 50.0
    availability: Fraction = 0.9
    dropout: Fraction = 0.02
    install_scale: Positive = 1.0
    speed_spread: Annotated[float, Field(ge=0.0, le=3.0)] = 0.5


class FleetSection(_Strict):
    """The fleet: size, kinds (firmware profile name → behaviour) and links by network tag."""

    devices: Annotated[int, Field(ge=2, le=100_000)] = 100
    profiles: dict[str, ProfileBehaviour]
    links: dict[str, LinkSection]
    availability_period_s: Positive = 3600.0


class LearningSection(_Strict):
    """The federated rounds."""

    rounds: Annotated[int, Field(ge=1, le=1000)] = 5
    clients_per_round: Annotated[int, Field(ge=1)] = 10
    strategies: Annotated[tuple[str, ...], Field(min_length=1)] = ("fedavg",)
    deadline_s: Positive = 120.0
    #: Rounds start at least this far apart (a fleet trains in the background, e.g. one
    #: round every 15 minutes), so devices' availability changes between rounds.
    round_interval_s: Annotated[float, Field(ge=0.0)] = 0.0
    local_epochs: Annotated[int, Field(ge=1)] = 1
    lr: Positive = 0.05
    batch_size: Annotated[int, Field(ge=1)] = 16
    update_mode: Literal["fp32", "int8", "topk"] = "int8"
    min_clients: Annotated[int, Field(ge=1)] = 2


class RolloutSection(_Strict):
    """How each release reaches the fleet.

    Attributes:
        policy: A real :class:`cloud.rollout.policy.RolloutPolicy` (target, cumulative
            cohorts, thresholds, bake and timeouts, concurrency, offline rule).
        deploy_every: Roll out the global model every this many rounds (default: the
            last round only); the last round is always released.
        chunk_bytes: Artifact chunk size (the protocol keeps every payload < 128 KB).
        install_failure_rate: Chance an install fails on a device (the A/B updater rolls
            back); counts as a failure at the install gate.
        max_accuracy_drop: Simulation-only gate: a release whose server-side accuracy is
            more than this many points below the fleet's current model is not promoted
            past the canary (the field gate's stand-in; simulated devices have no traffic).
    """

    policy: RolloutPolicy
    deploy_every: Annotated[int, Field(ge=1)] | None = None
    chunk_bytes: Annotated[int, Field(ge=1024, le=131_072)] = 65_536
    install_failure_rate: Fraction = 0.01
    max_accuracy_drop: Annotated[float, Field(ge=0.0)] = 2.0


class OutageSection(_Strict):
    """A broker outage during rollouts: no delivery progresses in the window."""

    start_s: Annotated[float, Field(ge=0.0)]
    duration_s: Positive


class FaultSection(_Strict):
    """Injected faults.

    Attributes:
        canary_failure_release: 1-based release whose model fails on the canary cohort.
        broker_outage: Window (seconds after the first release) with the broker down.
        churn: Share of devices that leave the fleet during a rollout and never report.
    """

    canary_failure_release: Annotated[int, Field(ge=1)] | None = None
    broker_outage: OutageSection | None = None
    churn: Fraction = 0.0


class Scenario(_Strict):
    """A validated simulation scenario (see the module docstring)."""

    name: str
    description: str = ""
    seed: int = 0
    data: DataSection = DataSection()
    fleet: FleetSection
    learning: LearningSection = LearningSection()
    rollout: RolloutSection
    faults: FaultSection = FaultSection()

    def with_overrides(
        self, *, devices: int | None = None, rounds: int | None = None, **learning: Any
    ) -> Scenario:
        """A copy with the fleet size, round count or learning fields replaced."""
        fleet = (
            self.fleet if devices is None else self.fleet.model_copy(update={"devices": devices})
        )
        updates = {k: v for k, v in learning.items() if v is not None}
        if rounds is not None:
            updates["rounds"] = rounds
        try:
            checked = LearningSection.model_validate(self.learning.model_dump() | updates)
            return Scenario.model_validate(
                self.model_dump() | {"fleet": fleet.model_dump(), "learning": checked.model_dump()}
            )
        except ValidationError as exc:
            raise ConfigError(f"scenario {self.name}: {_errors(exc)}") from exc


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<scenario>'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


def available_scenarios() -> list[str]:
    """Names of the bundled scenarios."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str) -> Scenario:
    """Load a bundled scenario by name, or a scenario file by path.

    Raises:
        ConfigError: no such scenario, invalid TOML, a field that fails validation, or a
            profile name with no file in ``firmware_configs/``.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIO_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(available_scenarios())
        raise ConfigError(f"no scenario {name_or_path!r}; bundled: {known}")
    try:
        scenario = Scenario.model_validate(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"scenario {path.name}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"scenario {path.name}: {_errors(exc)}") from exc
    load_profiles(scenario)  # fail now on a profile that does not exist
    return scenario


def load_profiles(scenario: Scenario) -> dict[str, DeviceProfile]:
    """The firmware profiles the scenario's fleet is made of, by profile name.

    Raises:
        ConfigError: a profile the scenario names is missing, or its network tag has no
            link in ``[fleet.links]``.
    """
    by_name: dict[str, DeviceProfile] = {}
    for path in sorted(PROFILE_DIR.glob("*.toml")):
        profile = profile_from_toml(path.read_text(), source=path.name)
        by_name[profile.name] = profile
    chosen: dict[str, DeviceProfile] = {}
    for name in scenario.fleet.profiles:
        if name not in by_name:
            raise ConfigError(f"scenario {scenario.name}: no firmware profile {name!r}")
        network = by_name[name].tags.get("network", "")
        if network not in scenario.fleet.links:
            raise ConfigError(
                f"scenario {scenario.name}: profile {name} uses network {network!r}, "
                "which has no entry in [fleet.links]"
            )
        chosen[name] = by_name[name]
    return chosen

"""The simulated fleet: one :class:`SimDevice` per device, drawn from a scenario and profiles.

Every random draw comes from one seeded generator, so a scenario and seed always build the
same fleet. What each device gets:

* its kind — a real firmware profile (``trains``, network tag, groups), in the scenario's
  shares, assigned in contiguous blocks so the first kinds hold the low indices;
* a training speed — the kind's ``train_samples_per_s`` divided by a log-normal slowdown
  (background load, throttling): the stragglers of a round;
* its link — the bandwidths and latency of its profile's ``network`` tag;
* an availability trace — a duty cycle (the kind's ``availability``) with a random phase over
  ``availability_period_s``: online at simulated time ``t`` iff ``(t/period + phase) mod 1 <
  availability``. Devices come and go through the run instead of being drawn per round, so a
  device offline for a long stretch misses consecutive rounds, as real ones do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.profiles import DeviceProfile
from simulations.scenario import Scenario, load_profiles

__all__ = ["Fleet", "SimDevice", "build_fleet"]


@dataclass(frozen=True)
class SimDevice:
    """One simulated device.

    Attributes:
        index: Position in the fleet (0-based); the Flower node id is ``index + 1``.
        device_id: ``sim-00042``.
        profile: Firmware profile name.
        trains: Whether it takes part in federated rounds (its profile's ``trains``).
        partition_id: Its data partition (trainers only).
        groups: Rollout groups from its profile.
        train_samples_per_s: Its local SGD throughput after the slowdown draw.
        down_bps, up_bps: Link bandwidths in bytes per second.
        latency_s: One round trip.
        availability, phase, period_s: The duty-cycle availability trace.
        dropout: Chance of vanishing mid-round.
        install_scale: Multiplier on the measured install cost.
    """

    index: int
    device_id: str
    profile: str
    trains: bool
    partition_id: int | None
    groups: tuple[str, ...]
    train_samples_per_s: float
    down_bps: float
    up_bps: float
    latency_s: float
    availability: float
    phase: float
    period_s: float
    dropout: float
    install_scale: float

    @property
    def node_id(self) -> int:
        """The Flower node id of this device (never 0, which Flower reserves)."""
        return self.index + 1

    def online(self, t: float) -> bool:
        """Whether the device is reachable at simulated time ``t`` seconds."""
        return (t / self.period_s + self.phase) % 1.0 < self.availability

    def transfer_s(self, nbytes: int, *, up: bool) -> float:
        """Seconds to move ``nbytes`` over this device's link (plus one round trip)."""
        return self.latency_s + nbytes / (self.up_bps if up else self.down_bps)


@dataclass(frozen=True)
class Fleet:
    """The whole simulated fleet."""

    devices: tuple[SimDevice, ...]
    profiles: dict[str, DeviceProfile]

    @property
    def trainers(self) -> tuple[SimDevice, ...]:
        """Devices that take part in federated rounds, in partition order."""
        return tuple(d for d in self.devices if d.trains)

    def by_node(self, node_id: int) -> SimDevice:
        """The device behind a Flower node id."""
        return self.devices[node_id - 1]

    def counts(self) -> dict[str, int]:
        """Devices per profile."""
        out: dict[str, int] = {}
        for d in self.devices:
            out[d.profile] = out.get(d.profile, 0) + 1
        return out


def _kind_counts(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Split ``total`` by ``shares`` with largest-remainder rounding (sums to ``total``)."""
    norm = sum(shares.values())
    exact = {k: total * v / norm for k, v in shares.items()}
    counts = {k: int(v) for k, v in exact.items()}
    rest = total - sum(counts.values())
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[:rest]:
        counts[k] += 1
    return counts


def build_fleet(scenario: Scenario) -> Fleet:
    """Draw the scenario's fleet (deterministic for the scenario's seed)."""
    profiles = load_profiles(scenario)
    rng = np.random.default_rng(scenario.seed)
    counts = _kind_counts(
        scenario.fleet.devices, {k: v.share for k, v in scenario.fleet.profiles.items()}
    )
    devices: list[SimDevice] = []
    partition = 0
    for name, behaviour in scenario.fleet.profiles.items():
        profile = profiles[name]
        link = scenario.fleet.links[profile.tags["network"]]
        for _ in range(counts[name]):
            slowdown = float(rng.lognormal(0.0, behaviour.speed_spread))
            index = len(devices)
            devices.append(
                SimDevice(
                    index=index,
                    device_id=f"sim-{index:05d}",
                    profile=name,
                    trains=profile.trains,
                    partition_id=partition if profile.trains else None,
                    groups=profile.groups,
                    train_samples_per_s=behaviour.train_samples_per_s / slowdown,
                    down_bps=link.down_mbps * 1e6 / 8,
                    up_bps=link.up_mbps * 1e6 / 8,
                    latency_s=link.latency_ms / 1000,
                    availability=behaviour.availability,
                    phase=float(rng.random()),
                    period_s=scenario.fleet.availability_period_s,
                    dropout=behaviour.dropout,
                    install_scale=behaviour.install_scale,
                )
            )
            partition += int(profile.trains)
    return Fleet(tuple(devices), profiles)

"""The demo's running system: keys, broker, coordinator, enrolled agents (each a process).

Everything goes through the product's own entry points, as an operator would use them:
``fedge keys init``, ``fedge broker config`` / ``run``, ``fedge cloud serve``, one-time
enrollment tokens from ``POST /v1/devices/enrollment-tokens`` redeemed by
``fedge edge enroll``, and ``fedge edge run`` per device (with ``--superlink`` on the
profiles that train, so each runs its own SuperNode on its own data partition).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cloud.broker_process import wait_listening
from simulations.demo.control import ControlClient, wait_ready
from simulations.demo.procs import ProcessGroup
from simulations.fleet import DemoDevice, fedge, free_port, profile_value

__all__ = ["DEVICES", "SUPERLINK_PORT", "Stack", "demo_devices"]

ROOT = Path(__file__).resolve().parents[2]
#: (device id, profile): three profiles, three devices that train (SecAgg+ needs ≥ 3).
DEVICES = (
    ("hub-1", "smart_home_hub"),
    ("traffic-1", "city_traffic_node"),
    ("camera-1", "smart_camera"),
    ("hub-2", "smart_home_hub"),
    ("traffic-2", "city_traffic_node"),
    ("camera-2", "smart_camera"),
)
#: The Deployment Engine's SuperLink (Fleet, Control and Runtime APIs on one TLS port).
SUPERLINK_PORT = 9093


#: Telemetry period of the demo's devices: the rollout gates decide on telemetry windows,
#: and a field profile's 60 s would make each cohort wait minutes for its evidence.
DEMO_TELEMETRY_S = 10.0


def demo_profile(profile: str, directory: Path) -> Path:
    """``firmware_configs/<profile>.toml`` with the demo's telemetry period (a copy)."""
    text = (ROOT / "firmware_configs" / f"{profile}.toml").read_text()
    text = re.sub(
        r"(?m)^telemetry_interval_s\s*=.*$", f"telemetry_interval_s = {DEMO_TELEMETRY_S}", text
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{profile}.toml"
    path.write_text(text)
    return path


def demo_devices(count: int, home: Path) -> list[DemoDevice]:
    """The first ``count`` demo devices with their profiles and free HTTP ports."""
    out = []
    for device_id, profile in DEVICES[:count]:
        path = demo_profile(profile, home / "profiles")
        out.append(
            DemoDevice(
                device_id,
                path,
                profile_value(path, "hardware_id"),
                tuple(profile_value(path, "groups")),
                free_port(),
            )
        )
    return out


def trains(dev: DemoDevice) -> bool:
    """Whether the device's profile trains (runs a SuperNode)."""
    return bool(profile_value(dev.profile, "trains"))


@dataclass
class Stack:
    """The processes of the demo and how to reach them."""

    home: Path
    env: dict[str, str]
    devices: list[DemoDevice]
    procs: ProcessGroup
    broker_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    admin: ControlClient | None = None
    viewer_token: str = ""

    @property
    def api_url(self) -> str:
        """The coordinator's base URL (API and dashboard)."""
        return f"http://127.0.0.1:{self.api_port}"

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "simulations.cli", *args]

    def start_control_plane(self) -> None:
        """Keys, the TLS broker with ACLs, the coordinator (API + dashboard + ingestion)."""
        fedge("keys", "init", env=self.env)
        fedge("broker", "config", "--port", str(self.broker_port), env=self.env)
        broker = self.procs.start(
            "broker", self._cli("broker", "run", "--port", str(self.broker_port))
        )
        wait_listening(self.broker_port, timeout=20, proc=broker.proc)
        admin = fedge("cloud", "token", "create", "--role", "admin", "--name", "demo", env=self.env)
        viewer = fedge(
            "cloud", "token", "create", "--role", "viewer", "--name", "dashboard", env=self.env
        )
        self.viewer_token = str(viewer["token"])
        coordinator = self.procs.start(
            "coordinator",
            self._cli(
                "cloud",
                "serve",
                "--port",
                str(self.api_port),
                "--broker",
                f"127.0.0.1:{self.broker_port}",
            ),
        )
        wait_ready(self.api_url, timeout=90, alive=lambda: coordinator.proc.poll() is None)
        self.admin = ControlClient(self.api_url, str(admin["token"]))

    def enroll(self) -> list[dict[str, object]]:
        """A one-time token per device from the API; each device redeems its own."""
        assert self.admin is not None
        out = []
        for dev in self.devices:
            made = self.admin.post(
                "/v1/devices/enrollment-tokens",
                {
                    "device_id": dev.device_id,
                    "hardware_id": dev.hardware_id,
                    "profile": dev.profile.stem,
                    "groups": list(dev.groups),
                },
            )
            bundle = self.home / "devices" / dev.device_id / "bundle"
            result = fedge(
                "edge",
                "enroll",
                "--api",
                self.api_url,
                "--token",
                str(made["token"]),
                "--bundle",
                str(bundle),
                env=self.env,
            )
            out.append({"device": dev.device_id, "profile": dev.profile.stem, **result})
        return out

    def write_partitions(self, data: str, seed: int = 0) -> dict[str, int]:
        """Each training device's own shard of the training split (IID), as its train.npz."""
        from cloud.data import load_dataset
        from cloud.data.datasets import stratified_split
        from cloud.federation.partition import partition

        learners = [d for d in self.devices if trains(d)]
        split = stratified_split(load_dataset(data), seed=seed)
        sizes = {}
        for dev, idx in zip(
            learners, partition(split.train_y, len(learners), alpha=None, seed=seed), strict=True
        ):
            directory = self.home / "devices" / dev.device_id / "data"
            directory.mkdir(parents=True, exist_ok=True)
            np.savez(directory / "train.npz", x=split.train_x[idx], y=split.train_y[idx])
            sizes[dev.device_id] = len(idx)
        return sizes

    def start_agents(self) -> None:
        """``fedge edge run`` per device; the training profiles also run their SuperNode."""
        for dev in self.devices:
            state = self.home / "devices" / dev.device_id
            argv = self._cli(
                "edge",
                "run",
                "--profile",
                str(dev.profile),
                "--device-id",
                dev.device_id,
                "--broker",
                f"mqtts://127.0.0.1:{self.broker_port}",
                "--bundle",
                str(state / "bundle"),
                "--state-dir",
                str(state / "state"),
                "--http-port",
                str(dev.http_port),
                "--update-quiet",
                "1",
            )
            if trains(dev):
                argv += [
                    "--superlink",
                    f"127.0.0.1:{SUPERLINK_PORT}",
                    "--train-data",
                    str(state / "data"),
                    "--supernode-port",
                    str(free_port()),
                ]
            self.procs.start(f"agent-{dev.device_id}", argv)

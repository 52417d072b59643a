"""Measured variant choice on this machine, end to end (issue 11 item 2; protocol §15).

Real Mosquitto (TLS, passwords, ACLs from ``cloud.broker``), real in-process agents
(:class:`~edge.agent.Agent` with its updater, LiteRT predictor and ``time_variant``) and
the product's :class:`~cloud.deployment.publisher.Publisher`, on two models: the session's
default digits CNN quantized for real (every approved precision), and the 1x28x28 CNN of
the issue's measurement (float32 and int8). The two devices are enrolled as two hardware
classes, so each class's choice rests on its one device's own timings.

No wall-clock asserts: the test checks the *selection rule* against the timings each
device reported — the variant it serves is the one with its lowest median, so within
1.05× of the fastest variant it measured — whatever the numbers are on this machine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from cloud.broker import write_broker_config
from cloud.broker_process import start_broker, wait_listening
from cloud.deployment.publisher import Outcome, Publisher, select_devices
from cloud.fleet.store import FleetStore
from cloud.keys import KeyHome
from cloud.registry import ArtifactStatus, Registry, VersionSource
from cloud.registry.registry import NewArtifact, VersionInfo
from edge.agent import Agent, AgentConfig
from edge.inference import Predictor
from shared.profiles import profile_from_toml
from tests.helpers.models import BuiltModels
from tests.helpers.mosquitto import free_port

pytestmark = pytest.mark.slow

CLASSES = {"dev-here-1": "hw-here-1", "dev-here-2": "hw-here-2"}
PROFILE = """
name = "variant-e2e"
device_class = "hub"
hardware_id = "{hw}"
inference_threads = 1
ram_mb = 256
storage_mb = 64
max_model_bytes = 8_000_000
precisions = ["int8", "dynamic-int8", "float16", "float32"]
telemetry_interval_s = 30.0
"""


@dataclass
class Fleet:
    home: KeyHome
    port: int
    agents: dict[str, Agent] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, device_id: str, base: Path) -> Agent:
        profile = profile_from_toml(PROFILE.format(hw=CLASSES[device_id]))
        config = AgentConfig(
            device_id=device_id,
            broker_url=f"mqtts://127.0.0.1:{self.port}",
            profile=profile,
            state_dir=base / device_id,
            reconnect_max_s=2.0,
            update_quiet_s=1.0,
            trial_budget_s=0.3,  # lean: a bounded budget per variant
        ).with_bundle(self.home.device_dir(device_id))
        agent = Agent(config, predictor=Predictor(num_threads=1, profile=profile))
        thread = threading.Thread(target=agent.run, name=f"agent-{device_id}", daemon=True)
        thread.start()
        self.agents[device_id], self.threads = agent, [*self.threads, thread]
        return agent


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    home = KeyHome(tmp_path / "keys")
    home.init()
    for device_id, hw in CLASSES.items():
        home.enroll_device(device_id, hardware_id=hw)
    port = free_port()
    files = write_broker_config(home, tmp_path / "broker", port=port)
    proc = start_broker(files)
    wait_listening(port, proc=proc)
    world = Fleet(home, port)
    yield world
    for agent in world.agents.values():
        agent.request_stop()
    for thread in world.threads:
        thread.join(15)
    proc.terminate()
    proc.wait(10)


def _publish_and_check(
    fleet: Fleet, registry: Registry, version: VersionInfo, tmp_path: Path
) -> dict[str, dict[str, float]]:
    """Publish ``version`` to both agents; assert the rule on each device's own timings."""
    approved = {
        a.precision
        for a in version.artifacts
        if a.format == "tflite" and a.status == ArtifactStatus.APPROVED
    }
    assert len(approved) >= 2, "nothing to choose between"
    for device_id in CLASSES:
        fleet.start(device_id, tmp_path / "devices")
    store = FleetStore(create_engine(f"sqlite:///{tmp_path / 'measurements.db'}"))
    publisher = Publisher(
        registry,
        fleet.home,
        host="127.0.0.1",
        port=fleet.port,
        fleet=store,
        trial_timeout_s=30.0,
    )
    targets = select_devices(fleet.home, sorted(CLASSES), None)
    report = publisher.publish(version.ref, targets, timeout_s=60, discover_s=1.0)

    assert {d: r.outcome for d, r in report.devices.items()} == dict.fromkeys(
        CLASSES, Outcome.COMMITTED
    )
    measured: dict[str, dict[str, float]] = {}
    for device_id, hw in CLASSES.items():
        updater = fleet.agents[device_id].updater
        assert updater is not None
        mine = {str(t.precision): t.median_us for t in updater.timings}
        assert set(mine) == approved  # it timed every approved variant on this CPU
        record, _slot = updater.serving()
        assert record is not None and record.version == version.number
        serving = str(record.precision)
        assert serving == min(mine, key=lambda p: mine[p])  # the selection rule
        assert mine[serving] <= 1.05 * min(mine.values())
        choice = report.devices[device_id].choice
        assert choice is not None and choice["basis"] == "measured"
        assert choice["precision"] == serving
        rows = store.variant_measurements(hw, version.model, version.number)
        assert {r.precision for r in rows} == approved  # persisted under its class
        measured[device_id] = mine
        print(f"{version.ref} {device_id}: serves {serving}; medians (us) {mine}")
    return measured


def test_digits_cnn_devices_end_on_the_variant_fastest_here(
    fleet: Fleet,
    quantized_digits,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """The default digits CNN, trained and quantized by the pipeline (every precision)."""
    registry, version, _ = quantized_digits
    _publish_and_check(fleet, registry, version, tmp_path)


def test_benchmark_cnn_devices_end_on_the_variant_fastest_here(
    fleet: Fleet, models: BuiltModels, tmp_path: Path
) -> None:
    """The 1x28x28 CNN of the issue's measurement (float32 and int8, both approved)."""
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "artifacts")
    try:
        version = registry.create_version(
            "cnn",
            spec={},
            source=VersionSource.TRAINED,
            artifacts=[
                NewArtifact("tflite", p, path.read_bytes(), ArtifactStatus.APPROVED)
                for p, path in (("float32", models.float_a), ("int8", models.int8_a))
            ],
        )
        _publish_and_check(fleet, registry, version, tmp_path)
    finally:
        registry.close()

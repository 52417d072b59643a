"""Staged rollouts end to end: ``fedge cloud serve`` processes (the leader's engine and
ingestion), real agents as processes under live inference load, real Mosquitto.

* a good candidate goes canary → everyone while the coordinator is SIGKILLed twice (in the
  canary's bake, and in the middle of the next cohort's install) and restarted; no device
  is sent the manifest again after it committed; a device offline during its cohort is
  skipped (policy ``offline = skip``) and gets the version when it comes back;
* a slow candidate (a much larger model) fails the latency gate in the canary: aborted,
  the canary rolled back, no device outside the canary is ever sent its manifest;
* a candidate that disagrees with the serving model (another network) fails the shadow
  gate on the canary's own live requests: aborted before anything was installed, and the
  canary told to drop the candidate (its retained status no longer carries it; the
  operator's ``drop-candidate`` then finds nothing to drop);
* a candidate that fails probation on the canary's devices crosses the failure
  threshold: aborted, nothing reaches the next cohort;
* two coordinators on one PostgreSQL: the leader is SIGKILLed mid-rollout and the standby
  takes over and finishes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.broker import write_broker_config
from cloud.broker_process import start_broker, wait_listening
from cloud.config import Settings
from cloud.deployment.publisher import Outcome, Publisher, select_devices
from cloud.fleet.store import FleetStore
from cloud.keys import MONITOR_USER, KeyHome
from cloud.registry import ArtifactStatus, Registry, VersionSource
from cloud.registry.registry import NewArtifact
from shared.protocol import topics
from shared.protocol.codec import decode_message_as
from shared.protocol.messages import StatusMessage
from tests.helpers.models import INPUT_SHAPE, NUM_CLASSES, BuiltModels, convert_float
from tests.helpers.mosquitto import free_port
from tests.security.conftest import FleetBroker, connect
from tests.security.rollout_world import PROFILE, Field, operator_token, wait_for

pytestmark = pytest.mark.slow


def _policy(**overrides: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "target": {"groups": ["field"]},
        "cohorts": [{"count": 1}, {"percent": 100}],
        "bake_s": 4,
        "device_timeout_s": 10,
        "offline": "skip",
        # a shared 2-core machine is noisy: the factor leaves room for noise, not for a
        # model that is many times slower
        "gates": {
            "field": {
                "min_requests": 20,
                "max_latency_factor": 3.0,
                "error_margin": 0.05,
                "baseline_s": 120,
            }
        },
        "evidence_timeout_s": 60,
    }
    policy.update(overrides)
    return policy


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A much wider CNN of the same input and output shapes: ~290 M MACs, about 5 ms per
    invoke on this AVX-512 machine against ~0.4 ms for cnn@1 (p95 ratio ~10, the gate's
    factor 3). A 32-64-64 version ran in 0.9 ms here, a ratio of 2.5: it passed the gate."""
    import torch
    from torch import nn

    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, NUM_CLASSES),
    ).eval()  # fmt: skip
    return convert_float(model, INPUT_SHAPE, tmp_path_factory.mktemp("slow") / "slow.tflite")


@contextlib.contextmanager
def _field(
    base: Path, models: BuiltModels, slow: Path, n: int, database_url: str | None
) -> Iterator[Field]:
    home = KeyHome(base / "keys")
    home.init()
    devices = [f"dev-{i}" for i in range(n)]
    for d in devices:
        home.enroll_device(d, hardware_id="hw-a", groups=["field"])
    port = free_port()
    files = write_broker_config(home, base / "broker", port=port)
    proc = start_broker(files)
    wait_listening(port, proc=proc)
    (base / "profile.toml").write_text(PROFILE)
    settings = Settings(home=base, database_url=database_url)
    registry = Registry.from_settings(settings)
    broken = b"TFL3" + bytes(range(256)) * 64  # cnn@4: verifies, fails LiteRT probation
    blobs = [
        (models.int8_a.read_bytes(), "int8"),
        (models.int8_b.read_bytes(), "int8"),
        (slow.read_bytes(), "float32"),
        (broken, "int8"),
    ]
    for data, precision in blobs:
        art = NewArtifact("tflite", precision, data, ArtifactStatus.APPROVED, "ok")
        registry.create_version("cnn", spec={}, source=VersionSource.TRAINED, artifacts=[art])
    field = Field(base, FleetBroker(home, files, port, proc), registry, devices, database_url)
    try:
        for d in devices:
            field.start_agent(d)
        # every device serves cnn@1 first (a plain publish), before any coordinator runs
        report = Publisher(registry, home, host="127.0.0.1", port=port).publish(
            "cnn@1", select_devices(home, devices, None), timeout_s=90, discover_s=5
        )
        assert {r.outcome for r in report.devices.values()} == {Outcome.COMMITTED}
        for d in devices:
            wait_for(f"{d} serving v1", lambda d=d: field.serving(d) == "1")
        field.token = operator_token(FleetStore.from_registry(registry))
        field.watch_manifests()
        yield field
    finally:
        field.close()
        registry.close()
        proc.terminate()
        proc.wait(10)


def _wait_baseline(field: Field, devices: list[str]) -> None:
    """Telemetry with requests from every device (the gates' "before")."""
    store = FleetStore.from_registry(field.registry)

    def enough() -> bool:
        windows = store.telemetry_windows(devices, since=time.time() - 60)
        per = {d: sum(w.requests for w in windows if w.device_id == d) for d in devices}
        return all(v >= 30 for v in per.values())

    wait_for("baseline telemetry", enough, timeout=120)


#: For the tests of a candidate that must get through: on this shared 2-core machine, with
#: coordinators killed and devices installing, a good candidate's p95 over ~30 requests has
#: measured up to 3.8x its "before" (CI, this stop). The latency gate itself is tested with
#: the slow candidate (~10x) against the default factor 3.
TOLERANT_FIELD_GATE: dict[str, Any] = {
    "field": {**_policy()["gates"]["field"], "max_latency_factor": 20.0}
}


def _create(field: Field, port: int, version: str, **policy: Any) -> dict[str, Any]:
    body = {"version": version, "policy": _policy(**policy)}
    return dict(field.api("POST", "/v1/rollouts", port, json=body))


def _retained_status(field: Field, device_id: str) -> StatusMessage:
    """The device's retained status, as the broker hands it to a new subscriber."""
    client = connect(field.broker, MONITOR_USER)
    try:
        client.subscribe(topics.device_status(device_id))
        assert client.wait(lambda: bool(client.messages), timeout=10)
        return decode_message_as(client.messages[0][1], StatusMessage)
    finally:
        client.close()


def _gates(field: Field, port: int, rid: str) -> list[dict[str, Any]]:
    return [e["detail"] for e in field.events(port, rid) if e["kind"] == "gate"]


def test_good_candidate_survives_coordinator_kills_and_reaches_everyone(
    tmp_path: Path, models: BuiltModels, slow_model: Path
) -> None:
    with _field(tmp_path, models, slow_model, 4, None) as field:
        port = field.start_coordinator()
        field.start_load()
        _wait_baseline(field, field.devices)
        rollout = _create(field, port, "cnn@2", gates=TOLERANT_FIELD_GATE)
        rid = rollout["rollout_id"]
        canary = [d["device_id"] for d in rollout["devices"] if d["cohort"] == 0]
        away = next(d for d in field.devices if d not in canary)
        field.kill_agent(away)  # offline during its cohort (its last will: offline)

        # kill 1: the canary is installed and baking
        wait_for("canary bake", lambda: field.rollout(port, rid)["phase"] == "bake")
        field.kill_coordinator(port)
        port = field.start_coordinator()
        # kill 2: cohort 1's install is in flight (the offline device holds it open)
        wait_for(
            "cohort 1 install",
            lambda: (
                (r := field.rollout(port, rid))["cohort"] == 1
                and r["phase"] == "install"
                and any(d["state"] == "sent" for d in r["devices"])
            ),
        )
        field.kill_coordinator(port)
        port = field.start_coordinator()

        done = field.wait_state(port, rid, {"completed", "aborted"})
        assert done["state"] == "completed", [
            (e["kind"], e["detail"]) for e in field.events(port, rid)
        ]
        states = {d["device_id"]: d["state"] for d in done["devices"]}
        assert states == {d: ("skipped" if d == away else "committed") for d in field.devices}
        online = [d for d in field.devices if d != away]
        for d in online:
            wait_for(f"{d} serving v2", lambda d=d: field.serving(d) == "2")
        # nothing sent twice: one v2 manifest per device that committed, whatever the kills
        sent = field.manifests_sent(2)
        assert all(sent[d] == 1 for d in online), sent
        gates = _gates(field, port, rid)
        assert [g["verdict"] for g in gates if g["gate"] == "field"] == ["pass", "pass"]
        assert all(g["samples"]["requests_after"] >= 20 for g in gates if g["gate"] == "field")

        # the device comes back after completion: the retained manifest, then reconciled
        field.start_agent(away)
        wait_for(f"{away} serving v2", lambda: field.serving(away) == "2", timeout=90)
        wait_for(
            "the late device counted",
            lambda: field.rollout(port, rid)["counts"] == {"committed": 4},
            timeout=60,
        )
        assert "devices_caught_up" in [e["kind"] for e in field.events(port, rid)]


def test_slow_candidate_fails_latency_gate_in_canary_and_goes_nowhere_else(
    tmp_path: Path, models: BuiltModels, slow_model: Path
) -> None:
    with _field(tmp_path, models, slow_model, 3, None) as field:
        port = field.start_coordinator()
        field.start_load()
        _wait_baseline(field, field.devices)
        rollout = _create(field, port, "cnn@3")
        rid = rollout["rollout_id"]
        canary = [d["device_id"] for d in rollout["devices"] if d["cohort"] == 0]
        done = field.wait_state(port, rid, {"completed", "aborted"})
        assert done["state"] == "aborted"
        gate = _gates(field, port, rid)[-1]
        assert (gate["gate"], gate["verdict"]) == ("field", "fail")
        assert gate["reason"] == "latency_above_threshold", gate
        assert gate["values"]["latency_ratio"] > gate["thresholds"]["max_latency_factor"]
        states = {d["device_id"]: d["state"] for d in done["devices"]}
        assert [states[d] for d in canary] == ["rolled_back"]
        wait_for("canary back on v1", lambda: field.serving(canary[0]) == "1")
        sent = field.manifests_sent(3)
        assert set(sent) == set(canary)  # nobody outside the canary was ever sent it
        for d in field.devices:
            if d not in canary:
                assert states[d] == "pending" and field.serving(d) == "1"


def test_disagreeing_candidate_fails_shadow_gate_before_any_install(
    tmp_path: Path, models: BuiltModels, slow_model: Path
) -> None:
    with _field(tmp_path, models, slow_model, 3, None) as field:
        port = field.start_coordinator()
        field.start_load()
        _wait_baseline(field, field.devices)
        shadow = {"min_samples": 20, "bake_s": 3, "min_agreement": 0.9, "max_latency_factor": 5}
        rollout = _create(field, port, "cnn@2", gates={"shadow": shadow, "field": None})
        rid = rollout["rollout_id"]
        canary = [d["device_id"] for d in rollout["devices"] if d["cohort"] == 0]
        done = field.wait_state(port, rid, {"completed", "aborted"})
        assert done["state"] == "aborted", [
            (e["kind"], e["detail"]) for e in field.events(port, rid)
        ]
        gate = _gates(field, port, rid)[-1]
        assert (gate["gate"], gate["reason"]) == ("shadow", "agreement_below_threshold"), gate
        assert gate["samples"]["samples"] >= 20 and gate["values"]["agreement"] < 0.9
        assert set(field.manifests_sent(2, "shadow")) == set(canary)
        assert not field.manifests_sent(2)  # no install manifest ever went out
        for d in field.devices:
            wait_for(f"{d} serving v1", lambda d=d: field.serving(d) == "1")
        # the canary dropped the candidate: recorded, counted, and gone from its status
        assert {d["state"] for d in done["devices"] if d["device_id"] in canary} == {"dropped"}
        [rolled] = [e["detail"] for e in field.events(port, rid) if e["kind"] == "rolled_back"]
        assert rolled["drop_candidate"] == {"dropped": len(canary)}, rolled
        for d in canary:
            status = _retained_status(field, d)
            assert status.candidate is None, status
            assert status.serving is not None and status.serving.version == 1
        dropped = subprocess.run(
            [
                sys.executable, "-m", "simulations.cli", "cloud", "rollout", "drop-candidate",
                "--devices", canary[0], "--artifact", "0" * 32, "--json", "--timeout", "30",
                "--broker", f"127.0.0.1:{field.broker.port}",
            ],
            env=field.env(), capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert dropped.returncode == 0, dropped.stderr
        [answer] = json.loads(dropped.stdout)["devices"]
        assert (answer["outcome"], answer["reason"]) == ("not_held", "no_candidate")


def test_probation_failures_in_the_canary_cross_the_failure_threshold(
    tmp_path: Path, models: BuiltModels, slow_model: Path
) -> None:
    with _field(tmp_path, models, slow_model, 3, None) as field:
        port = field.start_coordinator()
        rollout = _create(field, port, "cnn@4", cohorts=[{"count": 2}, {"percent": 100}])
        rid = rollout["rollout_id"]
        canary = {d["device_id"] for d in rollout["devices"] if d["cohort"] == 0}
        done = field.wait_state(port, rid, {"completed", "aborted"})
        assert done["state"] == "aborted"
        gate = _gates(field, port, rid)[-1]
        assert (gate["gate"], gate["reason"]) == ("install", "failure_threshold_reached"), gate
        assert gate["values"]["failure_rate"] >= gate["thresholds"]["failure_threshold"]
        assert set(field.manifests_sent(4)) <= canary  # nobody outside the canary
        states = {d["device_id"]: d["state"] for d in done["devices"]}
        assert {states[d] for d in canary} == {"failed"}
        for d in field.devices:  # the previous model still serves everywhere
            wait_for(f"{d} serving v1", lambda d=d: field.serving(d) == "1")


def test_standby_takes_over_when_the_leader_is_killed(
    tmp_path: Path, models: BuiltModels, slow_model: Path, postgres_url: str
) -> None:
    with _field(tmp_path, models, slow_model, 3, postgres_url) as field:
        first = field.start_coordinator()
        second = field.start_coordinator()
        leaders = wait_for(
            "one leader",
            lambda: [
                p
                for p in (first, second)
                if field.api("GET", "/v1/rollouts/coordinator", p)["leader"]
            ],
        )
        assert len(leaders) == 1
        leader = leaders[0]
        standby = second if leader == first else first
        field.start_load()
        _wait_baseline(field, field.devices)
        # either process takes requests
        rid = _create(field, standby, "cnn@2", gates=TOLERANT_FIELD_GATE)["rollout_id"]
        wait_for("canary bake", lambda: field.rollout(standby, rid)["phase"] == "bake")
        field.kill_coordinator(leader)
        wait_for(
            "the standby leads",
            lambda: field.api("GET", "/v1/rollouts/coordinator", standby)["leader"],
            timeout=60,  # a deadline for a loaded CI machine, not a measurement
        )
        done = field.wait_state(standby, rid, {"completed", "aborted"})
        assert done["state"] == "completed", field.events(standby, rid)
        assert done["counts"] == {"committed": 3}
        for d in field.devices:
            wait_for(f"{d} serving v2", lambda d=d: field.serving(d) == "2")
        assert all(n == 1 for n in field.manifests_sent(2).values())

"""The agent against a real Mosquitto: status, telemetry, last will, malformed input, outbox.

Agents run as real subprocesses (``python -m edge run``) where the test kills them.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.agent import Agent, AgentConfig
from shared.profiles import DeviceProfile
from shared.protocol import topics
from shared.protocol.codec import decode_message
from shared.protocol.dedupe import Deduplicator
from shared.protocol.messages import DeviceState, StatusMessage, TelemetryMessage
from tests.edge.conftest import write_profile
from tests.helpers.models import BuiltModels
from tests.helpers.mosquitto import MosquittoBroker, free_port
from tests.helpers.mqtt import Received, Recorder

ROOT = Path(__file__).resolve().parents[2]


def _decoded(msgs: list[Received], cls: type) -> list:  # type: ignore[type-arg]
    """Decode what the device sent (its status/telemetry topics, not its cmd topic)."""
    sent = [r for r in msgs if r.topic.endswith(("/status", "/telemetry"))]
    return [m for m in (decode_message(r.payload) for r in sent) if isinstance(m, cls)]


def _statuses(msgs: list[Received]) -> list[StatusMessage]:
    return _decoded(msgs, StatusMessage)


def _telemetry(msgs: list[Received]) -> list[TelemetryMessage]:
    return _decoded(msgs, TelemetryMessage)


@pytest.fixture()
def recorder(broker: MosquittoBroker) -> Iterator[Recorder]:
    rec = Recorder(broker.host, broker.port, "fedge/v1/devices/#")
    yield rec
    rec.close()


def _spawn_agent(
    broker: MosquittoBroker, profile: Path, state_dir: Path, device: str, *extra: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEDGE_BROKER": broker.url}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge",
            "run",
            "--profile",
            str(profile),
            "--device-id",
            device,
            "--state-dir",
            str(state_dir),
            "--reconnect-max",
            "1",
            "--log-level",
            "warning",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stderr:
        proc.stderr.close()


def test_status_and_telemetry_arrive_and_clean_stop_says_offline(
    broker: MosquittoBroker,
    recorder: Recorder,
    profile: DeviceProfile,
    models: BuiltModels,
    tmp_path: Path,
) -> None:
    config = AgentConfig(
        device_id="dev-a",
        broker_url=broker.url,
        profile=profile,
        state_dir=tmp_path / "state",
        model_path=models.int8_a,
        model_version="v1",
        http_port=0,
    )
    agent = Agent(config)
    runner = threading.Thread(target=agent.run)
    runner.start()
    try:
        recorder.wait_for(lambda m: any(s.state is DeviceState.ONLINE for s in _statuses(m)))
        assert agent.server is not None
        body = json.dumps({"inputs": [[[[0.5] * 28] * 28]]}).encode()
        for _ in range(5):
            req = urllib.request.Request(
                agent.server.url + "/v1/infer", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
        msgs = recorder.wait_for(
            lambda m: sum(t.requests for t in _telemetry(m)) >= 5 and len(_telemetry(m)) >= 2
        )
    finally:
        agent.request_stop()
        runner.join(timeout=20)
    assert not runner.is_alive()
    telemetry = _telemetry(msgs)
    assert all(t.device_id == "dev-a" and t.model_version == "v1" for t in telemetry)
    assert all(
        r.topic == topics.device_telemetry("dev-a") for r in msgs if b"telemetry" in r.payload
    )
    busy = [t for t in telemetry if t.requests]
    assert busy[0].latency.count == busy[0].requests
    assert busy[0].latency.p50_ms > 0 and busy[0].latency.p99_ms >= busy[0].latency.p50_ms
    assert telemetry[-1].memory_rss_bytes > 0
    online = [s for s in _statuses(msgs) if s.state is DeviceState.ONLINE]
    assert online[0].model_version == "v1" and online[0].hardware_id == "test-hw-1"
    # A clean stop publishes a final retained "offline" (not the will).
    final = recorder.wait_for(lambda m: _statuses(m)[-1].state is DeviceState.OFFLINE, timeout=10)
    assert final[-1].topic == topics.device_status("dev-a")


def test_last_will_marks_a_killed_agent_offline(
    broker: MosquittoBroker, recorder: Recorder, profile_path: Path, tmp_path: Path
) -> None:
    proc = _spawn_agent(broker, profile_path, tmp_path / "state", "dev-will")
    try:
        recorder.wait_for(lambda m: any(s.state is DeviceState.ONLINE for s in _statuses(m)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        msgs = recorder.wait_for(lambda m: _statuses(m)[-1].state is DeviceState.OFFLINE)
    finally:
        _kill(proc)
    last = _statuses(msgs)[-1]
    assert last.device_id == "dev-will" and last.hardware_id == "test-hw-1"
    # The will is retained: a subscriber arriving later sees the device offline.
    late = Recorder(broker.host, broker.port, topics.device_status("dev-will"), "late")
    try:
        retained = late.wait_for(lambda m: bool(m))
    finally:
        late.close()
    assert retained[0].retain
    assert _statuses(retained)[0].state is DeviceState.OFFLINE


def test_sigterm_stops_cleanly(
    broker: MosquittoBroker, recorder: Recorder, profile_path: Path, tmp_path: Path
) -> None:
    proc = _spawn_agent(broker, profile_path, tmp_path / "state", "dev-term")
    try:
        recorder.wait_for(lambda m: any(s.state is DeviceState.ONLINE for s in _statuses(m)))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        _kill(proc)
    msgs = recorder.wait_for(lambda m: _statuses(m)[-1].state is DeviceState.OFFLINE)
    assert _statuses(msgs)[-1].device_id == "dev-term"


def test_malformed_mqtt_payloads_are_counted_not_fatal(
    broker: MosquittoBroker, recorder: Recorder, profile_path: Path, tmp_path: Path
) -> None:
    proc = _spawn_agent(broker, profile_path, tmp_path / "state", "dev-fuzz")
    try:
        recorder.wait_for(lambda m: any(s.state is DeviceState.ONLINE for s in _statuses(m)))
        garbage = [b"", b"\xff\x00", b"{", b'{"kind":"status"}', b"[" * 5000, os.urandom(200_000)]
        valid_but_unexpected = StatusMessage(device_id="x", sent_at=0, state=DeviceState.ONLINE)
        from shared.protocol.codec import encode_message

        for payload in [*garbage, encode_message(valid_but_unexpected)]:
            recorder.publish(topics.device_cmd("dev-fuzz"), payload)
        recorder.publish(topics.group_cmd("test-group"), b"not json either")
        msgs = recorder.wait_for(
            lambda m: any(t.messages_rejected >= 8 for t in _telemetry(m)), timeout=20
        )
        assert proc.poll() is None, "the agent must survive malformed messages"
    finally:
        _kill(proc)
    assert max(t.messages_rejected for t in _telemetry(msgs)) == 8


def _outbox_msg_ids(state_dir: Path) -> list[str]:
    db = sqlite3.connect(state_dir / "outbox.sqlite3")
    try:
        return [row[0] for row in db.execute("SELECT msg_id FROM outbox ORDER BY id")]
    finally:
        db.close()


def test_outbox_survives_sigkill_and_restart_without_loss_or_duplicates(
    tmp_path: Path,
) -> None:
    port = free_port()
    broker = MosquittoBroker(port=port)
    broker.start()
    state = tmp_path / "state"
    profile = write_profile(tmp_path, interval=0.2)
    topic_filter = "fedge/v1/devices/dev-box/#"
    before = Recorder(broker.host, port, topic_filter, "before")
    proc = _spawn_agent(broker, profile, state, "dev-box")
    try:
        before.wait_for(lambda m: len(_telemetry(m)) >= 2)
        broker.stop()  # the agent is offline now: everything goes to the outbox
        before.close()
        received_before = {m.msg_id for m in _telemetry(before.snapshot())}

        # Wait (by polling the outbox file) until offline telemetry accumulates.
        deadline = threading.Event()
        for _ in range(200):
            if len(_outbox_msg_ids(state)) >= 5:
                break
            deadline.wait(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        stranded = _outbox_msg_ids(state)
        assert len(stranded) >= 5

        broker.start()
        after = Recorder(broker.host, port, topic_filter, "after")
        proc = _spawn_agent(broker, profile, state, "dev-box")
        msgs = after.wait_for(lambda m: set(stranded) <= {d.msg_id for d in _decoded(m, object)})
        after.wait_for(lambda m: len(_telemetry(m)) >= len(stranded) + 2)  # fresh ones flow too
        msgs = after.snapshot()
        after.close()
    finally:
        _kill(proc)
        broker.stop()
    ids_after = [m.msg_id for m in _decoded(msgs, object)]
    # No loss: every message stranded in the outbox by the SIGKILL arrived after the restart.
    assert set(stranded) <= set(ids_after)
    # No duplicate: the restarted agent sent each stranded message exactly once.
    assert all(ids_after.count(i) == 1 for i in stranded)
    # Order is kept: stranded messages arrive in the order they were enqueued.
    assert [i for i in ids_after if i in set(stranded)] == stranded
    # Across both runs, a receiver deduplicating by msg_id sees each message once, and at
    # most the messages in flight at the broker outage show up twice on the wire.
    dedupe = Deduplicator()
    repeats = [i for i in [*received_before, *ids_after] if not dedupe.first_time(i)]
    assert set(repeats) <= received_before & set(stranded)
    # And the outbox is empty again once everything is acknowledged.
    assert _outbox_msg_ids(state) == [] or set(_outbox_msg_ids(state)).isdisjoint(stranded)


def test_run_refuses_a_superlink_for_a_profile_that_does_not_train(tmp_path: Path) -> None:
    """Only training devices run a SuperNode; the refusal names the profile."""
    from typer.testing import CliRunner

    from edge.cli import edge_app

    result = CliRunner().invoke(
        edge_app,
        [
            "run",
            f"--profile={ROOT / 'firmware_configs/thermostat_sensor.toml'}",
            "--device-id=thermo-1",
            "--broker=mqtt://127.0.0.1:1",
            "--superlink=127.0.0.1:9092",
            f"--train-data={tmp_path}",
            f"--state-dir={tmp_path / 'state'}",
        ],
    )
    assert result.exit_code == 2
    assert "'thermostat-sensor' does not train" in result.output


def test_telemetry_counts_supernode_restarts(
    broker: MosquittoBroker, recorder: Recorder, profile: DeviceProfile, tmp_path: Path
) -> None:
    """A SuperNode that dies is restarted by the agent, and the fleet sees it in telemetry."""
    import numpy as np

    from edge.learning.supernode import SuperNodeConfig

    data = tmp_path / "train.npz"
    np.savez(data, x=np.zeros((4, 64), np.float32), y=np.zeros(4, np.int64))
    supernode = SuperNodeConfig(  # nothing listens there: it keeps retrying, i.e. stays up
        superlink=f"127.0.0.1:{free_port()}",
        data_path=data,
        insecure=True,
        runtime_port=free_port(),
        flwr_home=tmp_path / "flwr",
        backoff_initial=0.2,
    )
    config = AgentConfig(
        device_id="dev-sn",
        broker_url=broker.url,
        profile=profile,
        state_dir=tmp_path / "state",
        supernode=supernode,
    )
    agent = Agent(config)
    runner = threading.Thread(target=agent.run)
    runner.start()
    try:
        recorder.wait_for(lambda m: any(t.supernode_restarts == 0 for t in _telemetry(m)))
        assert agent.supernode is not None
        first = agent.supernode.pid
        assert first is not None
        os.killpg(first, signal.SIGKILL)
        recorder.wait_for(
            lambda m: any(t.supernode_restarts == 1 for t in _telemetry(m)), timeout=30
        )
    finally:
        agent.request_stop()
        runner.join(30)
    assert not runner.is_alive()


def test_telemetry_of_a_device_without_supernode_says_none(
    broker: MosquittoBroker, recorder: Recorder, profile: DeviceProfile, tmp_path: Path
) -> None:
    config = AgentConfig(
        device_id="dev-plain", broker_url=broker.url, profile=profile, state_dir=tmp_path / "s"
    )
    agent = Agent(config)
    runner = threading.Thread(target=agent.run)
    runner.start()
    try:
        msgs = recorder.wait_for(lambda m: bool(_telemetry(m)))
        assert all(t.supernode_restarts is None for t in _telemetry(msgs))
    finally:
        agent.request_stop()
        runner.join(30)

"""The ingestion worker against a real Mosquitto (generated config: TLS identities, ACLs),
real agents and a real database (SQLite; the agents' test also on PostgreSQL).

Devices are either real :class:`edge.agent.Agent` instances on threads (with their
enrollment bundles) or paho clients holding a device's certificate, which publish exactly
the payloads a test needs (known ``msg_id`` values, forged claims, repeats).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from cloud.broker import render_acl, write_broker_config
from cloud.broker_process import start_broker, wait_listening
from cloud.fleet.records import TelemetryRecord
from cloud.fleet.schema import TelemetryRow
from cloud.fleet.store import FleetStore
from cloud.ingest import IngestWorker, RetentionJob
from cloud.keys import COORDINATOR_USER, INGEST_USER, KeyHome
from cloud.observability import REGISTRY
from edge.agent import Agent, AgentConfig
from shared.crypto.tls import cert_common_name
from shared.errors import RegistryError, ReservedNameError
from shared.profiles import DeviceProfile, profile_from_toml
from shared.protocol import topics
from shared.protocol.codec import encode_message
from shared.protocol.messages import (
    DeviceState,
    LatencyStats,
    StatusMessage,
    TelemetryMessage,
)
from tests.helpers.mosquitto import free_port
from tests.security.conftest import Client, FleetBroker, connect

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware_configs" / "thermostat_sensor.toml"
DEVICES = ("dev-a", "dev-b")


def _until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(0.05)


@dataclass
class World:
    broker: FleetBroker
    store: FleetStore
    engine: Engine
    workers: list[IngestWorker] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    def worker(self, **kwargs: Any) -> IngestWorker:
        worker = IngestWorker(self.broker.home, "127.0.0.1", self.broker.port, self.store, **kwargs)
        worker.start()
        self.workers.append(worker)
        assert worker.wait_ready(15), worker.stats
        return worker

    def device(self, device_id: str) -> Client:
        client = connect(self.broker, device_id, client_id=device_id)
        assert client.connack == "Success"
        self.clients.append(client)
        return client

    def telemetry_ids(self, device_id: str | None = None) -> list[str]:
        query = select(TelemetryRow.msg_id)
        if device_id is not None:
            query = query.where(TelemetryRow.device_id == device_id)
        with self.engine.connect() as conn:
            return [str(row[0]) for row in conn.execute(query)]

    def telemetry_rows(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(TelemetryRow)).scalar_one())


def _world(tmp_path: Path, database_url: str) -> Iterator[World]:
    home = KeyHome(tmp_path / "keys")
    home.init()
    for device_id in DEVICES:
        home.enroll_device(device_id, hardware_id="hw-a")
    port = free_port()
    files = write_broker_config(home, tmp_path / "broker", port=port)
    proc = start_broker(files)
    wait_listening(port, proc=proc)
    engine = create_engine(database_url)
    store = FleetStore(engine)
    for device_id in DEVICES:
        store.add_device(device_id, hardware_id="hw-a", profile="thermostat", enrolled_at=1.0)
    world = World(FleetBroker(home, files, port, proc), store, engine)
    try:
        yield world
    finally:
        for worker in world.workers:
            worker.stop()
        for client in world.clients:
            client.close()
        proc.terminate()
        proc.wait(10)
        engine.dispose()


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path, f"sqlite:///{tmp_path / 'fleet.db'}")


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fleet.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    yield from _world(tmp_path, url)


def _status(device_id: str, state: DeviceState = DeviceState.ONLINE, **kw: Any) -> StatusMessage:
    return StatusMessage(device_id=device_id, sent_at=time.time(), state=state, **kw)


def _telemetry(device_id: str, *, requests: int = 1) -> TelemetryMessage:
    return TelemetryMessage(
        device_id=device_id,
        sent_at=time.time(),
        interval_s=1.0,
        model_version="v1",
        requests=requests,
        errors=0,
        requests_total=requests,
        latency=LatencyStats(count=requests, p50_ms=1.0, p95_ms=2.0, p99_ms=3.0, max_ms=4.0),
        cpu_percent=1.0,
        memory_rss_bytes=1000,
        memory_percent=1.0,
        uptime_s=1.0,
    )


def _metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the fedge-ingest identity -----------------------------------------------------------------


def test_the_ingest_identity_is_issued_reserved_and_granted_read_only(tmp_path: Path) -> None:
    home = KeyHome(tmp_path / "keys")
    home.init()
    cert = home.ingest_dir / "broker.crt"
    assert cert_common_name(cert.read_bytes()) == INGEST_USER
    assert stat.S_IMODE((home.ingest_dir / "broker.key").stat().st_mode) == 0o600
    assert home.ensure_ingest() is False
    cert.unlink()  # a key home from before the ingestion worker
    assert home.ensure_ingest() is True and cert_common_name(cert.read_bytes()) == INGEST_USER
    with pytest.raises(ReservedNameError):
        home.enroll_device(INGEST_USER, hardware_id="hw-a")
    acl = render_acl({})
    assert (
        f"user {INGEST_USER}\n"
        "topic read fedge/v1/devices/+/status\n"
        "topic read fedge/v1/devices/+/telemetry\n"
    ) in acl


# --- (a) real agents --------------------------------------------------------------------------


def _agent_profile() -> DeviceProfile:
    firmware = profile_from_toml(FIRMWARE.read_text(), source=str(FIRMWARE))
    return firmware.model_copy(
        update={"hardware_id": "hw-a", "groups": (), "telemetry_interval_s": 0.3}
    )


def test_real_agents_status_and_telemetry_land_in_the_store_attributed(
    any_db_world: World, tmp_path: Path
) -> None:
    world = any_db_world
    before = _metric("fedge_ingest_messages_total", {"kind": "telemetry"})
    worker = world.worker()
    agents: list[tuple[Agent, threading.Thread]] = []
    for device_id in DEVICES:
        config = AgentConfig(
            device_id=device_id,
            broker_url=f"mqtts://127.0.0.1:{world.broker.port}",
            profile=_agent_profile(),
            state_dir=tmp_path / "agents" / device_id,
            http_port=None,
            reconnect_max_s=2.0,
        ).with_bundle(world.broker.home.device_dir(device_id))
        agent = Agent(config)
        thread = threading.Thread(target=agent.run, name=f"agent-{device_id}", daemon=True)
        thread.start()
        agents.append((agent, thread))
    try:

        def reported() -> bool:
            return all(
                world.store.get_device(d).state == DeviceState.ONLINE.value
                and len(world.telemetry_ids(d)) >= 2
                for d in DEVICES
            )

        _until(reported, what="both agents' status and telemetry in the store")
    finally:
        for agent, _ in agents:
            agent.request_stop()  # each stop publishes a final retained "offline"
        for _, thread in agents:
            thread.join(20)
    assert not any(thread.is_alive() for _, thread in agents)
    _until(
        lambda: all(world.store.get_device(d).state == DeviceState.OFFLINE.value for d in DEVICES),
        what="the agents' offline statuses",
    )
    for device_id in DEVICES:
        device = world.store.get_device(device_id)
        assert device.online is False and device.last_seen is not None
        history = world.store.status_history(device_id)
        assert {s.state for s in history} >= {"online", "offline"}
        assert all(s.device_id == device_id == s.payload["device_id"] for s in history)
        latest = world.store.latest_telemetry(device_id)
        assert latest is not None and latest.device_id == device_id
        assert latest.payload["device_id"] == device_id
    stats = worker.stats
    assert stats.dropped == {} and stats.failure is None
    assert stats.written["telemetry"] == world.telemetry_rows() >= 4
    assert _metric("fedge_ingest_messages_total", {"kind": "telemetry"}) >= before + 4
    assert REGISTRY.get_sample_value("fedge_ingest_lag_seconds_count") is not None


# --- (b) QoS 1 repeats ------------------------------------------------------------------------


def test_a_repeated_status_is_stored_once_live_and_after_a_restart(world: World) -> None:
    worker = world.worker()
    dev_a = world.device("dev-a")
    payload = encode_message(_status("dev-a", model_version="v7"))
    for _ in range(2):  # the device's outbox re-sent it after a lost PUBACK
        assert dev_a.publish(topics.device_status("dev-a"), payload) < 128
    _until(lambda: worker.stats.received == 2 and worker.stats.pending == 0)
    assert len(world.store.status_history("dev-a")) == 1
    assert worker.stats.dropped == {"duplicate": 1}
    worker.stop()
    # A fresh worker remembers nothing: the database's idempotence keeps it to one row.
    again = world.worker()
    assert dev_a.publish(topics.device_status("dev-a"), payload) < 128
    _until(lambda: again.stats.received == 1 and again.stats.pending == 0)
    assert again.stats.skipped == 1 and again.stats.written_total == 0
    history = world.store.status_history("dev-a")
    assert len(history) == 1 and history[0].payload["model_version"] == "v7"


# --- (c) the topic is the identity ------------------------------------------------------------


def test_identity_comes_from_the_topic_forgeries_and_garbage_are_dropped(world: World) -> None:
    worker = world.worker()
    before = _metric("fedge_ingest_dropped_total", {"reason": "identity_mismatch"})
    dev_a, dev_b = world.device("dev-a"), world.device("dev-b")
    assert dev_b.publish(topics.device_status("dev-b"), encode_message(_status("dev-b"))) < 128
    _until(lambda: world.store.get_device("dev-b").state == "online")
    # dev-a's certificate, on dev-a's own topic, claiming to be dev-b going offline.
    forged = encode_message(_status("dev-b", DeviceState.OFFLINE))
    assert dev_a.publish(topics.device_status("dev-a"), forged) < 128
    assert (
        dev_a.publish(topics.device_telemetry("dev-a"), encode_message(_telemetry("dev-b"))) < 128
    )
    assert dev_a.publish(topics.device_status("dev-a"), b"{not json") < 128
    _until(lambda: worker.stats.received == 4 and worker.stats.pending == 0)
    assert worker.stats.dropped == {"identity_mismatch": 2, "malformed": 1}
    dev_b_now = world.store.get_device("dev-b")
    assert dev_b_now.state == "online" and dev_b_now.online is True
    assert len(world.store.status_history("dev-b")) == 1
    assert world.store.status_history("dev-a") == [] and world.telemetry_ids() == []
    assert world.store.get_device("dev-a").state is None
    after = _metric("fedge_ingest_dropped_total", {"reason": "identity_mismatch"})
    assert after == before + 2


def test_the_ingest_identity_reads_device_reports_only_and_writes_nothing(world: World) -> None:
    ingest = (
        world.broker.home.ingest_dir / "broker.crt",
        world.broker.home.ingest_dir / "broker.key",
    )
    client = connect(world.broker, INGEST_USER, "", tls_files=ingest, client_id=INGEST_USER)
    world.clients.append(client)
    assert client.connack == "Success"
    # Mosquitto 2.0 may grant a wider SUBACK; the read ACL is enforced on every delivery.
    for topic in ("fedge/v1/#", topics.all_devices(topics.DeviceLeaf.TELEMETRY)):
        client.subscribe(topic)
    for topic in (topics.device_cmd("dev-a"), topics.device_status("dev-a"), "fedge/v1/x"):
        assert client.publish(topic, b"forged") == 135, topic  # NOT_AUTHORIZED
    coordinator = connect(world.broker, COORDINATOR_USER)
    world.clients.append(coordinator)
    for topic in (topics.device_cmd("dev-a"), topics.device_manifest("dev-b"), "fedge/v1/x"):
        assert coordinator.publish(topic, b"not-for-ingest") < 128
    device = world.device("dev-b")
    assert device.publish(topics.device_requests("dev-b"), b"not-for-ingest") < 128
    assert device.publish(topics.device_telemetry("dev-b"), b"report") < 128
    assert client.wait(lambda: any(p == b"report" for _, p in client.messages))
    assert {t for t, _ in client.messages} == {topics.device_telemetry("dev-b")}


# --- (d) a crash between receipt and commit ---------------------------------------------------

_CRASHABLE_WORKER = """
import json, sys, time
from pathlib import Path
from sqlalchemy import create_engine
from cloud.fleet.store import FleetStore
from cloud.ingest import IngestWorker, RetentionJob
from cloud.fleet.records import TelemetryRecord
from cloud.keys import KeyHome

home, port, url = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
store = FleetStore(create_engine(url))
# Batches that never fill and never time out: everything received stays uncommitted.
worker = IngestWorker(KeyHome(home), "127.0.0.1", port, store, batch_max=100000, flush_s=3600)
worker.start()
while True:
    print(json.dumps(worker.stats.to_dict()), flush=True)
    time.sleep(0.05)
"""


def _spawn_crashable(world: World, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CRASHABLE_WORKER,
            str(world.broker.home.path),
            str(world.broker.port),
            url,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def _stats_until(proc: subprocess.Popen[str], predicate: Callable[[dict[str, Any]], bool]) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"the worker process exited ({proc.poll()})"
        if predicate(json.loads(line)):
            return
    raise AssertionError("the worker process never got there")


def test_a_worker_killed_before_its_commit_loses_nothing_and_doubles_nothing(
    world: World, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    proc = _spawn_crashable(world, url)
    sent: list[str] = []
    try:
        _stats_until(proc, lambda s: bool(s["subscribed"]))
        dev_a, dev_b = world.device("dev-a"), world.device("dev-b")
        for i in range(10):
            for device_id, client in (("dev-a", dev_a), ("dev-b", dev_b)):
                message = _telemetry(device_id, requests=i + 1)
                assert (
                    client.publish(topics.device_telemetry(device_id), encode_message(message))
                    < 128
                )
                sent.append(message.msg_id)
        # Received (and, were acks automatic, already PUBACKed) but not written.
        _stats_until(proc, lambda s: s["received"] == len(sent) and not s["written"])
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no flush, no ack, no DISCONNECT
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert world.telemetry_rows() == 0
    # While no worker runs, the devices keep reporting: the session queues it.
    for _ in range(5):
        message = _telemetry("dev-a")
        assert dev_a.publish(topics.device_telemetry("dev-a"), encode_message(message)) < 128
        sent.append(message.msg_id)
    worker = world.worker()
    _until(lambda: world.telemetry_rows() >= len(sent), what="every message sent")
    _until(lambda: worker.stats.pending == 0)
    stored = world.telemetry_ids()
    assert sorted(stored) == sorted(sent)  # nothing lost, nothing doubled
    assert len(set(stored)) == len(stored) == 25
    assert worker.stats.written["telemetry"] == 25


# --- (e) a clean stop ------------------------------------------------------------------------


def test_a_clean_stop_commits_the_batch_in_flight_and_keeps_the_session(world: World) -> None:
    worker = world.worker(batch_max=100_000, flush_s=3600)  # nothing commits by itself
    dev_a = world.device("dev-a")
    sent = []
    for _ in range(8):
        message = _telemetry("dev-a")
        assert dev_a.publish(topics.device_telemetry("dev-a"), encode_message(message)) < 128
        sent.append(message.msg_id)
    _until(lambda: worker.stats.received == len(sent))
    assert world.telemetry_rows() == 0 and worker.stats.pending == len(sent)
    worker.stop()
    assert sorted(world.telemetry_ids()) == sorted(sent)
    assert worker.stats.pending == 0 and worker.stats.written["telemetry"] == len(sent)
    assert worker.stats.last_commit_at is not None
    # Sent while no worker runs: queued in the session the stop kept.
    meanwhile = _telemetry("dev-a")
    assert dev_a.publish(topics.device_telemetry("dev-a"), encode_message(meanwhile)) < 128
    successor = world.worker()
    _until(lambda: meanwhile.msg_id in world.telemetry_ids(), what="the queued message")
    # Only the queued message came: the stop's acknowledgements reached the broker, so
    # nothing of the flushed batch was delivered again (it would precede the queued one).
    assert successor.stats.received == 1
    assert world.telemetry_rows() == len(sent) + 1


# --- a failing database -----------------------------------------------------------------------


class _FlakyStore:
    """The real store, whose telemetry writes fail until ``healthy`` is set."""

    def __init__(self, store: FleetStore) -> None:
        self.store = store
        self.healthy = threading.Event()
        self.failures = 0

    def record_statuses(self, batch: list[Any]) -> int:
        return self.store.record_statuses(batch)

    def record_telemetry(self, batch: list[TelemetryRecord]) -> int:
        if not self.healthy.is_set():
            self.failures += 1
            raise RegistryError("database is down")
        return self.store.record_telemetry(batch)


def test_a_failing_database_is_retried_and_nothing_is_acknowledged_meanwhile(
    world: World,
) -> None:
    flaky = _FlakyStore(world.store)
    worker = IngestWorker(world.broker.home, "127.0.0.1", world.broker.port, flaky)
    worker.start()
    world.workers.append(worker)
    assert worker.wait_ready(15)
    dev_a = world.device("dev-a")
    message = _telemetry("dev-a")
    assert dev_a.publish(topics.device_telemetry("dev-a"), encode_message(message)) < 128
    _until(lambda: flaky.failures >= 2, what="retried writes")
    stats = worker.stats
    assert stats.pending == 1 and stats.write_error and "database is down" in stats.write_error
    flaky.healthy.set()
    _until(lambda: worker.stats.pending == 0, what="the write after the database is back")
    assert world.telemetry_ids() == [message.msg_id] and worker.stats.write_error is None


# --- retention --------------------------------------------------------------------------------


def test_retention_prunes_telemetry_past_its_bound_only(world: World) -> None:
    def record(msg_id: str, received_at: float) -> TelemetryRecord:
        message = _telemetry("dev-a")
        return TelemetryRecord(
            device_id="dev-a",
            msg_id=msg_id,
            received_at=received_at,
            sent_at=received_at,
            model_version="v1",
            requests=1,
            errors=0,
            latency_p50_ms=1.0,
            latency_p95_ms=2.0,
            latency_p99_ms=3.0,
            latency_count=1,
            payload=message.model_dump(mode="json"),
        )

    now = 10 * 86400.0
    assert world.store.record_telemetry([record("old-0001", 1.0), record("new-0001", now)]) == 2
    job = RetentionJob(world.store, retention_s=86400.0, clock=lambda: now)
    assert job.run_once() == 1
    assert world.telemetry_ids() == ["new-0001"] and job.pruned == 1 and job.last_error is None

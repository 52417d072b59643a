"""Rollout persistence on real SQLite and PostgreSQL: the shadow reports ingestion stores
(attributed by topic, idempotent), the rollout rows and their compare-and-set controls,
0006 down and up, and the leader lease (a PostgreSQL advisory lock; a file lock)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from cloud.db import alembic_config, upgrade_database
from cloud.deployment.link import Incoming
from cloud.fleet.store import FleetStore
from cloud.ingest.attribution import IngestAttribution
from cloud.ingest.batch import _Arrival, parse_arrivals
from cloud.rollout.lease import FileLease, PostgresLease, lease_for
from cloud.rollout.records import RolloutControl, RolloutState
from shared.protocol import topics
from shared.protocol.codec import encode_message
from shared.protocol.messages import LatencyStats, ServingInfo, ShadowReport, TelemetryMessage

CANDIDATE = ServingInfo(
    model_id="digits", version=2, artifact_id="ab" * 16, sha256="c" * 64, precision="int8",
    slot="b",
)  # fmt: skip


@pytest.fixture()
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture()
def store(engine: Engine) -> FleetStore:
    s = FleetStore(engine)
    for d in ("cam-1", "cam-2"):
        s.add_device(d, hardware_id="hw-1", profile="pi4", enrolled_at=1.0)
    return s


def _telemetry(device_id: str, agreement: float, msg_id: str) -> TelemetryMessage:
    lat = LatencyStats(count=40, p50_ms=1.0, p95_ms=2.0, p99_ms=3.0, max_ms=4.0)
    shadow = ShadowReport(
        candidate=CANDIDATE, serving_version=1, task="classifier", samples=40,
        agreement=agreement, candidate_latency=lat, serving_latency=lat, errors=1,
    )  # fmt: skip
    return TelemetryMessage(
        device_id=device_id, msg_id=msg_id, sent_at=5.0, interval_s=10, requests=100, errors=0,
        requests_total=100, latency=lat, cpu_percent=1.0, memory_rss_bytes=1, memory_percent=1.0,
        uptime_s=10, shadow=shadow,
    )  # fmt: skip


def test_shadow_reports_are_ingested_by_topic_and_once(store: FleetStore) -> None:
    good = _telemetry("cam-1", 0.9, "msg-00001")
    # cam-2's topic carrying a payload that claims cam-1: dropped (identity from the topic)
    forged = _telemetry("cam-1", 0.1, "msg-00002")
    arrivals = [
        _Arrival(Incoming(topics.device_telemetry(topic_of), encode_message(m), False), i, 1, 0, at)
        for i, (topic_of, m, at) in enumerate((("cam-1", good, 50.0), ("cam-2", forged, 51.0)))
    ]
    attribution = IngestAttribution()
    batch = parse_arrivals(attribution, arrivals)
    assert [s.device_id for s in batch.shadows] == ["cam-1"]
    assert attribution.dropped["identity_mismatch"] == 1
    assert store.record_shadow_reports(batch.shadows) == 1
    assert store.record_shadow_reports(batch.shadows) == 0  # a QoS 1 repeat: stored once
    windows = store.shadow_windows(["cam-1", "cam-2"], since=0.0, model_id="digits", version=2)
    assert [(w.device_id, w.samples, w.agreement, w.errors) for w in windows] == [
        ("cam-1", 40, 0.9, 1)
    ]
    assert store.shadow_windows(["cam-1"], since=0.0, model_id="digits", version=3) == []


def test_rollout_rows_and_compare_and_set_controls(store: FleetStore) -> None:
    made = store.create_rollout(
        "digits@2", {"x": 1}, [["cam-1"], ["cam-2"]], created_by="t", now=10.0, rollout_id="r1"
    )
    assert made.state is RolloutState.RUNNING and [c.size for c in made.cohorts] == [1, 1]
    assert store.active_rollout_ids() == ["r1"]
    store.request_rollout_control("r1", RolloutControl.PAUSE, allowed={RolloutState.RUNNING})
    assert not store.take_rollout_control("r1", "abort")  # not the pending one: kept
    assert store.take_rollout_control("r1", "pause")
    assert not store.take_rollout_control("r1", "pause")  # applied once
    store.update_rollout("r1", now=11.0, state=RolloutState.COMPLETED)
    assert store.active_rollout_ids() == []
    assert store.rollout_counts(["r1"]) == {"r1": {"pending": 2}}
    page = store.list_rollouts(limit=1)
    assert [r.rollout_id for r in page.items] == ["r1"] and page.next_cursor is None


def test_0006_downgrades_and_upgrades(engine: Engine, store: FleetStore) -> None:
    from alembic import command

    store.create_rollout("digits@2", {}, [["cam-1"]], created_by="t", now=1.0, rollout_id="r1")
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0005")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM devices")).scalar_one() == 2
    upgrade_database(engine)
    assert FleetStore(engine).list_rollouts().items == []


def test_postgres_lease_is_exclusive_and_ends_with_its_session(postgres_url: str) -> None:
    one, two = create_engine(postgres_url), create_engine(postgres_url)
    try:
        first, second = PostgresLease(one), PostgresLease(two)
        assert isinstance(lease_for(one), PostgresLease)
        assert first.acquire() and first.alive()
        assert not second.acquire()
        key = first.key
        assert key is not None and key == second.key  # the same schema: the same lease
        # the leader's session dies (as when its process is SIGKILLed)
        with two.connect() as conn:  # only the holder of this key (the server is shared)
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND classid = :hi AND objid = :lo AND objsubid = 1 AND granted"
                ),
                {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
            )
        assert not first.alive()  # it notices before anything else runs
        assert second.acquire() and second.alive()
        second.release()
        assert first.acquire()
        first.release()
    finally:
        one.dispose()
        two.dispose()


def test_file_lease_is_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "registry.db.leader.lock"
    first, second = FileLease(path), FileLease(path)
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire() and second.alive()
    second.release()
    eng = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    assert isinstance(lease_for(eng), FileLease)
    eng.dispose()

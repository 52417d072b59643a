"""The fleet store on real SQLite and PostgreSQL databases: every method, no mocks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine

from cloud.fleet import (
    DeploymentState,
    DeviceOutcome,
    FleetStore,
    Role,
    StatusRecord,
    TelemetryRecord,
)
from cloud.registry import Registry
from cloud.registry.schema import Base
from shared.errors import (
    ConfigError,
    InvalidIdentifierError,
    InvalidTokenError,
    NotFoundError,
    RegistryError,
    ReservedNameError,
    SecurityError,
)


@pytest.fixture()
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture()
def store(engine: Engine) -> FleetStore:
    return FleetStore(engine)


def _add(store: FleetStore, device_id: str, **kw: Any) -> None:
    kw.setdefault("hardware_id", "hw-1")
    kw.setdefault("profile", "pi4")
    kw.setdefault("enrolled_at", 100.0)
    store.add_device(device_id, **kw)


def _status(
    device_id: str, msg_id: str, sent: float, state: str = "serving", **payload: Any
) -> StatusRecord:
    body: dict[str, Any] = {"state": state, **payload}
    return StatusRecord(
        device_id, msg_id, received_at=sent + 0.5, sent_at=sent, state=state, payload=body
    )


def _telemetry(
    device_id: str,
    msg_id: str,
    received: float,
    *,
    version: str | None = "m@1",
    requests: int = 10,
    errors: int = 0,
    p50: float = 1.0,
    count: int = 10,
) -> TelemetryRecord:
    return TelemetryRecord(
        device_id=device_id,
        msg_id=msg_id,
        received_at=received,
        sent_at=received - 0.1,
        model_version=version,
        requests=requests,
        errors=errors,
        latency_p50_ms=p50,
        latency_p95_ms=p50 * 2,
        latency_p99_ms=p50 * 3,
        latency_count=count,
        payload={"requests": requests},
    )


# --- devices --------------------------------------------------------------------------------


def test_add_and_get_device(store: FleetStore) -> None:
    dev = store.add_device(
        "dev-1",
        hardware_id="hw-a",
        profile="pi4",
        groups=["lab", "eu", "lab"],
        tags=["beta"],
        enrolled_at=123.5,
    )
    assert dev.groups == ["eu", "lab"] and dev.tags == ["beta"]
    assert dev.broker_identity == "dev-1" and dev.revoked_at is None
    assert (dev.online, dev.last_seen, dev.state, dev.serving, dev.model_version) == (None,) * 5
    assert store.get_device("dev-1") == dev
    with pytest.raises(ConfigError) as info:
        store.add_device("dev-1", hardware_id="hw-a", profile=None, enrolled_at=1.0)
    assert info.value.code == "already_enrolled"
    with pytest.raises(NotFoundError):
        store.get_device("nope")


def test_bad_identifiers_are_refused(store: FleetStore) -> None:
    with pytest.raises(InvalidIdentifierError):
        store.add_device("bad/id", hardware_id="hw", profile=None, enrolled_at=1.0)
    with pytest.raises(ReservedNameError):
        store.add_device("fedge-coordinator", hardware_id="hw", profile=None, enrolled_at=1.0)
    with pytest.raises(InvalidIdentifierError):
        store.add_device("d", hardware_id="hw", profile=None, groups=["a b"], enrolled_at=1.0)
    with pytest.raises(InvalidIdentifierError):
        store.add_device("d", hardware_id="hw", profile=None, tags=["x\n"], enrolled_at=1.0)
    with pytest.raises(ConfigError):
        store.add_device("d", hardware_id="hw", profile=None, tags="abc", enrolled_at=1.0)
    with pytest.raises(InvalidIdentifierError):
        store.get_device("dev\n")
    assert store.list_devices().items == []


def test_set_labels_and_revoke(store: FleetStore) -> None:
    _add(store, "d1", groups=["a"], tags=["x"])
    dev = store.set_labels("d1", groups=["b", "c"], tags=None)
    assert dev.groups == ["b", "c"] and dev.tags == ["x"]
    dev = store.set_labels("d1", groups=None, tags=[])
    assert dev.groups == ["b", "c"] and dev.tags == []
    assert [d.device_id for d in store.list_devices(group="b").items] == ["d1"]
    assert store.list_devices(group="a").items == []
    assert store.list_devices(tag="x").items == []
    with pytest.raises(NotFoundError):
        store.set_labels("zz", groups=["a"], tags=None)

    revoked = store.mark_revoked("d1", at=50.0)
    assert revoked.revoked_at == 50.0
    assert store.mark_revoked("d1", at=60.0).revoked_at == 50.0  # idempotent
    assert store.list_devices().items == []  # revoked=False by default
    assert [d.device_id for d in store.list_devices(revoked=True).items] == ["d1"]
    assert [d.device_id for d in store.list_devices(revoked=None).items] == ["d1"]
    with pytest.raises(NotFoundError):
        store.mark_revoked("zz", at=1.0)


def test_filters_and_pagination(store: FleetStore) -> None:
    for i in range(7):
        _add(
            store,
            f"dev-{i}",
            profile="pi4" if i % 2 else "jetson",
            groups=["even" if i % 2 == 0 else "odd", "all-devs"],
            tags=["t3"] if i % 3 == 0 else [],
        )
    store.record_statuses(
        [
            _status("dev-0", "a", 10.0, serving={"version": 2, "precision": "int8"}),
            _status("dev-1", "b", 10.0, model_version="m@1"),
            _status("dev-2", "c", 10.0, state="offline"),
        ]
    )

    def ids(**kw: Any) -> list[str]:
        return [d.device_id for d in store.list_devices(**kw).items]

    assert ids(group="even") == ["dev-0", "dev-2", "dev-4", "dev-6"]
    assert ids(tag="t3") == ["dev-0", "dev-3", "dev-6"]
    assert ids(group="odd", tag="t3") == ["dev-3"]
    assert ids(profile="pi4") == ["dev-1", "dev-3", "dev-5"]
    assert ids(online=True) == ["dev-0", "dev-1"]
    assert ids(online=False) == ["dev-2", "dev-3", "dev-4", "dev-5", "dev-6"]
    assert ids(model_version="2") == ["dev-0"]
    assert ids(model_version="m@1") == ["dev-1"]
    assert ids(group="nobody") == []

    pages, cursor = [], None
    while True:
        page = store.list_devices(group="all-devs", cursor=cursor, limit=3)
        pages.append([d.device_id for d in page.items])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == [["dev-0", "dev-1", "dev-2"], ["dev-3", "dev-4", "dev-5"], ["dev-6"]]
    with pytest.raises(ConfigError):
        store.list_devices(limit=0)


# --- statuses and telemetry -----------------------------------------------------------------


def test_statuses_repeats_and_unknown_devices_are_skipped(store: FleetStore) -> None:
    _add(store, "d1")
    s1 = _status("d1", "m1", 10.0)
    assert store.record_statuses([s1, s1, _status("ghost", "m1", 10.0)]) == 1
    assert store.record_statuses([s1]) == 0  # a QoS 1 repeat
    assert store.record_statuses([s1, _status("d1", "m2", 11.0)]) == 1
    assert store.record_statuses([]) == 0
    assert store.record_statuses([_status("ghost", "x", 1.0)]) == 0
    history = store.status_history("d1")
    assert [h.msg_id for h in history] == ["m2", "m1"]
    assert history[1] == s1
    assert [h.msg_id for h in store.status_history("d1", limit=1)] == ["m2"]
    with pytest.raises(NotFoundError):
        store.status_history("ghost")


def test_latest_state_only_moves_forward(store: FleetStore) -> None:
    _add(store, "d1")
    newer = _status("d1", "n", 20.0, serving={"version": 5, "precision": "fp16"})
    older = _status("d1", "o", 10.0, state="updating", model_version="m@1")
    # within one batch the newest by sent_at wins, whatever the order
    store.record_statuses([newer, older])
    dev = store.get_device("d1")
    assert dev.state == "serving" and dev.model_version == "5" and dev.online is True
    assert dev.serving == {"version": 5, "precision": "fp16"}
    assert dev.last_seen == 20.5
    # an older status in a later batch does not overwrite
    store.record_statuses([_status("d1", "o2", 15.0, state="failed")])
    dev = store.get_device("d1")
    assert dev.state == "serving" and dev.model_version == "5"
    # a status without serving uses the label
    store.record_statuses([_status("d1", "n2", 30.0, state="idle", model_version="m@2")])
    dev = store.get_device("d1")
    assert (dev.state, dev.serving, dev.model_version) == ("idle", None, "m@2")


def test_offline_last_will_sets_online_false(store: FleetStore) -> None:
    _add(store, "d1")
    store.record_statuses([_status("d1", "a", 10.0)])
    assert store.get_device("d1").online is True
    store.record_statuses([_status("d1", "lw", 11.0, state="offline")])
    dev = store.get_device("d1")
    assert dev.online is False and dev.state == "offline"


def test_last_seen_never_moves_back(store: FleetStore) -> None:
    _add(store, "d1")
    store.record_telemetry([_telemetry("d1", "t1", 50.0)])
    assert store.get_device("d1").last_seen == 50.0
    store.record_statuses([_status("d1", "s", 5.0)])  # received 5.5 < 50
    dev = store.get_device("d1")
    assert dev.last_seen == 50.0 and dev.state == "serving"
    store.record_telemetry([_telemetry("d1", "t2", 60.0), _telemetry("d1", "t3", 55.0)])
    assert store.get_device("d1").last_seen == 60.0


def test_telemetry_store_latest_aggregates_and_prune(store: FleetStore) -> None:
    _add(store, "d1")
    _add(store, "d2")
    batch = [
        _telemetry("d1", "a", 100.0, requests=10, errors=1, p50=1.0),
        _telemetry("d1", "b", 110.0, requests=30, errors=0, p50=3.0),
        _telemetry("d2", "a", 105.0, requests=60, errors=2, p50=2.0),
        _telemetry("d2", "z", 105.0, version="m@2", requests=0, errors=0, p50=0.0, count=0),
        _telemetry("d1", "old", 10.0, requests=1000, errors=1000, p50=99.0),
        _telemetry("ghost", "a", 100.0),
    ]
    assert store.record_telemetry(batch + batch[:2]) == 5
    assert store.record_telemetry(batch) == 0
    latest = store.latest_telemetry("d1")
    assert latest is not None and latest.msg_id == "b" and latest.payload == {"requests": 30}
    assert store.latest_telemetry("d2") is not None
    _add(store, "d3")
    assert store.latest_telemetry("d3") is None

    aggs = store.telemetry_aggregates(since=50.0)
    assert [a.model_version for a in aggs] == ["m@1", "m@2"]
    m1, m2 = aggs
    assert (m1.devices, m1.requests, m1.errors) == (2, 100, 3)
    assert m1.error_rate == pytest.approx(0.03)
    assert m1.latency_p50_ms == pytest.approx((10 * 1 + 30 * 3 + 60 * 2) / 100)
    assert m1.latency_p95_ms == pytest.approx(2 * (10 * 1 + 30 * 3 + 60 * 2) / 100)
    assert m1.latency_p99_ms == pytest.approx(3 * (10 * 1 + 30 * 3 + 60 * 2) / 100)
    assert (m2.devices, m2.requests, m2.error_rate, m2.latency_p50_ms) == (1, 0, 0.0, None)
    only = store.telemetry_aggregates(since=0.0, model_version="m@1")
    assert len(only) == 1 and only[0].requests == 1100
    assert store.telemetry_aggregates(since=1000.0) == []

    assert store.prune_telemetry(older_than=100.0) == 1
    assert store.prune_telemetry(older_than=100.0) == 0
    assert store.telemetry_aggregates(since=0.0, model_version="m@1")[0].requests == 100


def test_large_batches_are_chunked(store: FleetStore) -> None:
    _add(store, "d1")
    batch = [_status("d1", f"m{i}", float(i)) for i in range(1200)]
    assert store.record_statuses(batch) == 1200
    assert store.record_statuses(batch) == 0
    tel = [_telemetry("d1", f"t{i}", float(i)) for i in range(1100)]
    assert store.record_telemetry(tel) == 1100
    assert store.get_device("d1").last_seen == 1199.5


# --- tokens ---------------------------------------------------------------------------------


def _all_values(engine: Engine) -> list[str]:
    values: list[str] = []
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                values.extend(str(v) for v in row)
    return values


def test_secrets_are_never_stored(store: FleetStore, engine: Engine) -> None:
    enroll_secret, record = store.create_enrollment_token(
        "d1", hardware_id="hw", profile="pi4", groups=["g"], tags=["t"], ttl_s=60, now=1.0
    )
    api_secret, api = store.create_api_token(Role.ADMIN, name="ops", now=1.0)
    assert len(enroll_secret) >= 43 and len(api_secret) >= 43  # 32 random bytes
    values = _all_values(engine)
    assert values  # the tokens are stored...
    for secret in (enroll_secret, api_secret):
        assert not any(secret in v for v in values)  # ...but never their secrets
    import hashlib

    assert hashlib.sha256(api_secret.encode()).hexdigest() in values
    assert record.device_id == "d1" and record.expires_at == 61.0 and record.used_at is None
    assert api.role is Role.ADMIN


def test_enrollment_tokens_are_one_time(store: FleetStore) -> None:
    secret, record = store.create_enrollment_token(
        "d1", hardware_id="hw", profile=None, groups=["g"], ttl_s=60, now=100.0
    )
    used = store.redeem_enrollment_token(secret, now=110.0)
    assert used.token_id == record.token_id and used.used_at == 110.0
    assert used.groups == ["g"] and used.hardware_id == "hw"
    with pytest.raises(InvalidTokenError) as info:
        store.redeem_enrollment_token(secret, now=111.0)
    assert info.value.code == "token_used"
    assert isinstance(info.value, SecurityError)

    late, _ = store.create_enrollment_token("d2", hardware_id="hw", profile=None, ttl_s=10, now=0)
    with pytest.raises(InvalidTokenError) as info:
        store.redeem_enrollment_token(late, now=10.0)  # expires_at is exclusive
    assert info.value.code == "token_expired"
    for bogus in ("not-a-token", ""):
        with pytest.raises(InvalidTokenError) as info:
            store.redeem_enrollment_token(bogus, now=1.0)
        assert info.value.code == "invalid_token"
    with pytest.raises(ConfigError):
        store.create_enrollment_token("d3", hardware_id="hw", profile=None, ttl_s=0, now=0)
    with pytest.raises(InvalidIdentifierError):
        store.create_enrollment_token("d 3", hardware_id="hw", profile=None, ttl_s=5, now=0)


def _race(store: FleetStore, secret: str) -> list[str]:
    """Two threads redeem ``secret`` at once; what each got."""
    barrier = threading.Barrier(2)
    results: list[str] = []
    lock = threading.Lock()

    def redeem() -> None:
        barrier.wait()
        try:
            store.redeem_enrollment_token(secret, now=1.0)
            outcome = "won"
        except InvalidTokenError as exc:
            outcome = exc.code
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=redeem) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return sorted(results)


def test_concurrent_redeem_one_wins(store: FleetStore) -> None:
    for round_ in range(5):
        secret, _ = store.create_enrollment_token(
            f"d{round_}", hardware_id="hw", profile=None, ttl_s=60, now=0.0
        )
        assert _race(store, secret) == ["token_used", "won"]


def test_api_tokens(store: FleetStore) -> None:
    viewer_secret, viewer = store.create_api_token(Role.VIEWER, name="dash", now=1.0)
    op_secret, op = store.create_api_token(Role.OPERATOR, name="ci", now=2.0)
    assert store.authenticate(viewer_secret) == viewer
    assert store.authenticate(op_secret) == op
    assert store.authenticate("wrong") is None
    assert store.authenticate("") is None
    assert [t.token_id for t in store.list_api_tokens()] == [viewer.token_id, op.token_id]

    revoked = store.revoke_api_token(op.token_id, at=5.0)
    assert revoked.revoked_at == 5.0
    assert store.revoke_api_token(op.token_id, at=9.0).revoked_at == 5.0  # idempotent
    assert store.authenticate(op_secret) is None
    assert store.authenticate(viewer_secret) == viewer
    assert {t.token_id: t.revoked_at for t in store.list_api_tokens()} == {
        viewer.token_id: None,
        op.token_id: 5.0,
    }
    with pytest.raises(NotFoundError):
        store.revoke_api_token("nope", at=1.0)
    with pytest.raises(ConfigError):
        store.create_api_token("superuser", name="x", now=1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        store.create_api_token(Role.ADMIN, name="", now=1.0)


# --- deployments and audit ------------------------------------------------------------------


def test_deployments_with_outcomes(store: FleetStore) -> None:
    dep = store.create_deployment("m@3", ["d2", "d1", "d2"], created_by="tok", now=10.0)
    assert dep.state is DeploymentState.PENDING and dep.created_by == "tok"
    assert [(o.device_id, o.outcome) for o in dep.devices] == [("d1", "pending"), ("d2", "pending")]
    assert store.get_deployment(dep.deployment_id) == dep

    dep = store.update_deployment(
        dep.deployment_id,
        state=DeploymentState.RUNNING,
        outcomes=[DeviceOutcome("d1", "committed", precision="int8", encoding="delta")],
        bytes_sent=1234,
    )
    assert dep.state is DeploymentState.RUNNING and dep.bytes_sent == 1234
    assert dep.devices[0] == DeviceOutcome("d1", "committed", None, "int8", "delta")
    assert dep.devices[1].outcome == "pending"
    dep = store.update_deployment(
        dep.deployment_id,
        state=DeploymentState.FAILED,
        outcomes=[DeviceOutcome("d2", "timeout", reason="no ack in 60 s")],
        finished_at=99.0,
        error="1 device failed",
    )
    assert (dep.state, dep.finished_at, dep.error) == (
        DeploymentState.FAILED,
        99.0,
        "1 device failed",
    )
    assert dep.devices[1] == DeviceOutcome("d2", "timeout", "no ack in 60 s")
    assert dep.devices[0].outcome == "committed"
    assert store.get_deployment(dep.deployment_id) == dep
    with pytest.raises(NotFoundError):
        store.get_deployment("nope")
    with pytest.raises(NotFoundError):
        store.update_deployment("nope", state=DeploymentState.CANCELLED)


def test_deployments_page_newest_first(store: FleetStore) -> None:
    made = [
        store.create_deployment("m@1", ["d1"], created_by="cli", now=float(t))
        for t in (1, 2, 2, 3, 4, 5, 6)  # a tie on created_at
    ]
    seen, pages, cursor = [], 0, None
    while True:
        page = store.list_deployments(cursor=cursor, limit=3)
        pages += 1
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == 7 and {d.deployment_id for d in seen} == {d.deployment_id for d in made}
    assert [d.created_at for d in seen] == [6, 5, 4, 3, 2, 2, 1]
    assert all(d.devices == [DeviceOutcome("d1", "pending")] for d in seen)
    with pytest.raises(ConfigError) as info:
        store.list_deployments(cursor="%%%")
    assert info.value.code == "invalid_cursor"


def test_audit_log_paging(store: FleetStore) -> None:
    for i in range(8):
        store.audit(
            actor="tok" if i % 2 else "cli",
            action="devices.revoke",
            target=f"d{i}",
            result="ok",
            at=100.0 + i // 2,  # ties on `at`: the id breaks them
            detail={"i": i} if i % 2 else None,
        )
    entries, pages, cursor = [], [], None
    while True:
        page = store.list_audit(cursor=cursor, limit=3)
        pages.append(len(page.items))
        entries.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == [3, 3, 2]
    assert [e.target for e in entries] == [f"d{i}" for i in range(7, -1, -1)]
    assert entries[0].detail == {"i": 7} and entries[1].detail is None
    assert entries[0].actor == "tok" and entries[1].actor == "cli"
    assert len({e.entry_id for e in entries}) == 8
    with pytest.raises(ConfigError):
        store.list_audit(cursor="bm90LWEtY3Vyc29y")  # "not-a-cursor"


# --- construction and errors ----------------------------------------------------------------


def test_from_registry_shares_the_database(database_url: str, tmp_path: Path) -> None:
    reg = Registry(database_url, tmp_path / "artifacts")
    try:
        store = FleetStore.from_registry(reg)
        assert store.engine is reg.engine
        _add(store, "d1")
        with reg.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM devices")).scalar_one() == 1
    finally:
        reg.close()


def test_database_errors_become_registry_errors(store: FleetStore, engine: Engine) -> None:
    _add(store, "d1")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE device_labels"))
    with pytest.raises(RegistryError) as info:
        store.list_devices(group="g")
    assert info.value.code == "registry_error"
    assert "\n" not in info.value.message


# --- federated runs ---------------------------------------------------------------------------


def _fed_round(n: int, accuracy: float = 0.5, **kw: Any) -> Any:
    from cloud.fleet.records import FederationRound

    values: dict[str, Any] = {
        "round": n,
        "accuracy": accuracy,
        "loss": 1.0 / n,
        "participants": 2,
        "rejected": 0,
        "failed": 0,
        "bytes_up": 3_000_000_000,  # over 32 bits: BigInteger on both backends
        "bytes_down": 1000,
        "seconds": 1.5,
        "version": f"m@{n}",
        **kw,
    }
    return FederationRound(**values)


def test_federated_runs_with_rounds(store: FleetStore) -> None:
    from cloud.fleet.records import FederationRunState

    run = store.create_run("run-a", plan={"rounds": 3}, created_by="tok", now=10.0)
    assert run.state is FederationRunState.PENDING and run.rounds == []
    assert (run.plan, run.created_by, run.name, run.best_version) == (
        {"rounds": 3},
        "tok",
        None,
        None,
    )
    with pytest.raises(ConfigError) as dup:
        store.create_run("run-a", plan={}, created_by="tok", now=11.0)
    assert dup.value.code == "run_exists"
    with pytest.raises(ConfigError):
        store.create_run("../x", plan={}, created_by="tok", now=11.0)

    running = store.update_run("run-a", state=FederationRunState.RUNNING, started_at=12.0)
    assert (running.state, running.started_at, running.finished_at) == ("running", 12.0, None)
    # Rounds: idempotent per (run, round), returned in round order, NaN stored as None.
    assert store.add_round("run-a", _fed_round(2, accuracy=0.8)) is True
    assert store.add_round("run-a", _fed_round(1, accuracy=0.6)) is True
    assert store.add_round("run-a", _fed_round(1, accuracy=0.99)) is False
    assert store.add_round("run-a", _fed_round(3, accuracy=float("nan"), loss=float("inf")))
    got = store.get_run("run-a")
    assert [r.round for r in got.rounds] == [1, 2, 3]
    assert got.rounds[0].accuracy == 0.6  # the repeat did not overwrite
    assert got.rounds[0].bytes_up == 3_000_000_000
    assert (got.rounds[2].accuracy, got.rounds[2].loss) == (None, None)
    with pytest.raises(NotFoundError):
        store.add_round("nope", _fed_round(1))
    with pytest.raises(ConfigError):
        store.add_round("run-a", _fed_round(-1))

    done = store.update_run(
        "run-a",
        state=FederationRunState.STOPPED,
        finished_at=20.0,
        best_version="m@2",
        name="m",
        error="x" * 3000,
    )
    assert (done.state, done.best_version, done.name, done.finished_at) == (
        "stopped",
        "m@2",
        "m",
        20.0,
    )
    assert done.error is not None and len(done.error) == 2000
    assert done.state.final and not FederationRunState.STOPPING.final
    with pytest.raises(ConfigError):
        store.update_run("run-a", state="nope")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        store.get_run("nope")
    with pytest.raises(NotFoundError):
        store.update_run("nope", state=FederationRunState.FAILED)


def test_federated_runs_page_newest_first(store: FleetStore) -> None:
    for i in range(5):
        store.create_run(f"run-{i}", plan={}, created_by="cli", now=float(i // 2))
        store.add_round(f"run-{i}", _fed_round(1))
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = store.list_runs(cursor=cursor, limit=2)
        seen += [r.run_id for r in page.items]
        assert all(len(r.rounds) == 1 for r in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["run-4", "run-3", "run-2", "run-1", "run-0"]
    with pytest.raises(ConfigError):
        store.list_runs(cursor="bm90LWEtY3Vyc29y")
    assert store.list_runs(limit=1).next_cursor is not None

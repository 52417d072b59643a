"""Migration 0007 (deployment runners) on real SQLite and PostgreSQL: a 0006 database that
holds open deployments upgrades with its rows kept (their runner unknown, so crash recovery
treats them as orphaned), matches the models, and downgrades back to 0006."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

import cloud.fleet.schema  # noqa: F401  (the fleet tables on Base.metadata)
from cloud.db import alembic_config, upgrade_database
from cloud.fleet.records import DeploymentState
from cloud.fleet.store import FleetStore
from cloud.fleet.sync import fail_interrupted_deployments
from cloud.registry import Registry
from cloud.registry.schema import Base

RUNNER_COLUMNS = {"runner", "heartbeat_at"}


@pytest.fixture()
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _columns(engine: Engine, table: str) -> set[str]:
    with engine.connect() as conn:
        return {c["name"] for c in inspect(conn).get_columns(table)}


def _diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))


def _rows(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(
            conn.execute(text("SELECT deployment_id, state FROM deployments")).tuples().all()
        )


def test_a_0006_database_with_open_deployments_upgrades_and_downgrades(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0006")
        for deployment_id, state, created_at in (
            ("d-run", "running", 1.0),
            ("d-pend", "pending", 2.0),
            ("d-done", "succeeded", 3.0),
        ):
            conn.execute(
                text(
                    "INSERT INTO deployments (deployment_id, version_ref, state, created_at,"
                    " created_by) VALUES (:i, 'm@1', :s, :c, 'cli')"
                ),
                {"i": deployment_id, "s": state, "c": created_at},
            )
    assert _revision(engine) == "0006"
    assert not RUNNER_COLUMNS & _columns(engine, "deployments")
    diff = _diff(engine)
    assert {(d[2], d[3].name) for d in diff if d[0] == "add_column"} == {
        ("deployments", c) for c in RUNNER_COLUMNS
    }

    upgrade_database(engine)

    assert _revision(engine) == "0007"
    assert _columns(engine, "deployments") >= RUNNER_COLUMNS
    assert _diff(engine) == []
    before = {"d-run": "running", "d-pend": "pending", "d-done": "succeeded"}
    assert _rows(engine) == before
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT runner, heartbeat_at FROM deployments")).tuples().all()
    assert set(kept) == {(None, None)}

    # rows from before have no runner: open ones count as orphaned once past the bound
    registry = Registry(database_url, tmp_path / "artifacts")
    try:
        store = FleetStore.from_registry(registry)
        assert sorted(fail_interrupted_deployments(store, now=100.0)) == ["d-pend", "d-run"]
        failed = store.get_deployment("d-run")
        assert failed.state is DeploymentState.FAILED
        assert "no heartbeat" in (failed.error or "")
    finally:
        registry.close()

    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0006")
    assert _revision(engine) == "0006"
    assert not RUNNER_COLUMNS & _columns(engine, "deployments")
    assert _rows(engine) == {"d-run": "failed", "d-pend": "failed", "d-done": "succeeded"}

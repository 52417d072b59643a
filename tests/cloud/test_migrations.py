"""Alembic migrations on real SQLite and PostgreSQL: empty → head, a pre-migration registry is
stamped and upgraded with its rows kept, head equals the models, upgrading twice is a no-op."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

import cloud.fleet.schema  # noqa: F401  (the fleet tables on Base.metadata)
from cloud.db import alembic_config, upgrade_database
from cloud.registry import Registry
from cloud.registry.schema import ArtifactRow, Base, ModelRow, VersionRow
from shared.errors import RegistryError

REGISTRY_TABLES = {"models", "versions", "artifacts"}
FLEET_TABLES = {
    "devices",
    "device_labels",
    "device_status",
    "telemetry",
    "enrollment_tokens",
    "api_tokens",
    "deployments",
    "deployment_devices",
    "audit_log",
}
FEDERATION_TABLES = {"federation_runs", "federation_rounds"}
#: The tables 0005 and later add (compared separately by the tests of those revisions).
VARIANT_TABLES = {"variant_measurements"} | {
    "rollouts",  # 0006: staged rollouts and the shadow evidence
    "rollout_cohorts",
    "rollout_devices",
    "rollout_events",
    "rollout_policies",
    "shadow_reports",
}
HEAD = "0007"
#: The enrollment-record columns 0004 adds to ``devices`` (no private key among them).
CREDENTIAL_COLUMNS = {
    "box_public",
    "signing_public",
    "password_hash",
    "tls_serial",
    "supernode_public",
}


@pytest.fixture()
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


def _tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))


#: Columns 0005 and later add to existing tables: the variant chosen per deployment device;
#: a deployment's runner and heartbeat (0007, tests/cloud/test_migration_0007.py).
VARIANT_COLUMNS = {
    ("deployment_devices", "variant"),
    ("deployments", "runner"),
    ("deployments", "heartbeat_at"),
}


def _diff_before_0005(engine: Engine) -> list[Any]:
    """The diff without the tables and columns of 0005 and later (checked by their own tests)."""
    return [
        d
        for d in _diff(engine)
        if not (d[0] == "add_table" and d[1].name in VARIANT_TABLES)
        and not (d[0] == "add_index" and d[1].table.name in VARIANT_TABLES)
        and not (d[0] == "add_column" and (d[2], d[3].name) in VARIANT_COLUMNS)
    ]


def test_one_linear_history() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [HEAD]
    assert [r.revision for r in script.walk_revisions()] == [
        "0007",
        "0006",
        "0005",
        "0004",
        "0003",
        "0002",
        "0001",
    ]


def test_empty_database_goes_to_head(engine: Engine) -> None:
    upgrade_database(engine)
    assert _revision(engine) == HEAD
    assert _tables(
        engine
    ) == REGISTRY_TABLES | FLEET_TABLES | FEDERATION_TABLES | VARIANT_TABLES | {"alembic_version"}


def test_head_matches_the_models(engine: Engine) -> None:
    upgrade_database(engine)
    assert _diff(engine) == []


def test_0001_is_exactly_the_old_registry_schema(engine: Engine) -> None:
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    assert _tables(engine) == REGISTRY_TABLES | {"alembic_version"}
    # Against the full models, only the fleet tables are missing: the registry part matches.
    diff = _diff_before_0005(engine)
    assert diff
    assert {d[0] for d in diff} == {"add_table", "add_index"}
    assert {d[1].name for d in diff if d[0] == "add_table"} == FLEET_TABLES | FEDERATION_TABLES
    assert {d[1].table.name for d in diff if d[0] == "add_index"} <= (
        FLEET_TABLES | FEDERATION_TABLES
    )


def test_upgrade_twice_is_a_no_op(engine: Engine) -> None:
    upgrade_database(engine)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO models (name, created_at) VALUES ('m', :t)"),
            {"t": datetime.now(UTC)},
        )
    upgrade_database(engine)
    assert _revision(engine) == HEAD
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM models")).scalar_one() == 1
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    assert _diff(engine) == []


def test_pre_migration_registry_is_stamped_and_upgraded(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    # What the previous code made: Base.metadata.create_all of the registry tables only.
    old = [ModelRow.__table__, VersionRow.__table__, ArtifactRow.__table__]
    Base.metadata.create_all(engine, tables=old)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO models (id, name, created_at) VALUES (1, 'legacy', :t)"), {"t": now}
        )
        conn.execute(
            text(
                "INSERT INTO versions (id, model_id, number, source, spec, data, metrics,"
                " created_at) VALUES (1, 1, 1, 'trained', '{\"arch\": \"mlp\"}', '{}', '{}', :t)"
            ),
            {"t": now},
        )
        conn.execute(
            text(
                "INSERT INTO artifacts (id, version_id, format, precision, sha256, bytes,"
                " status, metrics, created_at) VALUES (1, 1, 'torch', 'fp32', :h, 7,"
                " 'source', '{}', :t)"
            ),
            {"h": "ab" * 32, "t": now},
        )
    assert _revision(engine) is None

    upgrade_database(engine)

    assert _revision(engine) == HEAD
    assert _tables(
        engine
    ) == REGISTRY_TABLES | FLEET_TABLES | FEDERATION_TABLES | VARIANT_TABLES | {"alembic_version"}
    assert _diff(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM models")).scalars().all() == ["legacy"]
        assert conn.execute(text("SELECT count(*) FROM versions")).scalar_one() == 1
        assert conn.execute(text("SELECT sha256 FROM artifacts")).scalar_one() == "ab" * 32

    # The registry opens it (upgrade again: no-op) and reads the old rows.
    reg = Registry(database_url, tmp_path / "artifacts")
    try:
        version = reg.get_version("legacy@1")
        assert version.spec == {"arch": "mlp"}
        assert version.artifact("torch", "fp32").sha256 == "ab" * 32
    finally:
        reg.close()


def test_registry_creates_every_table(database_url: str, tmp_path: Path) -> None:
    reg = Registry(database_url, tmp_path / "artifacts")
    try:
        assert _tables(
            reg.engine
        ) == REGISTRY_TABLES | FLEET_TABLES | FEDERATION_TABLES | VARIANT_TABLES | {
            "alembic_version"
        }
        assert _revision(reg.engine) == HEAD
    finally:
        reg.close()


def test_unknown_newer_revision_is_a_clear_error(engine: Engine) -> None:
    upgrade_database(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(RegistryError, match="cannot migrate"):
        upgrade_database(engine)


def test_0002_database_upgrades_to_0003_with_its_rows_kept(engine: Engine) -> None:
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
        conn.execute(
            text(
                "INSERT INTO deployments (deployment_id, version_ref, state, created_at,"
                " created_by) VALUES ('d1', 'm@1', 'succeeded', 1.0, 'cli')"
            )
        )
    assert _revision(engine) == "0002"
    assert _tables(engine) == REGISTRY_TABLES | FLEET_TABLES | {"alembic_version"}
    # Against the models only the federation tables (and their index) and the 0004
    # credential columns are missing.
    diff = _diff_before_0005(engine)
    assert {d[0] for d in diff} == {"add_table", "add_index", "add_column"}
    assert {d[1].name for d in diff if d[0] == "add_table"} == FEDERATION_TABLES
    assert {d[3].name for d in diff if d[0] == "add_column"} == CREDENTIAL_COLUMNS

    upgrade_database(engine)

    assert _revision(engine) == HEAD
    assert _tables(engine) == (
        REGISTRY_TABLES | FLEET_TABLES | FEDERATION_TABLES | VARIANT_TABLES | {"alembic_version"}
    )
    assert _diff(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT deployment_id FROM deployments")).scalar_one() == "d1"


def test_0003_downgrades_to_0002(engine: Engine) -> None:
    from alembic import command

    upgrade_database(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    assert _revision(engine) == "0002"
    assert _tables(engine) == REGISTRY_TABLES | FLEET_TABLES | {"alembic_version"}


def _columns(engine: Engine, table: str) -> set[str]:
    with engine.connect() as conn:
        return {c["name"] for c in inspect(conn).get_columns(table)}


def test_0003_database_upgrades_to_0004_with_its_devices_kept(engine: Engine) -> None:
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0003")
        conn.execute(
            text(
                "INSERT INTO devices (id, hardware_id, groups, tags, broker_identity,"
                " enrolled_at, revoked_at) VALUES ('cam-1', 'hw-a', '[\"lobby\"]', '[]',"
                " 'cam-1', 5.0, 7.0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO device_labels (device_id, kind, value)"
                " VALUES ('cam-1', 'group', 'lobby')"
            )
        )
    assert _revision(engine) == "0003"
    assert not _columns(engine, "devices") & CREDENTIAL_COLUMNS
    diff = _diff_before_0005(engine)
    assert {d[0] for d in diff} == {"add_column"}
    assert {(d[2], d[3].name) for d in diff} == {("devices", c) for c in CREDENTIAL_COLUMNS}

    upgrade_database(engine)

    assert _revision(engine) == HEAD
    assert _columns(engine, "devices") >= CREDENTIAL_COLUMNS
    assert _diff(engine) == []
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT id, hardware_id, enrolled_at, revoked_at, box_public FROM devices")
        ).one()
        assert tuple(row) == ("cam-1", "hw-a", 5.0, 7.0, None)  # no record until imported
        assert conn.execute(text("SELECT value FROM device_labels")).scalar_one() == "lobby"


def test_0004_downgrades_to_0003(engine: Engine) -> None:
    from alembic import command

    upgrade_database(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO devices (id, hardware_id, groups, tags, broker_identity,"
                " enrolled_at, box_public) VALUES ('cam-1', 'hw-a', '[]', '[]', 'cam-1', 5.0,"
                " 'pub')"
            )
        )
        command.downgrade(alembic_config(conn), "0003")
    assert _revision(engine) == "0003"
    assert not _columns(engine, "devices") & CREDENTIAL_COLUMNS
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM devices")).scalar_one() == "cam-1"


def test_0004_database_upgrades_to_0005_and_back(engine: Engine) -> None:
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0004")
    assert _revision(engine) == "0004"
    diff = _diff(engine)
    assert {d[1].name for d in diff if d[0] == "add_table"} == VARIANT_TABLES
    assert {(d[2], d[3].name) for d in diff if d[0] == "add_column"} >= VARIANT_COLUMNS
    upgrade_database(engine)
    assert _revision(engine) == HEAD
    assert _tables(engine) >= VARIANT_TABLES
    assert "variant" in _columns(engine, "deployment_devices")
    assert _diff(engine) == []
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    assert _revision(engine) == "0004"
    assert not VARIANT_TABLES & _tables(engine)
    assert "variant" not in _columns(engine, "deployment_devices")

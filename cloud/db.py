"""The cloud database's schema: Alembic migrations, run programmatically.

:func:`upgrade_database` brings any database to the newest revision (``head``) in one
transaction. A database made before migrations existed (the registry's tables, created by
``Base.metadata.create_all``, and no ``alembic_version`` table) is stamped ``0001`` first,
then upgraded: its rows are kept, never recreated. Running it again is a no-op.

The migrations live in ``cloud/migrations`` (``env.py``, ``versions/``); no ``alembic.ini`` is
needed. After changing a schema module, write the next revision by hand (or generate it with
``alembic.command.revision(alembic_config(conn), "message", autogenerate=True)`` on a database
at head); ``tests/cloud/test_migrations.py`` fails while head and the models differ.

Needs SQLite 3.35 or newer (the fleet store uses ``INSERT … RETURNING``).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from shared.errors import RegistryError

__all__ = ["MIGRATIONS_DIR", "alembic_config", "upgrade_database"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The revision whose tables ``create_all`` made before migrations existed.
BASELINE_REVISION = "0001"
#: A constant key for PostgreSQL's advisory lock: concurrent upgrades run one at a time.
_PG_LOCK_KEY = 0x6665646765  # "fedge"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the cloud migrations, bound to ``connection`` if given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade_database(engine: Engine) -> None:
    """Upgrade the database to ``head`` (stamping a pre-migration registry ``0001`` first).

    Raises:
        RegistryError: the database is at a revision this code does not know (made by a
            newer fedge).
        sqlalchemy.exc.SQLAlchemyError: the database cannot be read or changed (callers wrap
            it into ``RegistryError``).
    """
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # concurrent upgrades: one at a time
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            cfg = alembic_config(conn)
            tables = set(inspect(conn).get_table_names())
            if "alembic_version" not in tables and "models" in tables:
                command.stamp(cfg, BASELINE_REVISION)
            command.upgrade(cfg, "head")
    except CommandError as exc:
        raise RegistryError(f"cannot migrate the database: {str(exc).splitlines()[0]}") from exc

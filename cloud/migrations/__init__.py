"""Alembic migrations of the cloud database (run by :func:`cloud.db.upgrade_database`)."""

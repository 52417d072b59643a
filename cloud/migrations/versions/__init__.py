"""Alembic revisions, oldest first: ``0001`` the registry, ``0002`` the fleet."""

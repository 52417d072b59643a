"""``fedge cloud token create|list|revoke`` on the configured database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud.config import Settings
from cloud.fleet.store import FleetStore
from cloud.registry import Registry


def test_token_commands(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    from simulations.cli import app

    monkeypatch.setenv("FEDGE_DATABASE_URL", database_url)
    runner = CliRunner()
    made = runner.invoke(
        app, ["cloud", "token", "create", "--role", "operator", "--name", "ci", "--json"]
    )
    assert made.exit_code == 0, made.output
    body = json.loads(made.stdout)
    assert body["role"] == "operator" and body["token"] and body["id"]
    registry = Registry.from_settings(Settings())
    try:
        store = FleetStore.from_registry(registry)
        token = store.authenticate(body["token"])
        assert token is not None and token.token_id == body["id"]
        listed = runner.invoke(app, ["cloud", "token", "list", "--json"])
        assert listed.exit_code == 0
        tokens = json.loads(listed.stdout)["tokens"]
        assert [t["id"] for t in tokens] == [body["id"]]
        assert "token" not in tokens[0] and body["token"] not in listed.stdout
        revoked = runner.invoke(app, ["cloud", "token", "revoke", body["id"], "--json"])
        assert revoked.exit_code == 0 and json.loads(revoked.stdout)["revoked_at"]
        assert store.authenticate(body["token"]) is None
    finally:
        registry.close()
    bad = runner.invoke(app, ["cloud", "token", "create", "--role", "root"])
    assert bad.exit_code == 2 and "error (invalid_argument)" in bad.output
    missing = runner.invoke(app, ["cloud", "token", "revoke", "nope"])
    assert missing.exit_code == 2 and "error (not_found)" in missing.output


def test_help_lists_token(tmp_path: Path) -> None:
    from simulations.cli import app

    result = CliRunner().invoke(app, ["cloud", "token", "--help"])
    assert result.exit_code == 0 and "create" in result.output

"""The CLI's enrollments are database records; a killed coordinator's deployments are closed."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cloud.fleet.records import DeploymentState
from cloud.fleet.store import FleetStore
from cloud.fleet.sync import fail_interrupted_deployments
from cloud.registry import Registry


def test_cli_enrollment_and_revocation_reach_the_database(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from simulations.cli import app

    monkeypatch.setenv("FEDGE_HOME", str(tmp_path))
    monkeypatch.delenv("FEDGE_DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["keys", "init", "--json"]).exit_code == 0
    args = ["keys", "enroll-device", "hub-1", "--hardware-id", "hw-a", "--group", "home"]
    assert runner.invoke(app, [*args, "--json"]).exit_code == 0
    assert not (tmp_path / "keys" / "fleet.json").exists()  # the database holds the record
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    try:
        store = FleetStore.from_registry(registry)
        device = store.get_device("hub-1")
        assert (device.hardware_id, device.groups, device.revoked_at) == ("hw-a", ["home"], None)
        assert store.enrollment_records()["hub-1"].groups == ["home"]
        revoked = runner.invoke(app, ["keys", "revoke-device", "hub-1", "--json"])
        assert revoked.exit_code == 0, revoked.output
        assert store.get_device("hub-1").revoked_at is not None
        assert store.enrollment_records()["hub-1"].revoked
    finally:
        registry.close()


def test_interrupted_deployments_fail(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "store")
    try:
        store = FleetStore.from_registry(registry)
        store.add_device("cam-1", hardware_id="hw-a", profile=None, enrolled_at=1.0)
        running = store.create_deployment("m@1", ["cam-1"], created_by="cli", now=1.0)
        store.update_deployment(running.deployment_id, state=DeploymentState.RUNNING)
        done = store.create_deployment("m@1", ["cam-1"], created_by="cli", now=2.0)
        store.update_deployment(done.deployment_id, state=DeploymentState.SUCCEEDED)
        assert fail_interrupted_deployments(store, now=3.0) == [running.deployment_id]
        failed = store.get_deployment(running.deployment_id)
        assert failed.state is DeploymentState.FAILED and "interrupted" in (failed.error or "")
        assert store.get_deployment(done.deployment_id).state is DeploymentState.SUCCEEDED
    finally:
        registry.close()

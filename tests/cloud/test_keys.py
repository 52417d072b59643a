"""cloud.keys + ``fedge keys``/``fedge broker`` CLIs: files, permissions, rotation, revocation."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud.broker_cli import broker_app
from cloud.keys import KeyHome
from cloud.keys_cli import keys_app
from edge.keystore import load_device_keys
from shared.artifacts import ArtifactBuilder, Precision, sign_manifest, verify_manifest
from shared.errors import ConfigError, RevokedKeyError

runner = CliRunner()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cli(app, *args: str) -> dict:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_init_enroll_rotate_revoke_via_cli(tmp_path: Path) -> None:
    home = KeyHome(tmp_path / "fedge-home" / "keys")  # FEDGE_HOME set by tests/conftest.py
    out = _cli(keys_app, "init")
    assert out["root_key_id"] and home.exists()
    assert runner.invoke(keys_app, ["init"]).exit_code == 2  # never overwrites keys
    private = [p for p in home.path.rglob("*") if p.suffix in (".key", ".password", ".hash")]
    assert private and all(_mode(p) == 0o600 for p in private)
    assert _mode(home.fleet_path.parent / "root" / "root.pub") == 0o644

    _cli(keys_app, "enroll-device", "dev-a", "--hardware-id", "hw-a", "--group", "kitchen")
    bundle = home.device_dir("dev-a")
    assert all(_mode(bundle / n) == 0o600 for n in ("signing.key", "box.key", "client.key"))
    device = load_device_keys(bundle)
    assert device.trust.root == home.root_public() and device.groups == {"kitchen"}
    assert "PRIVATE" not in repr(device)

    rotated = _cli(keys_app, "rotate-release", "--revoke-old")
    NOW = int(time.time())  # after the keys were issued
    assert rotated["revocations_version"] == 2

    # The old key is refused by the device once the list reaches it; the new one works.
    release, cert = home.release_signer()
    built = ArtifactBuilder().build(
        b"model" * 100,
        model_id="m",
        version=2,
        precision=Precision.INT8,
        hardware_ids=["hw-a"],
        recipients={"dev-a": device.box_key.public_key},
        rollout_id="r",
        now=NOW,
    )
    env = sign_manifest(built.manifest, release, certificate=cert)
    trust = home.trust_store()
    assert (
        verify_manifest(
            env, trust, device_id="dev-a", hardware_id="hw-a", floor_version=1, now=NOW + 1
        ).manifest.version
        == 2
    )
    old_key = home.path / "release" / f"{rotated['old_release_key_id'][:16]}.key"
    from shared.artifacts import Envelope
    from shared.crypto import SigningKey

    old_cert = Envelope.model_validate_json(old_key.with_suffix(".cert").read_text())
    old_env = sign_manifest(
        built.manifest, SigningKey.from_pem(old_key.read_bytes()), certificate=old_cert
    )
    with pytest.raises(RevokedKeyError):
        verify_manifest(
            old_env, trust, device_id="dev-a", hardware_id="hw-a", floor_version=1, now=NOW + 1
        )


def test_broker_config_and_device_revocation(tmp_path: Path) -> None:
    _cli(keys_app, "init")
    _cli(keys_app, "enroll-device", "dev-a", "--hardware-id", "hw-a", "--group", "g1")
    out = _cli(broker_app, "config", "--port", "18883")
    acl = Path(out["acl"]).read_text()
    assert "user dev-a" in acl and "topic read fedge/v1/groups/g1/#" in acl
    assert "topic write fedge/v1/devices/dev-a/status" in acl
    assert "allow_anonymous false" in Path(out["conf"]).read_text()
    assert "dev-a:$7$" in Path(out["passwd"]).read_text()
    assert _mode(Path(out["passwd"])) == 0o600
    revoked = _cli(keys_app, "revoke-device", "dev-a")
    assert revoked["broker_reloaded"] is False  # no broker running here
    assert "dev-a" not in Path(out["passwd"]).read_text()
    assert "user dev-a" not in Path(out["acl"]).read_text()


def test_help_everywhere_and_bad_ids() -> None:
    for app, cmds in (
        (keys_app, ["init", "rotate-release", "revoke", "enroll-device", "revoke-device"]),
        (broker_app, ["config", "run", "reload"]),
    ):
        for cmd in cmds:
            result = runner.invoke(app, [cmd, "--help"])
            assert result.exit_code == 0 and "--json" in result.stdout, cmd
    _cli(keys_app, "init")
    result = runner.invoke(keys_app, ["enroll-device", "bad/id", "--hardware-id", "hw"])
    assert result.exit_code == 2
    with pytest.raises(ConfigError):
        KeyHome(Path("/nonexistent")).release_signer()

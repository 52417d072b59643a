"""cloud.keys + ``fedge keys``/``fedge broker`` CLIs: files, permissions, rotation, revocation."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography import x509
from typer.testing import CliRunner

from cloud.broker import render_acl, write_broker_config
from cloud.cli.broker import broker_app
from cloud.cli.common import key_home
from cloud.cli.keys import keys_app
from cloud.keys import COORDINATOR_USER, MONITOR_USER, DeviceRecord, KeyHome
from edge.keystore import load_device_keys
from shared.artifacts import ArtifactBuilder, Precision, sign_manifest, verify_manifest
from shared.crypto.tls import cert_common_name, cert_serial
from shared.errors import (
    ConfigError,
    InvalidIdentifierError,
    ReservedNameError,
    RevokedKeyError,
)

runner = CliRunner()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cli(app: typer.Typer, *args: str) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    return out


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
    assert f"user {MONITOR_USER}\ntopic read fedge/v1/#\n" in acl  # read-only observer
    assert _mode(Path(out["acl"])) == 0o600
    conf = Path(out["conf"]).read_text().splitlines()
    for line in (
        "allow_anonymous false",
        "require_certificate true",
        "use_identity_as_username true",  # B1: the certificate is the identity
        "use_username_as_clientid true",  # B3: the session is bound to it
        f"crlfile {Path(out['crl']).resolve()}",
    ):
        assert line in conf, line
    assert not any(x.startswith("password_file") for x in conf)  # unused with B1: not written
    crl = x509.load_pem_x509_crl(Path(out["crl"]).read_bytes())
    assert len(list(crl)) == 0
    home = key_home()  # what the CLI uses: the records are in the fleet database
    assert home.path == tmp_path / "fedge-home" / "keys" and not home.fleet_path.exists()
    serial = cert_serial((home.device_dir("dev-a") / "client.crt").read_bytes())
    assert home.fleet()["dev-a"].tls_serial == format(serial, "x")
    revoked = _cli(keys_app, "revoke-device", "dev-a")
    assert revoked["broker_reloaded"] is False  # no broker running here
    assert revoked["evicted"] == []
    assert "user dev-a" not in Path(out["acl"]).read_text()
    crl = x509.load_pem_x509_crl(Path(out["crl"]).read_bytes())
    assert [r.serial_number for r in crl] == [serial]
    # The CRL is signed by the project CA (the broker would refuse anything else).
    ca = x509.load_pem_x509_certificate((home.tls_dir / "ca.crt").read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]


def test_system_identities_are_certificates_with_their_names(tmp_path: Path) -> None:
    home = KeyHome(tmp_path / "keys")
    home.init()
    assert cert_common_name((home.path / "coordinator" / "broker.crt").read_bytes()) == (
        COORDINATOR_USER
    )
    assert cert_common_name((home.monitor_dir / "broker.crt").read_bytes()) == MONITOR_USER
    assert _mode(home.monitor_dir / "broker.key") == 0o600
    assert home.ensure_monitor() is False  # already there
    (home.monitor_dir / "broker.crt").unlink()  # a key home from before the monitor
    assert home.ensure_monitor() is True


def test_enrolling_a_reserved_or_malformed_name_changes_nothing(tmp_path: Path) -> None:
    home = KeyHome(tmp_path / "keys")
    home.init()
    home.enroll_device("dev-a", hardware_id="hw-a")
    files = write_broker_config(home, tmp_path / "broker", port=18883)
    fleet_before = home.fleet_path.read_bytes()
    acl_before = files.acl.read_bytes()
    for name in (COORDINATOR_USER, MONITOR_USER, "FEDGE-Coordinator", "fedge-x", "all"):
        with pytest.raises(ReservedNameError) as info:
            home.enroll_device(name, hardware_id="hw-a")
        assert info.value.code == "reserved_name"
    for name in ("dev-b\n", "dev/b", "dev+", "#", "", "d\x00", "dev-\u212a", "x" * 65):
        with pytest.raises(InvalidIdentifierError) as bad:
            home.enroll_device(name, hardware_id="hw-a")
        assert bad.value.code == "invalid_identifier"
    with pytest.raises(InvalidIdentifierError):
        home.enroll_device("dev-b", hardware_id="hw\n")
    with pytest.raises(ReservedNameError):
        home.enroll_device("dev-b", hardware_id="hw", groups=["all"])
    with pytest.raises(ConfigError, match="only in case"):
        home.enroll_device("DEV-A", hardware_id="hw-a")
    write_broker_config(home, tmp_path / "broker", port=18883)
    assert home.fleet_path.read_bytes() == fleet_before
    assert files.acl.read_bytes() == acl_before
    assert sorted(p.name for p in (home.path / "devices").iterdir()) == ["dev-a"]
    result = runner.invoke(keys_app, ["enroll-device", COORDINATOR_USER, "--hardware-id", "hw"])
    assert result.exit_code == 2 and "reserved_name" in result.output


def test_broker_files_refuse_a_hand_edited_fleet(tmp_path: Path) -> None:
    """A fleet.json edited by hand: the ACL is never written with a broken line."""
    home = KeyHome(tmp_path / "keys")
    home.init()
    home.enroll_device("dev-a", hardware_id="hw-a")
    files = write_broker_config(home, tmp_path / "broker", port=18883)
    acl_before = files.acl.read_bytes()
    good = home.fleet()["dev-a"]
    for bad_id, groups in (("dev-b\nuser x", []), ("dev-b", ["g\ntopic readwrite #"])):
        bad = good.model_copy(update={"device_id": bad_id, "groups": groups})
        with pytest.raises(InvalidIdentifierError):
            render_acl({bad_id: bad})
    coord = good.model_copy(update={"device_id": COORDINATOR_USER})
    with pytest.raises(ReservedNameError):
        render_acl({COORDINATOR_USER: coord})
    raw = json.loads(home.fleet_path.read_text())
    raw["evil\n"] = DeviceRecord.model_validate(
        {**raw["dev-a"], "device_id": "evil\n"}
    ).model_dump()
    home.fleet_path.write_text(json.dumps(raw))
    with pytest.raises(InvalidIdentifierError):
        write_broker_config(home, tmp_path / "broker", port=18883)
    assert files.acl.read_bytes() == acl_before


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
    assert result.exit_code == 2 and "invalid_identifier" in result.output
    result = runner.invoke(keys_app, ["revoke-device", "dev-a\n"])
    assert result.exit_code == 2 and "invalid_identifier" in result.output
    with pytest.raises(ConfigError):
        KeyHome(Path("/nonexistent")).release_signer()

"""The enrollment records live in the fleet database (SQLite and PostgreSQL).

Enrolling writes the record into ``devices`` (no private key anywhere in the database, no
fleet.json), revoking marks it, the broker's ACL/CRL rendered from the database equal those
from fleet.json for the same fleet, an old key home's fleet.json is imported once and
renamed with nothing lost, and ``fedge keys export-fleet`` writes the records as 0600 JSON.
"""

from __future__ import annotations

import base64
import json
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import MetaData, select
from typer.testing import CliRunner

from cloud.broker import render_acl, write_broker_config
from cloud.cli.keys import keys_app
from cloud.device_records import DeviceRecord, JsonFleetRecords, fleet_to_json
from cloud.fleet.credentials import DatabaseFleetRecords, database_key_home, records_in_store
from cloud.fleet.store import FleetStore
from cloud.keys import KeyHome
from cloud.registry import Registry
from shared.crypto import PrivateKey, SigningKey
from shared.errors import ConfigError, NotFoundError

runner = CliRunner()
PRIVATE_FILES = ("signing.key", "box.key", "client.key", "supernode.key", "broker.password")


@pytest.fixture(scope="module")
def _template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = KeyHome(tmp_path_factory.mktemp("fleet-records") / "keys")
    home.init()
    return home.path


@pytest.fixture()
def store(database_url: str, tmp_path: Path) -> Iterator[FleetStore]:
    registry = Registry(database_url, tmp_path / "artifacts")
    yield FleetStore.from_registry(registry)
    registry.close()


def _copy(template: Path, target: Path) -> Path:
    shutil.copytree(template, target)
    return target


def _secrets(bundle: Path) -> list[bytes]:
    """Every private thing of a bundle, in the forms a careless write could store it."""
    out: list[bytes] = []
    for name in PRIVATE_FILES:
        data = (bundle / name).read_bytes()
        out.append(data.strip())
        # The base64 body lines of a PEM (or an OpenSSH private key).
        out += [line for line in data.splitlines() if len(line) >= 32 and b"-----" not in line]
    raws = [
        SigningKey.from_pem((bundle / "signing.key").read_bytes()).to_bytes(),
        PrivateKey.from_pem((bundle / "box.key").read_bytes()).to_bytes(),
    ]
    for raw in raws:
        out += [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw)]
    return out


def _database_dump(store: FleetStore) -> list[bytes]:
    """Every value of every column of every table, as bytes."""
    metadata = MetaData()
    metadata.reflect(store.engine)
    values: list[bytes] = []
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    if value is None:
                        continue
                    if isinstance(value, bytes | bytearray | memoryview):
                        values.append(bytes(value))
                    elif isinstance(value, dict | list):
                        values.append(json.dumps(value).encode())
                    else:
                        values.append(str(value).encode())
    return values


def test_enrolling_stores_the_record_in_the_database_and_no_private_key(
    store: FleetStore, tmp_path: Path, _template: Path
) -> None:
    home = database_key_home(_copy(_template, tmp_path / "keys"), store)
    assert records_in_store(home, store)
    home.enroll_device(
        "cam-1", hardware_id="hw-a", groups=["lobby"], profile="smart_camera", tags=["t1"]
    )
    home.enroll_device("cam-2", hardware_id="hw-b")
    assert not home.fleet_path.exists()  # the database is the one place

    records = store.enrollment_records()
    assert set(records) == {"cam-1", "cam-2"} and home.fleet() == records
    cam = records["cam-1"]
    assert (cam.hardware_id, cam.groups, cam.revoked) == ("hw-a", ["lobby"], False)
    bundle = home.device_dir("cam-1")
    signing = SigningKey.from_pem((bundle / "signing.key").read_bytes())
    box = PrivateKey.from_pem((bundle / "box.key").read_bytes())
    assert base64.b64decode(cam.signing_public) == signing.verify_key.to_bytes()
    assert base64.b64decode(cam.box_public) == box.public_key.to_bytes()
    assert cam.supernode_public == (bundle / "supernode.pub").read_text()
    assert cam.password_hash.startswith("$7$") and cam.tls_serial
    device = store.get_device("cam-1")  # the same row the API lists: profile, tags, groups
    assert (device.profile, device.tags, device.groups) == ("smart_camera", ["t1"], ["lobby"])

    dump = _database_dump(store)
    assert any(cam.password_hash.encode() in v for v in dump)  # the dump sees the records
    for device_id in ("cam-1", "cam-2"):
        for secret in _secrets(home.device_dir(device_id)):
            assert not any(secret in value for value in dump), device_id
    assert not any(b"PRIVATE KEY" in value for value in dump)

    with pytest.raises(ConfigError, match="already enrolled"):
        home.enroll_device("cam-1", hardware_id="hw-a")
    with pytest.raises(ConfigError) as info:
        store.put_enrollment_record(cam, new=True)
    assert info.value.code == "already_enrolled"


def test_revoking_and_groups_are_database_writes(
    store: FleetStore, tmp_path: Path, _template: Path
) -> None:
    home = database_key_home(_copy(_template, tmp_path / "keys"), store)
    home.enroll_device("cam-1", hardware_id="hw-a", groups=["lobby"])
    home.set_groups("cam-1", ["west", "east"])
    assert store.get_device("cam-1").groups == ["east", "west"]  # one place: devices.groups
    store.set_labels("cam-1", groups=["north"], tags=None)  # the API's PATCH: one write
    assert home.fleet()["cam-1"].groups == ["north"]

    assert home.revoke_device("cam-1", at=42.0) == {"device_id": "cam-1", "revoked": True}
    assert home.fleet()["cam-1"].revoked and store.get_device("cam-1").revoked_at == 42.0
    home.revoke_device("cam-1", at=99.0)  # idempotent: the first time is kept
    assert store.get_device("cam-1").revoked_at == 42.0
    assert "cam-1" in store.enrollment_records()  # revoked records stay (the CRL needs them)
    with pytest.raises(NotFoundError):
        home.revoke_device("cam-9")
    assert not home.fleet_path.exists()


def test_a_row_without_a_record_is_not_enrolled_until_completed(store: FleetStore) -> None:
    store.add_device("cam-1", hardware_id="hw-a", profile="p", tags=["t"], enrolled_at=1.0)
    assert store.enrollment_records() == {}
    record = DeviceRecord(
        device_id="cam-1",
        hardware_id="hw-a",
        groups=["g"],
        box_public="Ym94",
        signing_public="c2ln",
        password_hash="$7$x",
        enrolled_at=5,
    )
    store.put_enrollment_record(record, new=True)  # completes the row
    assert store.enrollment_records() == {"cam-1": record}
    device = store.get_device("cam-1")
    assert (device.profile, device.tags, device.groups, device.enrolled_at) == (
        "p",
        ["t"],
        ["g"],
        5.0,
    )
    assert store.list_devices(group="g").items[0].device_id == "cam-1"  # label rows too


def _fleet(home: KeyHome) -> None:
    home.enroll_device("dev-a", hardware_id="hw-a", groups=["kitchen", "all-lights"])
    home.enroll_device("dev-b", hardware_id="hw-a", groups=["garage"])
    home.enroll_device("dev-c", hardware_id="hw-b")
    home.revoke_device("dev-c")


def test_broker_config_is_the_same_from_the_database_as_from_fleet_json(
    store: FleetStore, tmp_path: Path, _template: Path
) -> None:
    json_home = KeyHome(_copy(_template, tmp_path / "json" / "keys"))
    _fleet(json_home)
    # The same key home (same CA, same bundles) with its records moved into the database.
    db_home = database_key_home(_copy(json_home.path, tmp_path / "db" / "keys"), store)
    assert db_home.fleet() == json_home.fleet()
    assert render_acl(db_home.fleet()) == render_acl(json_home.fleet())
    assert db_home.revoked_serials() == json_home.revoked_serials() != {}

    json_files = write_broker_config(json_home, tmp_path / "json" / "broker", port=18883)
    db_files = write_broker_config(db_home, tmp_path / "db" / "broker", port=18883)
    assert db_files.acl.read_bytes() == json_files.acl.read_bytes()
    acl = db_files.acl.read_text()
    assert "user dev-a" in acl and "topic read fedge/v1/groups/kitchen/#" in acl
    assert "user dev-c" not in acl
    crls = [x509.load_pem_x509_crl(f.crl.read_bytes()) for f in (json_files, db_files)]
    assert {r.serial_number for r in crls[0]} == {r.serial_number for r in crls[1]}
    assert [r.serial_number for r in crls[1]] == [int(db_home.fleet()["dev-c"].tls_serial, 16)]
    assert crls[0].issuer == crls[1].issuer


def test_an_old_key_home_is_imported_once_and_nothing_is_lost(
    store: FleetStore, tmp_path: Path, _template: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = KeyHome(_copy(_template, tmp_path / "keys"))
    _fleet(old)
    before = old.fleet()
    raw = old.fleet_path.read_bytes()
    # What the previous sync made of dev-a: a row without credentials, with its tags.
    store.add_device(
        "dev-a", hardware_id="hw-a", profile="hub", groups=["kitchen"], tags=["t"], enrolled_at=1.0
    )

    home = database_key_home(old.path, store)
    with caplog.at_level("WARNING", logger="cloud.keys"):
        assert home.fleet() == before
    assert "imported 3 device record(s)" in caplog.text and "fleet.json.imported" in caplog.text
    imported = home.path / "fleet.json.imported"
    assert not home.fleet_path.exists() and imported.read_bytes() == raw
    assert stat.S_IMODE(imported.stat().st_mode) == 0o600
    assert store.enrollment_records() == before
    dev_a = store.get_device("dev-a")
    assert (dev_a.profile, dev_a.tags, dev_a.groups) == ("hub", ["t"], before["dev-a"].groups)
    assert store.get_device("dev-c").revoked_at is not None

    # Once: a second key home (the next command) finds nothing to import.
    assert database_key_home(old.path, store).import_json_fleet() == 0
    assert store.enrollment_records() == before
    # Idempotent: the same file again (a crash before the rename; a restore) changes nothing.
    shutil.copy(imported, home.fleet_path)
    assert home.import_json_fleet() == 3 and store.enrollment_records() == before
    # A revoked device stays revoked, whatever an older file says.
    stale = json.loads(raw)
    stale["dev-c"]["revoked"] = False
    home.fleet_path.write_text(json.dumps(stale))
    assert home.fleet()["dev-c"].revoked


def test_export_fleet_writes_the_records_as_private_json(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGE_DATABASE_URL", database_url)

    def cli(*args: str) -> dict[str, Any]:
        result = runner.invoke(keys_app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        out: dict[str, Any] = json.loads(result.stdout)
        return out

    cli("init")
    cli("enroll-device", "dev-a", "--hardware-id", "hw-a", "--group", "kitchen")
    cli("enroll-device", "dev-b", "--hardware-id", "hw-a")
    cli("revoke-device", "dev-b")
    keys = tmp_path / "fedge-home" / "keys"  # FEDGE_HOME of tests/conftest.py
    assert not (keys / "fleet.json").exists()

    out = tmp_path / "backup" / "fleet.json"
    assert cli("export-fleet", "--out", str(out)) == {"path": str(out), "devices": 2}
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    registry = Registry(database_url, tmp_path / "artifacts")
    try:
        records = FleetStore.from_registry(registry).enrollment_records()
    finally:
        registry.close()
    assert json.loads(out.read_text()) == fleet_to_json(records)
    assert JsonFleetRecords(out).load() == records and records["dev-b"].revoked

    default = cli("export-fleet")
    assert default["path"] == str(keys / "fleet-export.json")
    assert stat.S_IMODE(Path(default["path"]).stat().st_mode) == 0o600
    assert not (keys / "fleet.json").exists()


def test_the_store_is_opened_on_first_use(tmp_path: Path, _template: Path) -> None:
    opened: list[FleetStore] = []
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "artifacts")
    try:

        def open_store() -> FleetStore:
            opened.append(FleetStore.from_registry(registry))
            return opened[-1]

        home = database_key_home(_copy(_template, tmp_path / "keys"), open_store)
        assert home.exists() and home.release_signer() and opened == []  # no fleet needed
        assert home.fleet() == {} and len(opened) == 1
        home.enroll_device("cam-1", hardware_id="hw-a")
        assert len(opened) == 1 and isinstance(home.records, DatabaseFleetRecords)
        assert "cam-1" in opened[0].enrollment_records()
    finally:
        registry.close()

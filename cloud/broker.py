"""Mosquitto configuration for the fleet: TLS identities, ACLs, CRL, reload.

Rules the generated configuration enforces (DESIGN §5: the broker enforces them, not
the agent). Verified against Mosquitto 2.0.11 in ``tests/security``:

- B1 TLS only, with the project CA, and the client certificate IS the identity:
  ``require_certificate true`` + ``use_identity_as_username true`` make the certificate's
  CN (device id, ``fedge-coordinator``, ``fedge-monitor`` or ``fedge-ingest``) the MQTT
  username, whatever username the client sends. Mosquitto then skips password (and plugin)
  authentication entirely, so no ``password_file`` is configured: the CA-issued
  certificate plus its private key is the credential, and one identity's certificate can
  never be combined with another account's password (review finding 3b). Devices still
  send username = device id and their bundle password; the broker ignores both.
- B2 no certificate, no connection: anonymous clients are refused at the TLS handshake
  (``allow_anonymous false`` stays as a second lock).
- B3 sessions are bound to identities: ``use_username_as_clientid true`` replaces every
  client id with the username (= CN), so a client can only ever open or take over its
  *own* session (review finding 3a: device A connecting with client id ``dev-b`` gets the
  session ``dev-a``, and dev-b is not kicked). Consequence: each identity has ONE session
  at a time; a second connection with the same certificate takes the first one over
  (2.0.11 closes the old socket without an MQTT 5 DISCONNECT 142). The coordinator keeps
  one connection; observers use the read-only ``fedge-monitor`` identity, the ingestion
  worker its own ``fedge-ingest``.
- B4 ACLs (anything not granted is denied): a device reads only
  ``fedge/v1/devices/{own id}/#``, ``fedge/v1/groups/{its groups}/#`` and
  ``fedge/v1/artifacts/#`` and writes only its own ``status``, ``telemetry`` and
  ``requests`` (never a manifest or a command); ``fedge-coordinator`` reads and writes
  ``fedge/v1/#``; ``fedge-monitor`` reads ``fedge/v1/#`` and writes nothing;
  ``fedge-ingest`` reads only ``fedge/v1/devices/+/{status,telemetry}``. Every id is
  checked against :mod:`shared.identifiers` before a line is written, and reserved names
  are refused as device records, so a hand-edited fleet.json can neither break the file
  nor add rights to a system account.
- B5 revocation takes effect at once: a revoked device is removed from the ACL and its
  certificate serial is put on the CA-signed CRL (``crlfile``); then the broker gets
  SIGHUP. Measured on 2.0.11: SIGHUP reloads the ACL (a live session of the revoked device
  can no longer read or write anything, immediately) and the CRL for new handshakes (it
  cannot connect again), but it does NOT re-verify the certificates of live TLS sessions,
  so :func:`cloud.broker_process.refresh_broker` first evicts the live session by taking
  it over with the device's own certificate from the key home (clean start, session
  expiry 0).
- B6 persistence on, so retained manifests and queued QoS 1 chunks survive a restart.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cloud.keyfiles import write_private, write_public
from cloud.keys import COORDINATOR_USER, INGEST_USER, MONITOR_USER, DeviceRecord, KeyHome
from shared.crypto.tls import make_crl
from shared.errors import ConfigError, ReservedNameError
from shared.identifiers import IdentifierKind, check_identifier, is_reserved

__all__ = [
    "BrokerFiles",
    "find_mosquitto",
    "render_acl",
    "render_conf",
    "render_crl",
    "write_broker_config",
    "write_credentials",
]

log = logging.getLogger(__name__)

_MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto")


@dataclass(frozen=True)
class BrokerFiles:
    """Where a generated broker configuration lives."""

    directory: Path

    @property
    def conf(self) -> Path:
        """mosquitto.conf."""
        return self.directory / "mosquitto.conf"

    @property
    def crl(self) -> Path:
        """crlfile: CA-signed list of revoked client certificates."""
        return self.directory / "crl.pem"

    @property
    def legacy_passwd(self) -> Path:
        """password_file of configurations written before certificate identities."""
        return self.directory / "passwd"

    @property
    def acl(self) -> Path:
        """acl_file."""
        return self.directory / "acl"

    @property
    def pid(self) -> Path:
        """Pid of the broker started by ``fedge broker run`` (for SIGHUP on revocation)."""
        return self.directory / "mosquitto.pid"

    @property
    def data(self) -> Path:
        """Persistence directory."""
        return self.directory / "data"


def find_mosquitto() -> Path:
    """Locate the mosquitto binary (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto")
    for candidate in ([found] if found else []) + list(_MOSQUITTO_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ConfigError("mosquitto not found: install it with `apt-get install mosquitto`")


def _checked_record(key: str, record: DeviceRecord) -> DeviceRecord:
    """Refuse a record that would write a broken or privileged ACL line (rule B4)."""
    check_identifier(record.device_id, IdentifierKind.DEVICE)
    if key != record.device_id:
        raise ConfigError(f"fleet entry {key!r} holds device {record.device_id!r}")
    if is_reserved(record.device_id):
        raise ReservedNameError(f"fleet.json lists a device named {record.device_id!r}")
    for group in record.groups:
        check_identifier(group, IdentifierKind.GROUP)
    return record


def render_acl(fleet: dict[str, DeviceRecord]) -> str:
    """The acl_file (rule B4). Anything not granted is denied.

    Raises:
        InvalidIdentifierError: a record's id or group is outside the grammar (e.g. a
            fleet.json edited by hand); nothing is written then.
        ReservedNameError: a device record named like a system account.
    """
    records = [_checked_record(k, v) for k, v in fleet.items()]
    out = [
        "# generated by `fedge broker config`; do not edit by hand",
        f"user {COORDINATOR_USER}",
        "topic readwrite fedge/v1/#",
        "",
        f"user {MONITOR_USER}",
        "topic read fedge/v1/#",
        "",
        # The ingestion worker reads what devices report and nothing else; it writes nothing.
        f"user {INGEST_USER}",
        "topic read fedge/v1/devices/+/status",
        "topic read fedge/v1/devices/+/telemetry",
        "",
    ]
    for d in sorted(records, key=lambda r: r.device_id):
        if d.revoked:
            continue
        base = f"fedge/v1/devices/{d.device_id}"
        out += [f"user {d.device_id}", f"topic read {base}/#", "topic read fedge/v1/artifacts/#"]
        out += [f"topic read fedge/v1/groups/{g}/#" for g in d.groups]
        out += [f"topic write {base}/{leaf}" for leaf in ("status", "telemetry", "requests")]
        out.append("")
    return "\n".join(out)


def render_crl(home: KeyHome, *, now: datetime | None = None) -> bytes:
    """The crlfile: the certificate serials of every revoked device (rule B5)."""
    for key, record in home.fleet().items():
        _checked_record(key, record)
    serials = list(home.revoked_serials().values())
    return make_crl(home.ca(), serials, now=now or datetime.now(UTC))


def render_conf(files: BrokerFiles, home: KeyHome, *, port: int, bind: str) -> str:
    """mosquitto.conf for one TLS listener (rules B1, B2, B3, B5, B6)."""
    tls = home.tls_dir.resolve()
    return "\n".join(
        [
            "# generated by `fedge broker config`",
            "per_listener_settings false",
            # Started as root, mosquitto would drop to user `mosquitto` and then fail to
            # read the 0600 secrets; stay the user who owns them.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "allow_anonymous false",
            # No password_file: use_identity_as_username skips password checks (rule B1).
            f"acl_file {files.acl.resolve()}",
            "persistence true",
            f"persistence_location {files.data.resolve()}/",
            "autosave_interval 30",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_packet_size 131072",  # AWS IoT Core's 128 KB limit, enforced here too
            # Per client. A resuming device must catch a whole artifact (≤ 1024 chunks), and the
            # ingestion session must absorb bursts: past this queue Mosquitto DROPS QoS 1
            # messages for that subscriber while still acknowledging the publisher
            # (benchmarks/control_plane.py saw it at 5000). Bounded in bytes too (memory).
            "max_queued_messages 200000",
            "max_queued_bytes 268435456",
            "",
            f"listener {port} {bind}",
            f"cafile {tls / 'ca.crt'}",
            f"certfile {tls / 'broker.crt'}",
            f"keyfile {tls / 'broker.key'}",
            "require_certificate true",
            "use_identity_as_username true",  # B1: username := certificate CN
            "use_username_as_clientid true",  # B3: client id := username, no session theft
            f"crlfile {files.crl.resolve()}",  # B5: revoked certificates fail the handshake
            "tls_version tlsv1.2",
            "",
        ]
    )


def write_credentials(home: KeyHome, files: BrokerFiles) -> None:
    """(Re)write the ACL and the CRL from the fleet registry.

    Both are rendered before either is written, so a refused record changes nothing.
    """
    fleet = home.fleet()
    acl = render_acl(fleet)
    crl = render_crl(home)
    write_private(files.acl, acl.encode())
    write_public(files.crl, crl)
    # A password file from an older configuration holds hashes and is no longer read.
    files.legacy_passwd.unlink(missing_ok=True)


def write_broker_config(
    home: KeyHome, directory: Path, *, port: int, bind: str = "127.0.0.1"
) -> BrokerFiles:
    """Write mosquitto.conf, passwd and acl into ``directory``."""
    if not home.exists():
        raise ConfigError("no keys yet: run `fedge keys init` first")
    if not 0 < port < 65536:
        raise ConfigError(f"invalid port {port}")
    files = BrokerFiles(directory)
    files.data.mkdir(parents=True, exist_ok=True)
    home.ensure_monitor()  # key homes created before the monitor identity existed
    home.ensure_ingest()  # ... and before the ingestion worker's
    write_credentials(home, files)
    write_public(files.conf, render_conf(files, home, port=port, bind=bind).encode())
    return files

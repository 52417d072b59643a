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
  so :func:`refresh_broker` first evicts the live session by taking it over with the
  device's own certificate from the key home (clean start, session expiry 0).
- B6 persistence on, so retained manifests and queued QoS 1 chunks survive a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.keyfiles import write_private, write_public
from cloud.keys import COORDINATOR_USER, INGEST_USER, MONITOR_USER, DeviceRecord, KeyHome
from shared.crypto.tls import make_crl
from shared.errors import ConfigError, ProtocolError, ReservedNameError
from shared.identifiers import IdentifierKind, check_identifier, is_reserved
from shared.numbers import parse_ascii_uint

__all__ = [
    "BrokerFiles",
    "evict_session",
    "find_mosquitto",
    "refresh_broker",
    "reload_broker",
    "render_acl",
    "render_conf",
    "render_crl",
    "start_broker",
    "wait_listening",
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


def _is_mosquitto(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"mosquitto" in cmdline.split(b"\0", 1)[0]


def _broker_pid(files: BrokerFiles) -> int | None:
    try:
        text = files.pid.read_text(encoding="ascii").strip()
        pid = parse_ascii_uint(text, what="pid", max_value=2**22)  # N1
    except (OSError, ValueError, ProtocolError):
        return None
    # Guard against a stale pid file whose pid now belongs to another process.
    return pid if _is_mosquitto(pid) else None


def reload_broker(files: BrokerFiles) -> bool:
    """SIGHUP the broker started from ``files`` (if running) so it rereads ACL and CRL.

    Returns:
        Whether a running broker was signalled.
    """
    pid = _broker_pid(files)
    if pid is None:
        return False
    os.kill(pid, signal.SIGHUP)
    log.info("sent SIGHUP to mosquitto pid %d", pid)
    return True


def _listener_address(files: BrokerFiles) -> tuple[str, int]:
    for line in files.conf.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "listener":
            host = parts[2] if parts[2] not in ("0.0.0.0", "::") else "127.0.0.1"
            return host, int(parts[1])
    raise ConfigError(f"no listener in {files.conf}")


def evict_session(home: KeyHome, files: BrokerFiles, device_id: str, timeout: float = 5.0) -> bool:
    """Take over and discard ``device_id``'s live session on the running broker.

    Why: SIGHUP in Mosquitto 2.0.11 does not re-verify the certificates of live TLS
    sessions, so a revoked device would stay connected (without any ACL right). Only the
    device's own identity can take its session over (rule B3); the key home still holds
    its certificate. Call it after the new CRL is written but before the SIGHUP that loads
    it, while the certificate still passes the handshake.

    Returns:
        Whether the broker accepted the takeover (False: no bundle, or no broker).
    """
    bundle = home.device_dir(device_id)
    cert, key = bundle / "client.crt", bundle / "client.key"
    if not (cert.exists() and key.exists()):
        log.warning("cannot evict %s: its bundle certificate is not in the key home", device_id)
        return False
    host, port = _listener_address(files)
    accepted: list[bool] = []
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        accepted.append(not reason.is_failure)
        done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=device_id,
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=False,
    )
    client.tls_set(
        ca_certs=str(home.tls_dir / "ca.crt"),
        certfile=str(cert),
        keyfile=str(key),
        cert_reqs=ssl.CERT_REQUIRED,
    )
    client.on_connect = on_connect
    # Clean start + expiry 0: the revoked device's stored session (queued messages) goes too.
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    try:
        client.connect(host, port, clean_start=True, properties=props)
    except (OSError, ssl.SSLError) as exc:
        log.warning("cannot evict %s: %s", device_id, exc)
        return False
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    ok = bool(accepted and accepted[0])
    log.info("evicted the session of %s: %s", device_id, ok)
    return ok


def refresh_broker(
    home: KeyHome, files: BrokerFiles, *, evict: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Rewrite ACL and CRL, evict the live sessions of ``evict``, then SIGHUP (rule B5).

    Returns:
        ``broker_reloaded`` (a running broker was signalled) and ``evicted`` (ids).
    """
    write_credentials(home, files)
    running = _broker_pid(files) is not None
    evicted = [d for d in evict if running and evict_session(home, files, d)]
    reloaded = reload_broker(files)
    result: dict[str, Any] = {"broker_reloaded": reloaded, "evicted": evicted}
    if reloaded and evict:
        # SIGHUP is asynchronous: return only once the broker really refuses the revoked
        # certificates, so "revoked" means "cannot connect" to whoever acts on the answer.
        result["refused"] = [d for d in evict if _wait_refused(home, files, d)]
    return result


def _wait_refused(home: KeyHome, files: BrokerFiles, device_id: str, timeout: float = 5.0) -> bool:
    """Whether a TLS handshake with ``device_id``'s certificate fails within ``timeout``."""
    bundle = home.device_dir(device_id)
    cert, key = bundle / "client.crt", bundle / "client.key"
    if not (cert.exists() and key.exists()):
        return False
    host, port = _listener_address(files)
    context = ssl.create_default_context(cafile=str(home.tls_dir / "ca.crt"))
    context.load_cert_chain(str(cert), str(key))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with (
                socket.create_connection((host, port), timeout=1.0) as raw,
                context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                tls.do_handshake()
                tls.settimeout(0.2)
                with contextlib.suppress(TimeoutError):
                    if tls.recv(1) == b"":  # closed after the handshake: refused
                        return True
        except (ssl.SSLError, ConnectionError):
            return True  # the broker refused the certificate
        except OSError:
            return False  # nothing listens: nothing to wait for
        time.sleep(0.05)
    log.warning("broker still accepts the certificate of revoked %s", device_id)
    return False


def start_broker(files: BrokerFiles, *, verbose: bool = False) -> subprocess.Popen[bytes]:
    """Start mosquitto with ``files`` and record its pid (caller waits or terminates it)."""
    args = [str(find_mosquitto()), "-c", str(files.conf)]
    if verbose:
        args.append("-v")
    proc = subprocess.Popen(args)
    files.pid.write_text(f"{proc.pid}\n")
    return proc


def wait_listening(
    port: int,
    *,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until something accepts TCP connections on ``host:port``.

    Raises:
        ConfigError: ``proc`` (the broker) exited, or nothing listened within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise ConfigError(f"mosquitto exited with status {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise ConfigError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)

"""Operations on the live Mosquitto broker: start, wait, reload, evict, refresh.

The configuration itself (TLS identities, ACL, CRL; rules B1-B6) is rendered by
:mod:`cloud.broker`; this module acts on a broker running from those files. Rule B5
(revocation takes effect at once) is carried out by :func:`refresh_broker`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.broker import BrokerFiles, find_mosquitto, write_credentials
from cloud.keys import KeyHome
from shared.errors import ConfigError, ProtocolError
from shared.numbers import parse_ascii_uint

__all__ = [
    "evict_session",
    "refresh_broker",
    "reload_broker",
    "start_broker",
    "wait_listening",
]

log = logging.getLogger(__name__)


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

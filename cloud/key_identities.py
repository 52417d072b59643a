"""System broker identities of a key home: the monitor's and the ingestion worker's.

Part of :class:`cloud.keys.KeyHome` (mixed in by :class:`IdentitiesMixin`); import the
names from :mod:`cloud.keys`. This module imports nothing of ``cloud.keys`` (no cycle).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.keyfiles import write_private, write_public
from shared.crypto.tls import TlsIdentity, issue_client_cert
from shared.identifiers import COORDINATOR_ACCOUNT, MONITOR_ACCOUNT

# The key home's one logger: records keep the ``cloud.keys`` name they always had.
log = logging.getLogger("cloud.keys")

#: The coordinator's broker identity: CN of its client certificate = MQTT username = client id.
COORDINATOR_USER = COORDINATOR_ACCOUNT
#: The read-only observer identity (may subscribe to ``fedge/v1/#``, publishes nothing).
MONITOR_USER = MONITOR_ACCOUNT
#: The ingestion worker's identity (may subscribe to every device's status and telemetry,
#: publishes nothing). Separate from the coordinator's: the broker allows one session per
#: identity, and the coordinator's is held by the publisher in the same process. A reserved
#: name by the ``fedge-`` prefix (:data:`shared.identifiers.RESERVED_PREFIX`).
INGEST_USER = "fedge-ingest"


def hash_password(password: str, *, iterations: int = 1000) -> str:
    """Mosquitto 2 ``$7$`` password hash (PBKDF2-HMAC-SHA512, 12-byte salt).

    Computed here rather than by ``mosquitto_passwd`` so no plaintext password ever
    lands in a file the broker reads, and the config can be written without the binary.
    """
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _epoch(now: datetime) -> int:
    return int(now.timestamp())


class IdentitiesMixin:
    """The monitor and ingest TLS client certificates of :class:`cloud.keys.KeyHome`."""

    if TYPE_CHECKING:
        path: Path

        def _require(self) -> None: ...

        def ca(self) -> TlsIdentity: ...

    @property
    def monitor_dir(self) -> Path:
        """TLS client certificate and key of the read-only monitor identity."""
        return self.path / "monitor"

    @property
    def ingest_dir(self) -> Path:
        """TLS client certificate and key of the ingestion worker's identity."""
        return self.path / "ingest"

    def _issue_monitor(self, ca: TlsIdentity, now: datetime) -> None:
        monitor = issue_client_cert(ca, MONITOR_USER, now=now)
        write_public(self.monitor_dir / "broker.crt", monitor.cert_pem)
        write_private(self.monitor_dir / "broker.key", monitor.key_pem)

    def ensure_monitor(self, *, now: datetime | None = None) -> bool:
        """Issue the monitor's certificate if this key home predates it.

        Returns:
            Whether a certificate was issued now.
        """
        self._require()
        if (self.monitor_dir / "broker.crt").exists():
            return False
        self._issue_monitor(self.ca(), now or datetime.now(UTC))
        log.info("issued the %s certificate", MONITOR_USER)
        return True

    def _issue_ingest(self, ca: TlsIdentity, now: datetime) -> None:
        ingest = issue_client_cert(ca, INGEST_USER, now=now)
        write_public(self.ingest_dir / "broker.crt", ingest.cert_pem)
        write_private(self.ingest_dir / "broker.key", ingest.key_pem)

    def ensure_ingest(self, *, now: datetime | None = None) -> bool:
        """Issue the ingestion worker's certificate if this key home predates it.

        Returns:
            Whether a certificate was issued now.
        """
        self._require()
        if (self.ingest_dir / "broker.crt").exists():
            return False
        self._issue_ingest(self.ca(), now or datetime.now(UTC))
        log.info("issued the %s certificate", INGEST_USER)
        return True

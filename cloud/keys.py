"""The coordinator's key home: root, release and coordinator keys, TLS material, devices.

Layout under ``$FEDGE_HOME/keys`` (private files 0600)::

    root/root.key            offline root signing key (move it offline after ``init``)
    root/root.pub            root public key: pinned on every device
    release/<kid16>.key      release signing keys; release/current.json names the active one
    release/<kid16>.cert     root-signed certificate of each release key
    coordinator/signing.key  + signing.cert   signs commands (role ``coordinator``)
    coordinator/box.key      + box.pub         X25519: devices seal updates to it
    coordinator/broker.*     TLS client certificate (CN fedge-coordinator) of the coordinator
    monitor/broker.{crt,key} TLS client certificate of the read-only monitor (CN fedge-monitor)
    ingest/broker.{crt,key}  TLS client certificate of the ingestion worker (CN fedge-ingest)
    revocations.json         newest root-signed revocation list
    tls/ca.{crt,key}         project CA; tls/broker.{crt,key} broker server certificate
    devices/<id>/            enrollment bundle to copy onto the device (edge.keystore)
    fleet.json               enrolled devices (public keys, groups, TLS cert serials): only
                             for a key home without a database (see below)

The enrollment records (:class:`~cloud.device_records.DeviceRecord`: public facts only)
live where the key home's :class:`~cloud.device_records.FleetRecords` backend keeps them:
in the fleet database on every product path (``cloud.fleet.credentials``: the CLI, the API,
the service), in ``fleet.json`` for a bare ``KeyHome(path)``. A database-backed key home
that finds a ``fleet.json`` (a key home from before the database held the records) imports
it once — idempotent, all or nothing — and renames it ``fleet.json.imported``.
``fedge keys export-fleet`` writes the same JSON as a backup (0600).

The broker identifies every client by its certificate's CN (see ``cloud.broker`` rules
B1-B6): the CA-issued certificate and its private key are the broker credential. The
``broker.password`` files are still written (bundles and ``edge.keystore`` expect them and
a device still sends username = device id with it), but the broker does not check them.

Every id is checked against the one grammar of :mod:`shared.identifiers`; enrollment also
refuses reserved names (``fedge-coordinator``, ``fedge-monitor``, ``fedge-ingest``, any
``fedge-`` name...).
Nothing here logs key material; summaries return key ids and paths only.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cloud.device_records import DeviceRecord, FleetRecords, JsonFleetRecords
from cloud.key_fleet import IMPORTED_SUFFIX as IMPORTED_SUFFIX  # re-exported
from cloud.key_fleet import FleetMixin
from cloud.key_identities import (
    COORDINATOR_USER,
    INGEST_USER,
    MONITOR_USER,
    IdentitiesMixin,
    _epoch,
    hash_password,
)
from cloud.key_rotation import RotationMixin
from cloud.keyfiles import read_json, write_json, write_private, write_public
from shared.artifacts.manifest import b64encode
from shared.artifacts.trust import (
    Envelope,
    RevocationList,
    Role,
    TrustStore,
    certify_key,
    sign_revocations,
)
from shared.crypto import PrivateKey, SigningKey, VerifyKey
from shared.crypto.nodeauth import make_node_auth_key
from shared.crypto.tls import (
    TlsIdentity,
    cert_serial,
    issue_client_cert,
    issue_server_cert,
    make_ca,
)
from shared.errors import ConfigError, NotFoundError
from shared.identifiers import (
    IdentifierKind,
    check_identifier,
    check_new_name,
)

__all__ = [
    "COORDINATOR_USER",
    "INGEST_USER",
    "MONITOR_USER",
    "DeviceRecord",
    "FleetRecords",
    "JsonFleetRecords",
    "KeyHome",
    "hash_password",
]

log = logging.getLogger(__name__)

DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class KeyHome(FleetMixin, IdentitiesMixin, RotationMixin):
    """A key home directory and the operations on it.

    ``records``: where the enrollment records live (None: ``fleet.json`` in ``path``).
    """

    path: Path
    records: FleetRecords | None = None

    # -- paths -----------------------------------------------------------------------------
    @property
    def root_key_path(self) -> Path:
        """The root private key (offline)."""
        return self.path / "root" / "root.key"

    @property
    def root_pub_path(self) -> Path:
        """The root public key (pinned on devices)."""
        return self.path / "root" / "root.pub"

    @property
    def tls_dir(self) -> Path:
        """CA and broker TLS material."""
        return self.path / "tls"

    @property
    def revocations_path(self) -> Path:
        """Newest root-signed revocation list."""
        return self.path / "revocations.json"

    def device_dir(self, device_id: str) -> Path:
        """Enrollment bundle of ``device_id``.

        Raises:
            InvalidIdentifierError: ``device_id`` outside the grammar (never a path like
                ``../x`` or a name with a newline).
        """
        return self.path / "devices" / check_identifier(device_id, IdentifierKind.DEVICE)

    def exists(self) -> bool:
        """Whether ``init`` has run."""
        return self.root_pub_path.exists()

    def _require(self) -> None:
        if not self.exists():
            raise ConfigError(f"no key home at {self.path}; run `fedge keys init` first")

    # -- loading ---------------------------------------------------------------------------
    def root_public(self) -> VerifyKey:
        """The root public key."""
        self._require()
        return VerifyKey.from_pem(self.root_pub_path.read_bytes())

    def load_root(self, passphrase: bytes | None = None, path: Path | None = None) -> SigningKey:
        """Load the root private key (from ``path`` when it was moved offline)."""
        key_path = path or self.root_key_path
        if not key_path.exists():
            raise ConfigError(f"root key not found at {key_path} (offline? pass --root-key)")
        key = SigningKey.from_pem(key_path.read_bytes(), passphrase)
        if key.verify_key != self.root_public():
            raise ConfigError("that root key does not match the pinned root public key")
        return key

    def revocations(self) -> Envelope | None:
        """The newest revocation list, if any."""
        if not self.revocations_path.exists():
            return None
        return Envelope.model_validate(read_json(self.revocations_path))

    def trust_store(self) -> TrustStore:
        """The trust store a freshly enrolled device starts from."""
        trust = TrustStore(self.root_public())
        revs = self.revocations()
        return trust if revs is None else trust.with_revocations(revs)

    def _signer(self, key_path: Path, cert_path: Path) -> tuple[SigningKey, Envelope]:
        return (
            SigningKey.from_pem(key_path.read_bytes()),
            Envelope.model_validate(read_json(cert_path)),
        )

    def release_signer(self) -> tuple[SigningKey, Envelope]:
        """The active release key and its root-signed certificate."""
        self._require()
        kid = read_json(self.path / "release" / "current.json")["key_id"][:16]
        return self._signer(
            self.path / "release" / f"{kid}.key", self.path / "release" / f"{kid}.cert"
        )

    def coordinator_signer(self) -> tuple[SigningKey, Envelope]:
        """The coordinator's command-signing key and its certificate."""
        self._require()
        d = self.path / "coordinator"
        return self._signer(d / "signing.key", d / "signing.cert")

    def coordinator_box(self) -> PrivateKey:
        """The coordinator's X25519 key (devices seal updates to its public half)."""
        return PrivateKey.from_pem((self.path / "coordinator" / "box.key").read_bytes())

    def ca(self) -> TlsIdentity:
        """The project CA (certificate and key)."""
        return TlsIdentity(
            (self.tls_dir / "ca.crt").read_bytes(), (self.tls_dir / "ca.key").read_bytes()
        )

    # -- operations ------------------------------------------------------------------------
    def init(
        self,
        *,
        now: datetime | None = None,
        hosts: tuple[str, ...] = DEFAULT_HOSTS,
        root_passphrase: bytes | None = None,
        release_days: int = 365,
    ) -> dict[str, Any]:
        """Create every key and certificate of a new fleet. Refuses to overwrite."""
        if self.exists():
            raise ConfigError(f"key home {self.path} already initialised; refusing to overwrite")
        now = now or datetime.now(UTC)
        root = SigningKey.generate()
        write_private(self.root_key_path, root.to_pem(root_passphrase))
        write_public(self.root_pub_path, root.verify_key.to_pem())
        release_kid = self._new_release(root, now, release_days)

        coord = SigningKey.generate()
        cert = certify_key(
            root,
            coord.verify_key,
            Role.COORDINATOR,
            issued_at=_epoch(now),
            expires=_epoch(now + timedelta(days=release_days)),
        )
        cdir = self.path / "coordinator"
        write_private(cdir / "signing.key", coord.to_pem())
        write_json(cdir / "signing.cert", cert.model_dump(mode="json", exclude_none=True))
        box = PrivateKey.generate()
        write_private(cdir / "box.key", box.to_pem())
        write_public(cdir / "box.pub", box.public_key.to_bytes())

        revs = sign_revocations(root, RevocationList(version=1, issued_at=_epoch(now)))
        write_json(self.revocations_path, revs.model_dump(mode="json", exclude_none=True))

        ca = make_ca("fedge project CA", now=now)
        write_public(self.tls_dir / "ca.crt", ca.cert_pem)
        write_private(self.tls_dir / "ca.key", ca.key_pem)
        server = issue_server_cert(ca, list(hosts), now=now)
        write_public(self.tls_dir / "broker.crt", server.cert_pem)
        write_private(self.tls_dir / "broker.key", server.key_pem)
        client = issue_client_cert(ca, COORDINATOR_USER, now=now)
        write_public(cdir / "broker.crt", client.cert_pem)
        write_private(cdir / "broker.key", client.key_pem)
        password = secrets.token_urlsafe(24)
        write_private(cdir / "broker.password", password.encode())
        write_json(cdir / "broker.json", {"username": COORDINATOR_USER})
        write_private(cdir / "broker.hash", hash_password(password).encode())
        self._issue_monitor(ca, now)
        self._issue_ingest(ca, now)
        log.info("initialised key home %s (release key %s)", self.path, release_kid[:16])
        return {
            "key_home": str(self.path),
            "root_key_id": root.verify_key.key_id,
            "release_key_id": release_kid,
            "coordinator_key_id": coord.verify_key.key_id,
            "ca": str(self.tls_dir / "ca.crt"),
            "broker_hosts": list(hosts),
        }

    def enroll_device(
        self,
        device_id: str,
        *,
        hardware_id: str,
        groups: list[str] | None = None,
        now: datetime | None = None,
        profile: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Create a device's keys and broker credentials, write its bundle and store its
        record (with ``profile`` and ``tags`` where the backend keeps them: the database)."""
        self._require()
        # Checked before anything is written: a refused name leaves no trace (no bundle,
        # no fleet entry, so no ACL section either).
        check_new_name(device_id, IdentifierKind.DEVICE)
        check_identifier(hardware_id, IdentifierKind.HARDWARE)
        groups = sorted({check_new_name(g, IdentifierKind.GROUP) for g in groups or []})
        records = self._fleet_records()
        fleet = records.load()
        if device_id in fleet:
            raise ConfigError(f"device {device_id} is already enrolled")
        # "Dev-A" next to "dev-a" would share a bundle directory on a case-insensitive file
        # system and is confusing in every log: one spelling per device.
        if any(known.lower() == device_id.lower() for known in fleet):
            raise ConfigError(f"a device id differing from {device_id} only in case is enrolled")
        now = now or datetime.now(UTC)
        signing, box = SigningKey.generate(), PrivateKey.generate()
        password = secrets.token_urlsafe(24)
        client = issue_client_cert(self.ca(), device_id, now=now)
        d = self.device_dir(device_id)
        write_json(
            d / "device.json",
            {
                "device_id": device_id,
                "hardware_id": hardware_id,
                "groups": groups,
                "broker_username": device_id,
            },
        )
        write_public(d / "root.pub", self.root_pub_path.read_bytes())  # the pin
        write_private(d / "signing.key", signing.to_pem())
        write_private(d / "box.key", box.to_pem())
        write_public(d / "ca.crt", (self.tls_dir / "ca.crt").read_bytes())
        write_public(d / "client.crt", client.cert_pem)
        write_private(d / "client.key", client.key_pem)
        write_private(d / "broker.password", password.encode())
        node_key = make_node_auth_key()  # Flower's SuperNode auth needs a NIST-curve key
        write_private(d / "supernode.key", node_key.private_openssh)
        write_public(d / "supernode.pub", node_key.public_openssh)
        write_public(d / "coordinator.pub", (self.path / "coordinator" / "box.pub").read_bytes())
        revs = self.revocations()
        if revs is not None:
            write_json(d / "revocations.json", revs.model_dump(mode="json", exclude_none=True))
        record = DeviceRecord(
            device_id=device_id,
            hardware_id=hardware_id,
            groups=groups,
            box_public=b64encode(box.public_key.to_bytes()),
            signing_public=b64encode(signing.verify_key.to_bytes()),
            password_hash=hash_password(password),
            enrolled_at=_epoch(now),
            supernode_public=node_key.public_openssh.decode(),
            tls_serial=format(cert_serial(client.cert_pem), "x"),
        )
        records.add(record, profile=profile, tags=tags)
        log.info("enrolled device %s", device_id)
        return {"device_id": device_id, "bundle": str(d), "groups": groups}

    def set_groups(self, device_id: str, groups: list[str]) -> dict[str, Any]:
        """Replace an enrolled device's groups (the broker ACL is rendered from them).

        On a database-backed key home this is the devices table's ``groups`` (the one
        place groups live): ``FleetStore.set_labels`` does the same.

        Raises:
            NotFoundError: the device is not enrolled.
            InvalidIdentifierError: a group fails the identifier grammar.
        """
        records = self._fleet_records()
        if device_id not in records.load():
            raise NotFoundError(f"device {device_id} is not enrolled")
        checked = sorted({check_identifier(g, IdentifierKind.GROUP) for g in groups})
        records.set_groups(device_id, checked)
        return {"device_id": device_id, "groups": checked}

    def revoke_device(self, device_id: str, *, at: float | None = None) -> dict[str, Any]:
        """Mark ``device_id`` revoked (at ``at``, Unix seconds; default now): the next
        broker config refuses it."""
        check_identifier(device_id, IdentifierKind.DEVICE)
        records = self._fleet_records()
        if device_id not in records.load():
            raise NotFoundError(f"device {device_id} is not enrolled")
        records.set_revoked(device_id, at=time.time() if at is None else at)
        return {"device_id": device_id, "revoked": True}

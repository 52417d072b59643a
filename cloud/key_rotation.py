"""Release-key rotation and key/device revocation of a key home.

Part of :class:`cloud.keys.KeyHome` (mixed in by :class:`RotationMixin`); use it through
:mod:`cloud.keys`. This module imports nothing of ``cloud.keys`` (no cycle).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.key_identities import _epoch
from cloud.keyfiles import read_json, write_json, write_private
from shared.artifacts.trust import (
    RevocationList,
    Role,
    TrustStore,
    certify_key,
    sign_revocations,
)
from shared.crypto import SigningKey
from shared.crypto.tls import cert_serial
from shared.errors import ConfigError

if TYPE_CHECKING:
    from cloud.device_records import DeviceRecord

# The key home's one logger: records keep the ``cloud.keys`` name they always had.
log = logging.getLogger("cloud.keys")


class RotationMixin:
    """Release keys, the root-signed revocation list and the broker CRL's serials."""

    if TYPE_CHECKING:
        path: Path

        @property
        def revocations_path(self) -> Path: ...

        def _require(self) -> None: ...

        def load_root(
            self, passphrase: bytes | None = None, path: Path | None = None
        ) -> SigningKey: ...

        def trust_store(self) -> TrustStore: ...

        def fleet(self) -> dict[str, DeviceRecord]: ...

        def device_dir(self, device_id: str) -> Path: ...

    def _new_release(self, root: SigningKey, now: datetime, days: int) -> str:
        key = SigningKey.generate()
        kid = key.verify_key.key_id
        cert = certify_key(
            root,
            key.verify_key,
            Role.RELEASE,
            issued_at=_epoch(now),
            expires=_epoch(now + timedelta(days=days)),
        )
        d = self.path / "release"
        write_private(d / f"{kid[:16]}.key", key.to_pem())
        write_json(d / f"{kid[:16]}.cert", cert.model_dump(mode="json", exclude_none=True))
        write_json(d / "current.json", {"key_id": kid})
        return kid

    def revoked_serials(self) -> dict[str, int]:
        """TLS certificate serials of revoked devices, by device id (for the broker CRL).

        A revoked device whose serial is neither recorded nor readable from its bundle is
        left out (with a warning): the ACL still grants it nothing.
        """
        out: dict[str, int] = {}
        for device_id, record in self.fleet().items():
            if not record.revoked:
                continue
            if record.tls_serial:
                out[device_id] = int(record.tls_serial, 16)
                continue
            cert = self.device_dir(device_id) / "client.crt"
            if cert.exists():
                out[device_id] = cert_serial(cert.read_bytes())
            else:
                log.warning("revoked device %s: certificate serial unknown, not in CRL", device_id)
        return out

    def rotate_release(
        self,
        *,
        now: datetime | None = None,
        root_passphrase: bytes | None = None,
        root_key: Path | None = None,
        revoke_old: bool = False,
        days: int = 365,
    ) -> dict[str, Any]:
        """Issue a new root-certified release key and make it current."""
        self._require()
        now = now or datetime.now(UTC)
        root = self.load_root(root_passphrase, root_key)
        old = read_json(self.path / "release" / "current.json")["key_id"]
        new = self._new_release(root, now, days)
        result: dict[str, Any] = {"old_release_key_id": old, "release_key_id": new}
        if revoke_old:
            result |= self._revoke(root, old, now)
        return result

    def _revoke(self, root: SigningKey, key_id: str, now: datetime) -> dict[str, Any]:
        current = self.trust_store().revocations
        version = (current.version if current else 0) + 1
        ids = tuple(sorted({*(current.revoked_key_ids if current else ()), key_id}))
        revs = sign_revocations(
            root, RevocationList(version=version, issued_at=_epoch(now), revoked_key_ids=ids)
        )
        write_json(self.revocations_path, revs.model_dump(mode="json", exclude_none=True))
        return {"revoked_key_id": key_id, "revocations_version": version}

    def revoke_key(
        self,
        key_id: str,
        *,
        now: datetime | None = None,
        root_passphrase: bytes | None = None,
        root_key: Path | None = None,
    ) -> dict[str, Any]:
        """Add ``key_id`` (a release or coordinator key) to the root-signed revocation list."""
        self._require()
        if len(key_id) != 64 or any(c not in "0123456789abcdef" for c in key_id):
            raise ConfigError("key id must be 64 lowercase hex digits")
        current = read_json(self.path / "release" / "current.json")["key_id"]
        if key_id == current:
            raise ConfigError("that is the current release key: rotate-release first")
        root = self.load_root(root_passphrase, root_key)
        return self._revoke(root, key_id, now or datetime.now(UTC))

"""Device side: load the enrollment bundle written by ``fedge keys enroll-device``.

The bundle pins the fleet's root public key (``root.pub``): every trust decision on the
device starts from it. Private files must not be readable by group/others (rule S1): a
bundle copied with loose permissions is refused rather than silently used.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

from shared.artifacts.trust import Envelope, TrustStore
from shared.crypto import PrivateKey, PublicKey, SigningKey, VerifyKey
from shared.errors import ConfigError, FedgeError

__all__ = ["DeviceKeys", "load_device_keys"]

_PRIVATE = ("signing.key", "box.key", "client.key", "broker.password")


@dataclass(frozen=True, repr=False)
class DeviceKeys:
    """A device's identity, keys, broker credentials and pinned trust."""

    directory: Path
    device_id: str
    hardware_id: str
    groups: frozenset[str]
    signing_key: SigningKey
    box_key: PrivateKey
    coordinator_box: PublicKey
    trust: TrustStore
    broker_username: str
    broker_password: str

    @property
    def ca_file(self) -> Path:
        """Project CA certificate (to verify the broker)."""
        return self.directory / "ca.crt"

    @property
    def client_cert(self) -> Path:
        """TLS client certificate."""
        return self.directory / "client.crt"

    @property
    def client_key(self) -> Path:
        """TLS client key."""
        return self.directory / "client.key"

    def __repr__(self) -> str:
        return f"DeviceKeys({self.device_id}, {self.directory})"


def _check_private(path: Path) -> None:
    if not path.exists():
        raise ConfigError(f"device bundle is missing {path.name}")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:  # S1
        raise ConfigError(f"{path} is readable by others; chmod 600 it")


def load_device_keys(directory: Path) -> DeviceKeys:
    """Load and check a device bundle.

    Raises:
        ConfigError: a file is missing, unreadable, malformed, or too permissive.
    """
    try:
        for name in _PRIVATE:
            _check_private(directory / name)
        meta = json.loads((directory / "device.json").read_text())
        trust = TrustStore(VerifyKey.from_pem((directory / "root.pub").read_bytes()))
        revs = directory / "revocations.json"
        if revs.exists():
            trust = trust.with_revocations(Envelope.model_validate_json(revs.read_bytes()))
        return DeviceKeys(
            directory=directory,
            device_id=meta["device_id"],
            hardware_id=meta["hardware_id"],
            groups=frozenset(meta.get("groups", [])),
            signing_key=SigningKey.from_pem((directory / "signing.key").read_bytes()),
            box_key=PrivateKey.from_pem((directory / "box.key").read_bytes()),
            coordinator_box=PublicKey.from_bytes((directory / "coordinator.pub").read_bytes()),
            trust=trust,
            broker_username=meta["broker_username"],
            broker_password=(directory / "broker.password").read_text().strip(),
        )
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, FedgeError) as exc:
        raise ConfigError(f"unusable device bundle at {directory}: {type(exc).__name__}") from exc

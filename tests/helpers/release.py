"""Builders for pure delivery tests: a fleet's keys, signed releases, a simulated device.

``DeviceSim`` runs the device-side pipeline (verify → unwrap → add chunks → assemble) and
commits only on success, so attack tests can assert that nothing changed afterwards.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.artifacts import (
    ArtifactAssembler,
    ArtifactBuilder,
    BaseArtifact,
    Envelope,
    Manifest,
    Precision,
    Release,
    Role,
    SealedChunk,
    TrustStore,
    certify_key,
    sign_manifest,
    unwrap_content_key,
    verify_manifest,
)
from shared.crypto import PrivateKey, SigningKey

NOW = 1_750_000_000
HW = "hw-a"


@dataclass
class Fleet:
    """Keys of a test fleet (root, release, coordinator) and device key pairs."""

    root: SigningKey = field(default_factory=SigningKey.generate)
    release: SigningKey = field(default_factory=SigningKey.generate)
    coordinator: SigningKey = field(default_factory=SigningKey.generate)
    devices: dict[str, PrivateKey] = field(
        default_factory=lambda: {d: PrivateKey.generate() for d in ("dev-a", "dev-b")}
    )

    def cert(
        self,
        key: SigningKey,
        role: Role = Role.RELEASE,
        *,
        by: SigningKey | None = None,
        expires: int = NOW + 86_400,
    ) -> Envelope:
        """A certificate for ``key`` signed by ``by`` (the fleet root by default)."""
        return certify_key(
            by or self.root, key.verify_key, role, issued_at=NOW - 60, expires=expires
        )

    @property
    def release_cert(self) -> Envelope:
        """The release key's root-signed certificate."""
        return self.cert(self.release)

    @property
    def coordinator_cert(self) -> Envelope:
        """The coordinator key's root-signed certificate."""
        return self.cert(self.coordinator, Role.COORDINATOR)

    def trust(self) -> TrustStore:
        """What an enrolled device pins."""
        return TrustStore(self.root.verify_key)

    def build(
        self,
        artifact: bytes,
        version: int,
        *,
        base: BaseArtifact | None = None,
        chunk_size: int = 4096,
        **kw: object,
    ) -> Release:
        """Build a release for every fleet device."""
        recipients = {d: k.public_key for d, k in self.devices.items()}
        args: dict[str, object] = dict(
            model_id="kws",
            version=version,
            precision=Precision.INT8,
            hardware_ids=[HW],
            recipients=recipients,
            rollout_id="r1",
            now=NOW,
            ttl_seconds=3600,
            base=base,
        )
        args.update(kw)
        return ArtifactBuilder(chunk_size=chunk_size).build(artifact, **args)  # type: ignore[arg-type]

    def sign(
        self, manifest: Manifest, key: SigningKey | None = None, cert: Envelope | None = None
    ) -> Envelope:
        """Sign with the release key (or ``key``/``cert``)."""
        return sign_manifest(manifest, key or self.release, certificate=cert or self.release_cert)


def artifact(size: int = 20_000, seed: int = 0) -> bytes:
    """Deterministic, moderately compressible fake model bytes."""
    block = hashlib.sha256(str(seed).encode()).digest() * 8
    out = bytearray()
    i = 0
    while len(out) < size:
        out += block[: 64 + i % 64] + os.urandom(16)
        i += 1
    return bytes(out[:size])


@dataclass
class DeviceSim:
    """A pure device: installed artifact + persisted floor, committed only on success."""

    fleet: Fleet
    device_id: str = "dev-a"
    hardware_id: str = HW
    installed: bytes | None = None
    floor: int = 0
    trust: TrustStore | None = None

    def install(
        self, envelope: Envelope, chunks: Iterable[SealedChunk], *, now: int = NOW
    ) -> bytes:
        """Run the whole device pipeline; commit only if every check passes."""
        trust = self.trust or self.fleet.trust()
        verified = verify_manifest(
            envelope,
            trust,
            device_id=self.device_id,
            hardware_id=self.hardware_id,
            floor_version=self.floor,
            now=now,
        )
        m = verified.manifest
        key = unwrap_content_key(m, self.device_id, self.fleet.devices[self.device_id])
        asm = ArtifactAssembler(m)
        state = asm.start()
        for chunk in chunks:
            state, _ = asm.add(state, chunk)
        data = asm.assemble(state, key, base=self.installed)
        self.installed, self.floor, self.trust = data, m.version, verified.trust
        return data

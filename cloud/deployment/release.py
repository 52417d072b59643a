"""Build and sign the releases of one publish — pure: no broker, no clock of its own.

One :class:`Plan` per (precision, delta base): the artifact encoded (a delta against the
exact file the devices serve when that is smaller), its content key wrapped for each
member device, and one manifest per device signed by the release key with its root
certificate and the newest revocation list. The manifest's signed ``purpose`` (§15) is the
plan's: ``install``, ``shadow`` (held beside the serving model) or ``trial`` (timed only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cloud.keys import DeviceRecord
from shared.artifacts import (
    ArtifactBuilder,
    BaseArtifact,
    Precision,
    Purpose,
    Release,
    sign_manifest,
)
from shared.artifacts.manifest import b64decode
from shared.artifacts.trust import Envelope
from shared.crypto import PublicKey, SigningKey
from shared.protocol import topics
from shared.protocol.codec import encode_message
from shared.protocol.messages import ManifestMessage, ServingInfo, StatusMessage

__all__ = ["Plan", "Signer", "Target", "build_plan"]


@dataclass(frozen=True)
class Target:
    """The exact artifact a device must end up with, and for what (``purpose``).

    Completion (:meth:`reached`, rule O1) depends on the purpose: ``install`` — the status
    says the device *serves* it; ``shadow`` — its ``candidate`` is it; ``trial`` — its
    ``variants`` hold a timing of the plan's artifact id.
    """

    model_id: str
    version: int
    precision: str
    sha256: str
    purpose: Purpose = Purpose.INSTALL

    def served_by(self, serving: ServingInfo | None) -> bool:
        """Whether a device whose status says ``serving`` has installed this target."""
        return serving is not None and (
            serving.model_id,
            serving.version,
            serving.sha256,
        ) == (self.model_id, self.version, self.sha256)

    def reached(self, status: StatusMessage, artifact_id: str | None) -> bool:
        """O1 for this target's purpose, from one attributed status."""
        if self.purpose is Purpose.SHADOW:
            return self.served_by(status.candidate)
        if self.purpose is Purpose.TRIAL:
            variants = status.variants
            return variants is not None and any(
                t.artifact_id == artifact_id for t in variants.timings
            )
        return self.served_by(status.serving)


@dataclass(frozen=True)
class Signer:
    """The release key, its root-signed certificate and the revocation list to attach."""

    key: SigningKey
    certificate: Envelope
    revocations: Envelope | None


@dataclass
class Plan:
    """One release, the devices it goes to and each device's signed manifest message."""

    release: Release
    target: Target
    devices: list[str]
    base_version: int | None
    manifests: dict[str, tuple[str, bytes]]  # device id -> (topic, ManifestMessage bytes)
    waiting: set[str] = field(default_factory=set)  # not yet subscribed to the chunks
    chunks_sent: bool = False
    due: float = 0.0  # when to send the chunks even if some devices have not subscribed
    pending: set[int] = field(default_factory=set)  # asked for, not yet republished

    @property
    def artifact_id(self) -> str:
        """The release's artifact id (chunk topics, device outcomes)."""
        return self.release.manifest.artifact_id


def build_plan(
    builder: ArtifactBuilder,
    data: bytes,
    target: Target,
    members: list[DeviceRecord],
    base: BaseArtifact | None,
    *,
    signer: Signer,
    now: float,
) -> Plan:
    """Build one release of ``data`` for ``members`` (a delta against ``base`` if smaller)."""
    release = builder.build(
        data,
        model_id=target.model_id,
        version=target.version,
        precision=Precision(target.precision),
        hardware_ids=sorted({m.hardware_id for m in members}),
        recipients={m.device_id: PublicKey.from_bytes(b64decode(m.box_public)) for m in members},
        rollout_id=f"publish-{target.version}",
        now=int(now),
        base=base,
        purpose=target.purpose,
    )
    manifests: dict[str, tuple[str, bytes]] = {}
    for m in members:
        envelope = sign_manifest(
            release.manifest.for_devices([m.device_id]),
            signer.key,
            certificate=signer.certificate,
            revocations=signer.revocations,
        )
        message = ManifestMessage(device_id=m.device_id, sent_at=now, envelope=envelope)
        manifests[m.device_id] = (topics.device_manifest(m.device_id), encode_message(message))
    delta = release.manifest.delta_base is not None
    return Plan(
        release,
        target,
        [m.device_id for m in members],
        base.version if delta and base is not None else None,
        manifests,
    )

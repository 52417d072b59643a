"""Wire message models: frozen pydantic models tagged by ``kind`` (a discriminated union).

Every message carries:

* ``kind`` — the discriminator; :data:`Message` dispatches on it;
* ``v`` — the protocol version (1);
* ``msg_id`` — a unique id chosen once by the sender and stored with the message in its
  outbox, so a re-sent copy carries the same id and a receiver can drop duplicates (see
  :class:`shared.protocol.dedupe.Deduplicator`);
* ``device_id`` and ``sent_at`` (Unix seconds, passed in by the caller: no clock here).

Artifact chunks are binary, not JSON (:func:`shared.protocol.codec.encode_chunk`): base64
would cost a third more bytes on the largest messages.

To add a message: subclass :class:`_Envelope` with a
``kind: Literal[MessageKind.X]`` field, add the kind to :class:`MessageKind` and the class to
the :data:`Message` union. Unknown kinds are rejected by the codec, never guessed.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.artifacts.manifest import MAX_CHUNKS
from shared.artifacts.trust import Envelope
from shared.identifiers import DeviceIdField
from shared.precision import Precision

__all__ = [
    "PROTOCOL_VERSION",
    "CommandMessage",
    "DeviceState",
    "LatencyStats",
    "ManifestMessage",
    "Message",
    "MessageKind",
    "ResendRequest",
    "ServingInfo",
    "ShadowReport",
    "StatusMessage",
    "TelemetryMessage",
    "UpdateInfo",
    "UpdateOutcome",
    "VariantReport",
    "VariantTiming",
    "new_msg_id",
]

PROTOCOL_VERSION = 1

MsgIdField = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{8,64}$")]
VersionField = Annotated[str, Field(min_length=1, max_length=128)]
VersionNumber = Annotated[int, Field(ge=0, le=2**53)]
ArtifactIdField = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Sha256Field = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Micros = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]
CpuFeature = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")]


def new_msg_id() -> str:
    """A fresh random message id (32 hex characters)."""
    return uuid.uuid4().hex


class MessageKind(StrEnum):
    """Discriminator values of every JSON message on the wire."""

    STATUS = "status"  # device → cloud, retained
    TELEMETRY = "telemetry"  # device → cloud
    RESEND_REQUEST = "resend_request"  # device → cloud
    MANIFEST = "manifest"  # cloud → device, retained
    COMMAND = "command"  # cloud → device or group


class DeviceState(StrEnum):
    """Lifecycle state reported in a :class:`StatusMessage`."""

    ONLINE = "online"
    OFFLINE = "offline"
    UPDATING = "updating"
    DEGRADED = "degraded"


class _Envelope(BaseModel):
    """Fields every message shares. Frozen; unknown fields are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    msg_id: MsgIdField = Field(default_factory=new_msg_id)
    device_id: DeviceIdField
    sent_at: Seconds


class UpdateOutcome(StrEnum):
    """What the updater last did with a manifest or command (``docs/protocol.md`` §9)."""

    DOWNLOADING = "downloading"  # manifest verified, chunks being collected
    CHUNK_REJECTED = "chunk_rejected"  # one chunk refused; the download continues
    UP_TO_DATE = "up_to_date"  # the manifest of the installed version (e.g. retained)
    COMMITTED = "committed"  # installed, probation passed, state committed
    FAILED = "failed"  # refused or reverted: the previous model still serves
    ROLLED_BACK = "rolled_back"  # a signed ``rollback`` command re-activated the other slot
    COMMAND_FAILED = "command_failed"  # a command refused or not carried out; nothing changed
    HELD = "held"  # a ``shadow`` manifest: verified and held in the inactive slot (§15)
    TRIALED = "trialed"  # a ``trial`` manifest: verified, timed, deleted (§15)
    DROPPED = "dropped"  # a signed ``drop_candidate`` command dropped the held candidate (§15)


class UpdateInfo(BaseModel):
    """The updater's latest outcome, carried in a :class:`StatusMessage`.

    Attributes:
        version: The manifest version the outcome is about (0 when the manifest was
            refused before its version could be trusted, e.g. a bad signature).
        outcome: What happened.
        reason: The error's stable ``code`` (e.g. ``hash_mismatch``), when refused.
        artifact_id: The verified manifest's artifact id the outcome is about; absent
            when the manifest was refused before it verified, and for commands.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: VersionNumber
    outcome: UpdateOutcome
    reason: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,64}$")] | None = None
    artifact_id: ArtifactIdField | None = None


class ServingInfo(BaseModel):
    """Exactly which committed artifact a device serves (``docs/protocol.md`` §9).

    A coordinator decides "committed" by these fields alone: a device has installed
    artifact X when its status says it serves X (``model_id``, ``version`` and ``sha256``
    of the installed model file), whether the status arrived live or retained.

    Attributes:
        model_id: The manifest's model id.
        version: The manifest's version.
        artifact_id: The artifact id of the manifest that installed it.
        sha256: SHA-256 of the installed (decoded, decrypted) model file.
        precision: Its precision.
        slot: The A/B slot it was installed in.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: DeviceIdField
    version: Annotated[int, Field(ge=1, le=2**53)]
    artifact_id: ArtifactIdField
    sha256: Sha256Field
    precision: Precision
    slot: Literal["a", "b"]


class VariantTiming(BaseModel):
    """One variant of a model version timed on the device's own CPU (``docs/protocol.md`` §15).

    The agent times each variant it is asked to try (a manifest with purpose ``trial``,
    or the candidate it installs) with its profile's thread count, for a bounded budget.

    Attributes:
        model_id: The manifest's model id.
        version: The manifest's version.
        artifact_id: The artifact timed.
        precision: Its precision.
        threads: Interpreter threads used (the profile's).
        runs: Timed invocations (after warm-up).
        median_us: Median invoke time, microseconds.
        p99_us: 99th percentile invoke time, microseconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: DeviceIdField
    version: Annotated[int, Field(ge=1, le=2**53)]
    artifact_id: ArtifactIdField
    precision: Precision
    threads: Annotated[int, Field(ge=1, le=256)]
    runs: Annotated[int, Field(ge=1)]
    median_us: Micros
    p99_us: Micros


class VariantReport(BaseModel):
    """What a device measured about the variants it tried, with the hardware it ran on.

    Attributes:
        hardware_id: The profile's hardware id (the coordinator's hardware class).
        cpu_features: CPU feature flags relevant to kernels (e.g. ``avx2``, ``avx512_vnni``,
            ``neon``, ``asimddp``), lowercase, sorted.
        timings: The latest timing per artifact, newest last.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    hardware_id: Annotated[str, Field(min_length=1, max_length=128)]
    cpu_features: tuple[CpuFeature, ...] = Field(default=(), max_length=64)
    timings: tuple[VariantTiming, ...] = Field(default=(), max_length=16)


class StatusMessage(_Envelope):
    """Retained device status on ``devices/{id}/status``; also the last will (``offline``).

    The coordinator attributes a status to the device named by its *topic* (which the
    broker ACL lets only that device publish to); ``device_id`` must equal it, or the
    message is dropped and counted.

    Attributes:
        state: Lifecycle state.
        model_version: Label of the model being served (informational: for a model
            installed by the updater it is ``serving.version``; a model loaded from a
            file names its own). Never used for decisions; ``serving`` is.
        slot: Active A/B slot name, if the updater manages slots.
        last_error: Short description of the last error (never a payload or key).
        hardware_id: Hardware revision from the device profile.
        update: The updater's latest outcome, if it has handled a manifest.
        serving: The committed artifact serving now (absent before the first install
            and for a model loaded from a file).
        floor: The device's anti-rollback floor: it refuses any manifest version at or
            below it (across model lines).
        accepts: Precisions the device's profile accepts (its rule P2).
        max_model_bytes: Largest model the device's profile accepts (its rule P1).
        candidate: The artifact held beside the serving one for shadow evaluation
            (manifest purpose ``shadow``), if any.
        variants: Timings of the variants this device tried (§15), if any.
        pin_precision: The precision the device's profile pins (§15), if any.
    """

    kind: Literal[MessageKind.STATUS] = MessageKind.STATUS
    state: DeviceState
    model_version: VersionField | None = None
    slot: Annotated[str, Field(max_length=16)] | None = None
    last_error: Annotated[str, Field(max_length=1024)] | None = None
    hardware_id: Annotated[str, Field(max_length=128)] | None = None
    update: UpdateInfo | None = None
    serving: ServingInfo | None = None
    floor: VersionNumber | None = None
    accepts: tuple[Precision, ...] | None = Field(default=None, max_length=8)
    max_model_bytes: Annotated[int, Field(ge=1, le=2**40)] | None = None
    candidate: ServingInfo | None = None
    variants: VariantReport | None = None
    pin_precision: Precision | None = None


class LatencyStats(BaseModel):
    """Latency percentiles over one telemetry window, in milliseconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: Count
    p50_ms: Seconds
    p95_ms: Seconds
    p99_ms: Seconds
    max_ms: Seconds


class ShadowReport(BaseModel):
    """Shadow evaluation of a candidate beside the serving model, over one telemetry window.

    The candidate ran on a sample of live requests off the caller's path; the caller was
    answered by the serving model only (``docs/protocol.md`` §15). The rollout gates read
    these numbers; ``samples`` says how much evidence they rest on.

    Attributes:
        candidate: The candidate artifact (``slot`` is the inactive slot holding it).
        serving_version: The version serving the callers meanwhile.
        task: ``classifier`` (``agreement`` is set) or ``regressor`` (``mean_abs_diff``).
        samples: Requests evaluated by both models in the window.
        agreement: Top-1 match rate with the serving model (classifiers).
        mean_abs_diff: Mean absolute difference of the outputs (regressors).
        candidate_latency: The candidate's invoke latency on the sampled requests.
        serving_latency: The serving model's latency on the same requests.
        errors: Candidate invocations that raised.
        timeouts: Candidate invocations abandoned past the shadow deadline.
        dropped: Sampled requests not evaluated because the shadow queue was full.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidate: ServingInfo
    serving_version: Annotated[int, Field(ge=0, le=2**53)]
    task: Literal["classifier", "regressor"]
    samples: Count
    agreement: Fraction | None = None
    mean_abs_diff: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    candidate_latency: LatencyStats
    serving_latency: LatencyStats
    errors: Count = 0
    timeouts: Count = 0
    dropped: Count = 0


class TelemetryMessage(_Envelope):
    """Periodic device telemetry on ``devices/{id}/telemetry``.

    Counts are per window (since the previous telemetry message), except ``*_total``.

    Attributes:
        interval_s: Length of the window.
        model_version: Active model version, if any.
        requests: Inference requests served in the window (success + error).
        errors: Requests that failed in the window.
        requests_total: Requests since the agent started.
        latency: Percentiles of successful requests in the window.
        cpu_percent: Agent process CPU use over the window (100 = one core).
        memory_rss_bytes: Agent process resident memory.
        memory_percent: System memory in use.
        uptime_s: Seconds since the agent started.
        outbox_pending: Messages waiting in the durable outbox.
        messages_rejected: Malformed or unexpected MQTT messages dropped since start.
        supernode_restarts: Times the device's Flower SuperNode was restarted since the
            agent started (None on a device that does not train).
        shadow: Shadow evaluation of the candidate in this window, if one is held.
    """

    kind: Literal[MessageKind.TELEMETRY] = MessageKind.TELEMETRY
    interval_s: Seconds
    model_version: VersionField | None = None
    requests: Count
    errors: Count
    requests_total: Count
    latency: LatencyStats
    cpu_percent: Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)]
    memory_rss_bytes: Count
    memory_percent: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
    uptime_s: Seconds
    outbox_pending: Count = 0
    messages_rejected: Count = 0
    supernode_restarts: Count | None = None
    shadow: ShadowReport | None = None


class ManifestMessage(_Envelope):
    """Retained on ``devices/{id}/manifest``: the signed manifest this device should run."""

    kind: Literal[MessageKind.MANIFEST] = MessageKind.MANIFEST
    envelope: Envelope


class CommandMessage(_Envelope):
    """On ``devices/{id}/cmd`` or ``groups/{g}/cmd``: a signed command
    (:mod:`shared.protocol.commands`)."""

    kind: Literal[MessageKind.COMMAND] = MessageKind.COMMAND
    envelope: Envelope


class ResendRequest(_Envelope):
    """On ``devices/{id}/requests``: the chunks a device is still missing (§7)."""

    kind: Literal[MessageKind.RESEND_REQUEST] = MessageKind.RESEND_REQUEST
    artifact_id: ArtifactIdField
    missing: tuple[Annotated[int, Field(ge=0, lt=MAX_CHUNKS)], ...] = Field(
        min_length=1, max_length=MAX_CHUNKS
    )


Message = Annotated[
    StatusMessage | TelemetryMessage | ResendRequest | ManifestMessage | CommandMessage,
    Field(discriminator="kind"),
]
"""Any fedge JSON wire message; pydantic dispatches on ``kind``."""

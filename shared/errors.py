"""The fedge error hierarchy.

Every error the system raises on purpose derives from :class:`FedgeError`, so a
command-line tool or an API layer can catch one class and report it cleanly. Each
subclass is named after what it stops. Foreign errors are wrapped at the boundary
(``raise DatasetError(...) from exc``) so callers never depend on a library's errors.

Tree::

    FedgeError
    ├── ConfigError                 bad settings, bad profile, bad CLI arguments
    │   ├── ProfileError            a device profile fails validation
    │   └── InvalidIdentifierError  an id outside the identifier grammar (shared.identifiers)
    │       └── ReservedNameError   a valid id reserved for a system account (enrollment)
    ├── ProtocolError               a wire message that is malformed, unknown or too large
    ├── OutboxError                 the durable outbox cannot store or read a message
    ├── DatasetError                a data file or data set that cannot be used
    ├── ModelSpecError              a model factory or model spec that cannot be built
    ├── TrainingError               training could not produce a usable model
    ├── QuantizationError           conversion/quantization failed at every precision
    ├── RegistryError               registry state problems
    │   ├── NotFoundError           unknown model, version or artifact
    │   ├── ArtifactStoreError      blob missing or corrupt in the content-addressed store
    │   └── NotDeployableError      an artifact is rejected and may never be deployed
    ├── InferenceError              a model cannot serve a request
    │   ├── ModelLoadError          a model file fails to load or fails its smoke test
    │   └── RequestError            a request has the wrong shape, dtype or size
    └── SecurityError               a security check refused its input; nothing was installed
        ├── CryptoError             decrypt/unwrap/key parse failed (deliberately vague)
        ├── BadSignatureError       signature does not verify: tampered manifest/command
        ├── UntrustedKeyError       signing key not certified by the pinned root (or expired cert)
        │   ├── UnknownKeyError     no certificate at all for the signing key id
        │   └── RevokedKeyError     the key is on the root-signed revocation list
        ├── ExpiredMetadataError    signed metadata past its expiry (freeze attack)
        │   ├── ExpiredManifestError  a manifest past its expiry
        │   └── DownloadExpiredError  a download past its deadline (stalled download, D2)
        ├── WrongHardwareError      manifest not built for this hardware id
        ├── WrongRecipientError     content key/command addressed to another device
        ├── RollbackAttackError     version below the persisted floor
        │   └── ReplayAttackError   version equal to the floor / command sequence reused
        ├── HashMismatchError       chunk or artifact sha256 differs from the signed one
        ├── InvalidTokenError       unknown, used or expired enrollment/API token (cloud.fleet)
        ├── LengthMismatchError     artifact truncated or oversized (endless data)
        └── MalformedArtifactError  signed payload that cannot be decoded
            ├── DeltaBaseError      the delta base is not the artifact this device holds
            └── NonCanonicalPayloadError  signed payload bytes are not canonical JSON
"""

from __future__ import annotations

__all__ = [
    "ArtifactStoreError",
    "BadSignatureError",
    "ConfigError",
    "CryptoError",
    "DatasetError",
    "DeltaBaseError",
    "DownloadExpiredError",
    "ExpiredManifestError",
    "ExpiredMetadataError",
    "FedgeError",
    "HashMismatchError",
    "InferenceError",
    "InvalidIdentifierError",
    "InvalidTokenError",
    "LengthMismatchError",
    "MalformedArtifactError",
    "ModelLoadError",
    "ModelSpecError",
    "NonCanonicalPayloadError",
    "NotDeployableError",
    "NotFoundError",
    "OutboxError",
    "ProfileError",
    "ProtocolError",
    "QuantizationError",
    "RegistryError",
    "ReplayAttackError",
    "RequestError",
    "ReservedNameError",
    "RevokedKeyError",
    "RollbackAttackError",
    "SecurityError",
    "TrainingError",
    "UnknownKeyError",
    "UntrustedKeyError",
    "WrongHardwareError",
    "WrongRecipientError",
]


class FedgeError(Exception):
    """Root of every error fedge raises on purpose.

    Attributes:
        code: A stable machine-readable code (``snake_case``) for scripts and APIs.
    """

    code: str = "fedge_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self.args[0]) if self.args else ""


class ConfigError(FedgeError):
    """Settings, arguments or configuration files that cannot be used."""

    code = "config_error"


class ProfileError(ConfigError):
    """A device profile that fails validation; the message names the field."""

    code = "invalid_profile"


class ProtocolError(FedgeError):
    """Bytes that are not a valid wire message (garbage, unknown kind, over the size limit).

    Raised by the codec instead of any parser error, so an MQTT callback can catch one
    class, count the rejection and keep running.
    """

    code = "bad_message"


class OutboxError(FedgeError):
    """The durable outbox cannot store or read a message (corrupt or unwritable database)."""

    code = "outbox_error"


class DatasetError(FedgeError):
    """A data file or data set that cannot be used; the message says why."""

    code = "invalid_dataset"


class ModelSpecError(FedgeError):
    """A model name, factory or spec that cannot be turned into a model."""

    code = "invalid_model"


class TrainingError(FedgeError):
    """Training failed to produce a usable model (e.g. the loss diverged)."""

    code = "training_failed"


class QuantizationError(FedgeError):
    """Conversion to TFLite failed at every precision in the fallback chain."""

    code = "quantization_failed"


class RegistryError(FedgeError):
    """A problem with registry state."""

    code = "registry_error"


class NotFoundError(RegistryError):
    """An unknown model, version or artifact."""

    code = "not_found"


class ArtifactStoreError(RegistryError):
    """A blob is missing from, or corrupt in, the content-addressed store."""

    code = "artifact_store_error"


class NotDeployableError(RegistryError):
    """An artifact was rejected (e.g. over the accuracy budget) and can never be deployed."""

    code = "not_deployable"


class InferenceError(FedgeError):
    """A model cannot serve a request."""

    code = "inference_error"


class ModelLoadError(InferenceError):
    """A model file fails to load or fails its smoke test; it never becomes active."""

    code = "model_load_failed"


class RequestError(InferenceError):
    """An inference request with the wrong shape, dtype or size."""

    code = "bad_request"


# --- security: one class per attack, modelled on python-tuf's exceptions ----------------


class SecurityError(FedgeError):
    """A security check refused its input; the caller must not install or act on it."""

    code = "security_error"


class CryptoError(SecurityError):
    """Decryption, unwrapping or key parsing failed.

    Deliberately vague (wrong key, tampered ciphertext and wrong associated data all look
    the same) so an attacker learns nothing from the error; callers that know the context
    re-raise a specific class ``from`` it.
    """

    code = "crypto_error"


class BadSignatureError(SecurityError):
    """A signature does not verify over the signed bytes (tampered manifest or command)."""

    code = "bad_signature"


class UntrustedKeyError(SecurityError):
    """The signing key is not certified by the pinned root for this role, or its cert expired."""

    code = "untrusted_key"


class UnknownKeyError(UntrustedKeyError):
    """No certificate is known for the signing key id: an unknown key signed it."""

    code = "unknown_key"


class RevokedKeyError(UntrustedKeyError):
    """The signing key is on the root-signed revocation list."""

    code = "revoked_key"


class ExpiredMetadataError(SecurityError):
    """Signed metadata past its expiry time (stops freeze attacks)."""

    code = "expired"


class ExpiredManifestError(ExpiredMetadataError):
    """A manifest past its expiry time."""

    code = "expired_manifest"


class WrongHardwareError(SecurityError):
    """The manifest does not list this device's hardware id."""

    code = "wrong_hardware"


class WrongRecipientError(SecurityError):
    """A content key or command meant for another device (or no key for this one)."""

    code = "wrong_recipient"


class RollbackAttackError(SecurityError):
    """A version below the persisted high-water mark (rollback attack)."""

    code = "rollback"


class ReplayAttackError(RollbackAttackError):
    """A version equal to the high-water mark, or a reused command sequence (replay)."""

    code = "replay"


class HashMismatchError(SecurityError):
    """A chunk or the whole artifact does not hash to the signed sha256."""

    code = "hash_mismatch"


class LengthMismatchError(SecurityError):
    """An artifact or chunk that is truncated or longer than signed (endless-data attack)."""

    code = "length_mismatch"


class MalformedArtifactError(SecurityError):
    """A signed, hash-verified payload that still cannot be decrypted or decompressed."""

    code = "malformed_artifact"


class DeltaBaseError(MalformedArtifactError):
    """A delta whose base is not the artifact this device holds; ask for the full artifact."""

    code = "delta_base_mismatch"


class NonCanonicalPayloadError(MalformedArtifactError):
    """Signed payload bytes that are not exactly the canonical JSON the spec defines.

    Raised by :func:`shared.artifacts.canonical.parse_canonical` for invalid UTF-8, non-ASCII
    bytes, duplicate keys, floats, NaN/Infinity, out-of-range integers, lone surrogates,
    or bytes that differ from their canonical re-serialization (unsorted keys, whitespace,
    non-minimal escapes): a parser on another platform could read such bytes differently.
    """

    code = "non_canonical_payload"


class DownloadExpiredError(ExpiredMetadataError):
    """A download past its deadline (rule D2): dropped, and its manifest not restarted.

    The deadline is the manifest's own ``expires`` or the device's local download timeout,
    whichever comes first; a stalled download must not block later updates for ever.
    """

    code = "download_expired"


class InvalidIdentifierError(ConfigError):
    """An identifier (device, group, model, rollout, artifact, hardware id) outside the one
    grammar of :mod:`shared.identifiers`: non-ASCII, a trailing newline, ``/``, ``+``,
    ``#``, a control character, empty or too long."""

    code = "invalid_identifier"


class ReservedNameError(InvalidIdentifierError):
    """A valid identifier that is reserved (the coordinator's or monitor's broker account,
    any ``fedge-`` name, ``all``...): a device enrolled under it would take that account over."""

    code = "reserved_name"


class InvalidTokenError(SecurityError):
    """An enrollment or API token that cannot be used: unknown (``invalid_token``), already
    redeemed (``token_used``) or past its expiry (``token_expired``), given via ``code=``."""

    code = "invalid_token"

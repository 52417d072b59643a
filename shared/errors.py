"""The fedge error hierarchy.

Every error the system raises on purpose derives from :class:`FedgeError`, so a
command-line tool or an API layer can catch one class and report it cleanly. Each
subclass is named after what it stops. Foreign errors are wrapped at the boundary
(``raise DatasetError(...) from exc``) so callers never depend on a library's errors.

Tree::

    FedgeError
    ├── ConfigError                 bad settings, bad profile, bad CLI arguments
    │   └── ProfileError            a device profile fails validation
    ├── DatasetError                a data file or data set that cannot be used
    ├── ModelSpecError              a model factory or model spec that cannot be built
    ├── TrainingError               training could not produce a usable model
    ├── QuantizationError           conversion/quantization failed at every precision
    ├── RegistryError               registry state problems
    │   ├── NotFoundError           unknown model, version or artifact
    │   ├── ArtifactStoreError      blob missing or corrupt in the content-addressed store
    │   └── NotDeployableError      an artifact is rejected and may never be deployed
    └── InferenceError              a model cannot serve a request
        ├── ModelLoadError          a model file fails to load or fails its smoke test
        └── RequestError            a request has the wrong shape, dtype or size
"""

from __future__ import annotations

__all__ = [
    "ArtifactStoreError",
    "ConfigError",
    "DatasetError",
    "FedgeError",
    "InferenceError",
    "ModelLoadError",
    "ModelSpecError",
    "NotDeployableError",
    "NotFoundError",
    "ProfileError",
    "QuantizationError",
    "RegistryError",
    "RequestError",
    "TrainingError",
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

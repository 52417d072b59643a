"""Device profiles: what one class of edge device can run, validated before the agent starts.

A profile lives in ``firmware_configs/<name>.toml``. It is parsed here from *text* (this
package does no I/O; callers read the file) and validated by :class:`DeviceProfile`, a
frozen pydantic model. Scalars are strict: ``threads = "4"`` or ``trains = 1`` are
rejected rather than coerced, because a profile that is silently reinterpreted on a
device is worse than one that fails loudly in CI. Every failure is a
:class:`~shared.errors.ProfileError` whose message names the offending field.

Example::

    profile = profile_from_toml(Path("firmware_configs/smart_camera.toml").read_text(),
                                source="smart_camera.toml")
    profile.inference_threads  # -> 2
"""

from __future__ import annotations

import re
import tomllib
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from shared.errors import ProfileError
from shared.precision import Precision

__all__ = [
    "PROFILE_SCHEMA_VERSION",
    "DeviceProfile",
    "Precision",
    "Runtime",
    "profile_from_mapping",
    "profile_from_toml",
]

PROFILE_SCHEMA_VERSION = 1

# Identifiers end up in MQTT topics and file names: no '/', '+', '#', spaces or dots-only.
_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_MIB = 1024 * 1024

StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
StrictStr = Annotated[str, Strict()]
Identifier = Annotated[str, Strict(), Field(pattern=_ID_PATTERN)]


class Runtime(StrEnum):
    """The TFLite runtime package the device ships."""

    LITERT = "ai-edge-litert"
    TFLITE_RUNTIME = "tflite-runtime"


class DeviceProfile(BaseModel):
    """What a class of device is and what it may run.

    Attributes:
        schema_version: Profile format version (currently 1).
        name: Short profile name, e.g. ``smart-camera``.
        description: One human sentence about the device.
        device_class: Family of device (``hub``, ``camera``, ``sensor``, ...).
        hardware_id: Hardware revision; manifests are only installed on matching ids.
        runtime: Which TFLite runtime package the firmware ships.
        inference_threads: CPU threads given to the interpreter (<= physical cores).
        ram_mb: RAM budget for the agent in MiB.
        storage_mb: Storage budget for models (both A/B slots) in MiB.
        max_model_bytes: Largest model file the device accepts.
        precisions: Accepted model precisions, most preferred first.
        pin_precision: The one precision this device must be sent, overriding the
            coordinator's measured choice (``docs/protocol.md`` §15); one of ``precisions``.
        trains: Whether the device fine-tunes locally (only then may it use torch).
        telemetry_interval_s: Seconds between telemetry messages.
        groups: Rollout groups (cohorts) the device belongs to.
        tags: Free-form labels (site, vendor, ...), string to string.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    schema_version: Annotated[StrictInt, Field(ge=1, le=PROFILE_SCHEMA_VERSION)] = (
        PROFILE_SCHEMA_VERSION
    )
    name: Identifier
    description: Annotated[StrictStr, Field(max_length=500)] = ""
    device_class: Identifier
    hardware_id: Identifier
    runtime: Runtime = Runtime.LITERT
    inference_threads: Annotated[StrictInt, Field(ge=1, le=64)]
    ram_mb: Annotated[StrictInt, Field(ge=16, le=1_048_576)]
    storage_mb: Annotated[StrictInt, Field(ge=1, le=16_777_216)]
    max_model_bytes: Annotated[StrictInt, Field(ge=1024)]
    # Optional median LiteRT latency budget per inference; the model plane keeps only
    # variants measured within it for this class (cloud/quantization/device_fit.py).
    latency_target_ms: Annotated[float, Strict(), Field(gt=0)] | None = None
    precisions: Annotated[tuple[Precision, ...], Field(min_length=1, max_length=4)]
    pin_precision: Precision | None = None
    trains: StrictBool = False
    # Down to 0.1 s so integration tests run quickly; real profiles use 10 s and up.
    telemetry_interval_s: Annotated[float, Strict(), Field(ge=0.1, le=86_400)]
    groups: Annotated[tuple[Identifier, ...], Field(max_length=32)] = ()
    tags: Annotated[
        dict[Identifier, Annotated[StrictStr, Field(max_length=200)]], Field(max_length=32)
    ] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_budgets(self) -> Self:
        if len(set(self.precisions)) != len(self.precisions):
            raise ValueError("precisions: each precision may appear only once")
        if len(set(self.groups)) != len(self.groups):
            raise ValueError("groups: each group may appear only once")
        # Two slots (active + candidate) must fit, or an A/B update can never install.
        if 2 * self.max_model_bytes > self.storage_mb * _MIB:
            raise ValueError(
                f"max_model_bytes: two slots of {self.max_model_bytes} bytes do not fit in "
                f"storage_mb={self.storage_mb}"
            )
        # The interpreter maps the whole model in memory next to its arenas.
        if self.max_model_bytes > self.ram_mb * _MIB // 2:
            raise ValueError(
                f"max_model_bytes: {self.max_model_bytes} bytes exceeds half of ram_mb="
                f"{self.ram_mb}"
            )
        if self.pin_precision is not None and self.pin_precision not in self.precisions:
            raise ValueError("pin_precision: must be one of the accepted precisions")
        if self.trains and Precision.FLOAT32 not in self.precisions:
            raise ValueError("trains: a device that trains must accept float32 models")
        return self


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<profile>"
        msg = str(err["msg"])
        # Model-level checks put the field name first ("field: reason"); show it as the loc.
        match = re.match(r"^Value error, (\w+): (.*)$", msg)
        if match and loc == "<profile>":
            loc, msg = match.group(1), match.group(2)
        parts.append(f"field '{loc}': {msg}")
    return "; ".join(parts)


def profile_from_mapping(data: Any, *, source: str = "<profile>") -> DeviceProfile:
    """Validate an already-parsed mapping as a :class:`DeviceProfile`.

    Args:
        data: Parsed profile (e.g. from TOML).
        source: Where it came from, for the error message.

    Raises:
        ProfileError: The message names every invalid field.
    """
    if not isinstance(data, dict):
        raise ProfileError(
            f"profile {source}: expected a table of fields, got {type(data).__name__}"
        )
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"profile {source}: {_format_errors(exc)}") from exc


def profile_from_toml(text: str, *, source: str = "<profile>") -> DeviceProfile:
    """Parse and validate a profile from TOML text.

    Args:
        text: The TOML document.
        source: Where it came from (a file name), for the error message.

    Raises:
        ProfileError: Invalid TOML, or a field that fails validation (named in the message).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {source}: not valid TOML: {exc}") from exc
    return profile_from_mapping(data, source=source)

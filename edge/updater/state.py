"""The updater's committed state: A/B slots, anti-rollback floor and trust, on disk.

``state.json`` is the single commit point (rule S2): it is replaced atomically
(:func:`~edge.updater.fsutil.write_atomic`) and only after a new slot passed probation.
Whatever a crash leaves elsewhere (a half-written slot, a finished but uncommitted slot,
a partial download) is judged against this file on the next start.

Every field added after the first release has a default, so a ``state.json`` written by an
older version still loads (and ``exclude_none`` keeps unset fields out of the file).
"""

from __future__ import annotations

import hashlib
import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.updater.fsutil import write_atomic
from shared.artifacts.manifest import ArtifactId
from shared.artifacts.trust import Envelope
from shared.errors import ConfigError
from shared.precision import Precision

__all__ = [
    "MAX_EXPIRED_DOWNLOADS",
    "Candidate",
    "Slot",
    "SlotRecord",
    "StateStore",
    "UpdaterState",
]

logger = logging.getLogger(__name__)

#: Expired artifact ids remembered (rule D2); only the newest retained manifest matters.
MAX_EXPIRED_DOWNLOADS = 16


class Slot(StrEnum):
    """The two install slots."""

    A = "a"
    B = "b"

    @property
    def other(self) -> Slot:
        """The opposite slot."""
        return Slot.B if self is Slot.A else Slot.A


class SlotRecord(BaseModel):
    """What a committed slot holds; a slot file that does not match is never served.

    Attributes:
        version, sha256, length, model_id: Of the installed artifact (from its manifest).
        artifact_id: The manifest's ``artifact_id``; None for a slot committed by a version
            of the updater that did not record it.
        precision: The manifest's ``precision``; None likewise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=1)
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    length: int = Field(ge=1)
    model_id: str
    artifact_id: ArtifactId | None = None
    precision: Precision | None = None

    def matches(self, data: bytes) -> bool:
        """Whether ``data`` is exactly the recorded artifact."""
        return len(data) == self.length and hashlib.sha256(data).hexdigest() == self.sha256


class Candidate(BaseModel):
    """A shadow candidate held in the inactive slot (manifest purpose ``shadow``, §15).

    Never active and never committed: it does not move the floor and is not a rollback
    target. Kept in ``state.json`` so that after a restart the slot file is checked against
    it (rule I2) and the candidate re-announced, instead of being erased as uncommitted.

    Attributes:
        slot: The (inactive) slot holding it.
        record: What the slot file must be (``artifact_id`` and ``precision`` always set).
        manifest: The verified manifest's canonical JSON, to hand to the shadow evaluator
            again after a restart and to install from without downloading again.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    slot: Slot
    record: SlotRecord
    manifest: Annotated[str, Field(max_length=256 * 1024)]


class UpdaterState(BaseModel):
    """Committed state.

    Attributes:
        active: The slot serving now (None before the first install).
        slots: Records of slots holding a committed artifact (the inactive one is the
            rollback target).
        floor: Anti-rollback high-water mark: the highest version ever committed (V6).
        revocations: The newest root-signed revocation list verified (rule T5), saved as
            soon as a manifest carrying it arrives, whatever becomes of that manifest
            (rule T6).
        command_seq: The highest command ``seq`` accepted (rule K6), saved before the
            command is carried out so a replay is refused even after a crash.
        expired_downloads: Artifact ids of downloads dropped at their deadline (rule D2),
            newest last, at most :data:`MAX_EXPIRED_DOWNLOADS`: their manifest (e.g. the
            retained one, redelivered at every reconnect) is refused, not restarted.
        candidate: The shadow candidate held in the inactive slot, if any (§15); its slot
            has no committed record while it is held.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    active: Slot | None = None
    slots: dict[Slot, SlotRecord] = Field(default_factory=dict)
    floor: int = Field(default=0, ge=0)
    revocations: Envelope | None = None
    command_seq: int = Field(default=0, ge=0)
    expired_downloads: tuple[ArtifactId, ...] = Field(default=(), max_length=MAX_EXPIRED_DOWNLOADS)
    candidate: Candidate | None = None

    @property
    def active_record(self) -> SlotRecord | None:
        """The record of the active slot."""
        return self.slots.get(self.active) if self.active is not None else None


class StateStore:
    """Reads and atomically writes ``state.json`` in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "state.json"

    def load(self) -> UpdaterState:
        """The committed state (empty if nothing was ever committed).

        Raises:
            ConfigError: the file exists but is unreadable; a device must not guess its
                floor, so it refuses to run rather than accept a rollback.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return UpdaterState()
        except OSError as exc:
            raise ConfigError(f"cannot read updater state {self.path}: {exc.strerror}") from exc
        try:
            return UpdaterState.model_validate_json(raw)
        except ValidationError as exc:
            raise ConfigError(f"updater state {self.path} is corrupt") from exc

    def save(self, state: UpdaterState) -> None:
        """Commit ``state`` (rule S2: atomic replace, durable before returning)."""
        write_atomic(self.path, state.model_dump_json(exclude_none=True).encode())
        logger.info("committed updater state: active=%s floor=%d", state.active, state.floor)

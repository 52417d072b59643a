"""The A/B install slots: ``slots/a.tflite`` and ``slots/b.tflite``.

A new model is only ever written into the *inactive* slot (rule I1), so the model serving
now is never touched by an install. On start-up (:meth:`SlotStore.recover`) every slot file
is checked against the committed records: a file that is not exactly a committed artifact
(half-written, or complete but never committed because probation or the commit did not
finish) is deleted and its record dropped (rule I2), so only a committed model can serve.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge.updater.fsutil import fsync_dir, remove_temporaries, write_atomic
from edge.updater.state import Slot, UpdaterState

__all__ = ["SlotStore"]

logger = logging.getLogger(__name__)


class SlotStore:
    """Slot files under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.root = directory

    def path(self, slot: Slot) -> Path:
        """File of ``slot``."""
        return self.root / f"{slot.value}.tflite"

    def read(self, slot: Slot) -> bytes:
        """Bytes of ``slot`` (raises OSError if missing)."""
        return self.path(slot).read_bytes()

    def write(self, slot: Slot, data: bytes) -> Path:
        """Write ``data`` into ``slot`` atomically and durably (rule F1)."""
        path = self.path(slot)
        write_atomic(path, data)
        return path

    def erase(self, slot: Slot) -> None:
        """Delete ``slot``'s file (an uncommitted or reverted candidate)."""
        path = self.path(slot)
        if path.exists():
            path.unlink()
            fsync_dir(self.root)

    def recover(self, state: UpdaterState) -> UpdaterState:
        """Drop slot files and records that are not a verified committed artifact (rule I2).

        Returns:
            The state with records removed for slots whose file is missing or differs;
            ``active`` falls back to the other committed slot if the active one is bad.
        """
        remove_temporaries(self.root)
        slots = dict(state.slots)
        candidate = state.candidate
        for slot in Slot:
            record = slots.get(slot)
            path = self.path(slot)
            try:
                data = path.read_bytes() if path.exists() else None
            except OSError:
                data = None
            if record is not None and (data is None or not record.matches(data)):
                logger.error("slot %s does not hold its committed artifact; dropping it", slot)
                del slots[slot]
                record = None
            # A held shadow candidate (§15) survives a restart only if its slot is not
            # (also) a committed slot and its file is still exactly the candidate.
            held = candidate is not None and candidate.slot is slot
            if held and candidate is not None:
                if record is not None or data is None or not candidate.record.matches(data):
                    logger.warning("dropping the shadow candidate in slot %s", slot)
                    candidate = None
                else:
                    continue
            if record is None and data is not None:
                logger.info("removing uncommitted candidate in slot %s", slot)
                self.erase(slot)
        active = state.active
        if active is not None and active not in slots:
            active = active.other if active.other in slots else None
        return state.model_copy(update={"slots": slots, "active": active, "candidate": candidate})

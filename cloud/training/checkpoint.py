"""Checkpoints written every epoch, so a killed run continues with ``--resume``.

One file, ``checkpoint.pt``, replaced atomically (write to a temporary file, fsync,
``os.replace``): a kill while saving leaves the previous epoch's checkpoint intact.
It holds everything the next epoch depends on — weights, optimizer, LR schedule, grad
scaler, and the RNG states that order the batches and drive dropout — so a resumed run
retraces the uninterrupted one. A fingerprint of the spec and hyper-parameters is kept
and checked: resuming with different settings is refused, not silently mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.errors import ConfigError

FILENAME = "checkpoint.pt"


def fingerprint(payload: dict[str, Any]) -> str:
    """Stable hash of the settings a checkpoint belongs to."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Checkpoint:
    """What one saved epoch restores."""

    epoch: int
    state: dict[str, Any]


def save(directory: Path, epoch: int, key: str, state: dict[str, Any]) -> Path:
    """Write the state after ``epoch`` (1-based) atomically; returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / FILENAME
    tmp = directory / f".{FILENAME}.{os.getpid()}.tmp"
    with tmp.open("wb") as handle:
        torch.save({"epoch": epoch, "fingerprint": key, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


def load(directory: Path, key: str) -> Checkpoint | None:
    """The last checkpoint in ``directory``, or None when there is none.

    Raises:
        ConfigError: the checkpoint was written for other settings, or is unreadable.
    """
    path = directory / FILENAME
    if not path.exists():
        return None
    try:
        # Our own file; it holds optimizer state and numpy RNG state (plain Python types).
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: refuse with the reason
        raise ConfigError(f"cannot read checkpoint {path}: {exc!r}") from exc
    if state.get("fingerprint") != key:
        raise ConfigError(
            f"checkpoint {path} belongs to a run with other data, model or hyper-parameters; "
            "use another --checkpoint-dir or drop --resume"
        )
    return Checkpoint(epoch=int(state.pop("epoch")), state=state)

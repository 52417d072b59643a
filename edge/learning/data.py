"""The device's local training data: an ``.npz`` with ``x`` (float32) and ``y`` (int64).

Where it lives: ``node_config["data-path"]`` on a real SuperNode (set by the agent), or in
simulation ``<partition-dir>/partition-<id>.npz`` written by the coordinator's partitioner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LocalData:
    """Inputs and labels on this device."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


def load_local_data(path: str | Path) -> LocalData:
    """Load a partition file, checking it holds matching ``x`` and ``y``.

    Raises:
        ValueError: the file lacks ``x``/``y`` or their lengths differ.
    """
    with np.load(Path(path), allow_pickle=False) as npz:
        if "x" not in npz or "y" not in npz:
            raise ValueError(f"{path}: needs arrays x and y")
        x = np.ascontiguousarray(npz["x"], dtype=np.float32)
        y = np.ascontiguousarray(npz["y"], dtype=np.int64)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{path}: x has {len(x)} rows, y has {len(y)}")
    return LocalData(x, y)


def partition_path(partition_dir: str | Path, partition_id: int) -> Path:
    """Where the simulation partitioner writes partition ``partition_id``."""
    return Path(partition_dir) / f"partition-{partition_id}.npz"

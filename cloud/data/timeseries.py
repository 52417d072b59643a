"""Time-series data ``(N, T, F)``: the real sets that ship inside sktime's wheel, and the
rules a user's sequence file must meet.

``--data aeon:NAME`` (or ``sktime:NAME``) names one of :data:`BUNDLED_SERIES`. The issue
named aeon; aeon 1.6 pins numpy < 2.4 and would downgrade this environment's numpy, while
sktime 1.2 installs beside it unchanged and ships the same UCR/UEA files, so sktime is the
backend and both prefixes are accepted. The ``.ts`` files are read straight from the
installed package: nothing is ever downloaded (a name that is not bundled is refused).
The set's own train/test files are concatenated; fedge's stratified split by seed then
applies as for every other data set, so a version's held-out split can be rebuilt later.

How one sample is read is the *reading*: ``sequence`` keeps ``(T, F)`` for the GRU, LSTM
and Transformer; ``image`` makes it a one-channel ``(1, T, F)`` grid for a CNN (a fair
baseline). The reading is recorded with the version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from shared.errors import DatasetError

Reading = Literal["auto", "image", "sequence"]

#: Bundled sets of equal-length series (name → what it is).
BUNDLED_SERIES: dict[str, str] = {
    "BasicMotions": "accelerometer + gyroscope, 4 activities, 6 channels x 100 steps",
    "ItalyPowerDemand": "daily power demand, 2 seasons, 1 channel x 24 hours",
    "ACSF1": "home-appliance power draw, 10 appliances, 1 channel x 1460 steps",
    "GunPoint": "hand motion (x coordinate), 2 classes, 1 channel x 150 steps",
    "ArrowHead": "arrow-head outlines as series, 3 classes, 1 channel x 251 steps",
    "OSULeaf": "leaf outlines as series, 6 classes, 1 channel x 427 steps",
}
PREFIXES = ("aeon:", "sktime:")


def is_bundled_source(source: str) -> bool:
    """True for ``aeon:NAME`` / ``sktime:NAME``."""
    return source.startswith(PREFIXES)


def _data_dir() -> Path:
    try:
        import sktime.datasets
    except ImportError as exc:  # the cloud extra installs it
        raise DatasetError(
            f"bundled time-series sets need sktime (pip install 'fedge[cloud]'): {exc}"
        ) from exc
    return Path(sktime.datasets.__file__).parent / "data"


def load_bundled(source: str) -> tuple[str, np.ndarray, np.ndarray]:
    """``(name, x (N, T, F) float32, y raw labels)`` of a bundled set.

    Raises:
        DatasetError: the name is not bundled or its files cannot be read.
    """
    name = source.split(":", 1)[1]
    if name not in BUNDLED_SERIES:
        raise DatasetError(
            f"unknown bundled time-series set {name!r}: use one of "
            f"{', '.join(sorted(BUNDLED_SERIES))} (nothing is downloaded)"
        )
    from sktime.datasets import load_from_tsfile

    parts_x, parts_y = [], []
    for half in ("TRAIN", "TEST"):
        path = _data_dir() / name / f"{name}_{half}.ts"
        if not path.is_file():
            raise DatasetError(f"{source}: {path} is not in the installed sktime package")
        try:
            x, y = load_from_tsfile(str(path), return_data_type="numpy3D")
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{source}: cannot read {path.name}: {exc}") from exc
        parts_x.append(np.asarray(x, dtype=np.float32))
        parts_y.append(np.asarray(y))
    # sktime's numpy3D is (N, channels, T); fedge's sequences are (N, T, F).
    series = np.transpose(np.concatenate(parts_x), (0, 2, 1))
    labels = np.concatenate(parts_y)
    _, y_int = np.unique(labels, return_inverse=True)
    return name, np.ascontiguousarray(series), y_int.astype(np.int64)


def check_sequence_array(x: np.ndarray, where: str) -> None:
    """The rules a sequence input ``(N, T, F)`` must meet beyond the generic ones.

    Raises:
        DatasetError: ``x`` is not 3-D, or T or F is zero.
    """
    if x.ndim != 3:
        raise DatasetError(f"{where}: sequence data must be (N, T, F); got shape {x.shape}")
    if x.shape[1] == 0:
        raise DatasetError(f"{where}: 'x' has T=0 time steps (shape {x.shape})")
    if x.shape[2] == 0:
        raise DatasetError(f"{where}: 'x' has F=0 features per step (shape {x.shape})")


def series_scale(x: np.ndarray) -> float:
    """The divisor that brings a bundled set into ``[-1, 1]`` (its largest magnitude)."""
    peak = float(np.abs(x).max())
    return peak if peak > 0 else 1.0

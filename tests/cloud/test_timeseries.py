"""Time-series data: bundled sets from the installed package, and bad files refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud.data import data_record, load_dataset, split_from_record, stratified_split
from shared.errors import DatasetError


def _npz(tmp_path: Path, **arrays: object) -> Path:
    path = tmp_path / "series.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_bundled_set_loads_as_sequences_without_network() -> None:
    data = load_dataset("aeon:BasicMotions")
    assert data.kind == "sequence"
    assert data.x.shape == (80, 100, 6)  # 80 recordings, 100 steps, 3 accel + 3 gyro axes
    assert data.num_classes == 4
    assert data.x.dtype == np.float32
    assert np.abs(data.x).max() == pytest.approx(1.0)  # scaled by its largest magnitude
    assert data.input_scale > 1.0


def test_bundled_set_read_as_image_is_one_channel_grid() -> None:
    data = load_dataset("sktime:ItalyPowerDemand", reading="image")
    assert data.kind == "image"
    assert data.x.shape[1:] == (1, 24, 1)


def test_unknown_bundled_set_is_refused_by_name() -> None:
    with pytest.raises(DatasetError, match="unknown bundled time-series set 'NoSuchSet'"):
        load_dataset("aeon:NoSuchSet")


def test_user_sequences_round_trip_through_the_record(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = _npz(tmp_path, x=rng.normal(size=(40, 12, 3)).astype(np.float32), y=np.arange(40) % 2)
    data = load_dataset(path, reading="sequence")
    assert data.kind == "sequence"
    assert data.input_shape == (12, 3)
    record = data_record(str(path), data, seed=3, reading="sequence")
    assert record["reading"] == "sequence"
    again = split_from_record(record)
    first = stratified_split(data, seed=3)
    assert again.train_x.shape[1:] == (12, 3)
    np.testing.assert_array_equal(again.test_y, first.test_y)


def test_three_d_npz_stays_an_image_by_default(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.zeros((10, 8, 8), np.uint8), y=np.arange(10) % 2)
    assert load_dataset(path).kind == "image"


@pytest.mark.parametrize(
    ("x", "y", "reason"),
    [
        (np.zeros((10, 0, 3), np.float32), np.arange(10) % 2, "T=0 time steps"),
        (np.zeros((10, 5, 0), np.float32), np.arange(10) % 2, "F=0 features"),
        (np.zeros((10, 5), np.float32) + np.nan, np.arange(10) % 2, "NaN or infinite"),
        (np.zeros((10, 5, 2), np.float32), np.arange(9) % 2, "10 samples but 'y' has 9"),
        (np.zeros((10, 5, 2), np.float32), np.linspace(0, 1, 10), "integer labels"),
        (np.zeros((10, 5, 2), np.float32), np.zeros(10, np.int64), "at least 2 classes"),
        (np.zeros((10, 5, 2, 2, 2), np.float32), np.arange(10) % 2, "must be"),
    ],
)
def test_bad_sequence_files_are_refused_by_name(
    tmp_path: Path, x: np.ndarray, y: np.ndarray, reason: str
) -> None:
    with pytest.raises(DatasetError, match=reason):
        load_dataset(_npz(tmp_path, x=x, y=y), reading="sequence")


def test_ragged_object_array_is_refused_by_name(tmp_path: Path) -> None:
    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.zeros((5, 2)), np.zeros((7, 2)), np.zeros((6, 2))]
    path = _npz(tmp_path, x=ragged, y=np.array([0, 1, 0]))
    with pytest.raises(DatasetError, match="object array \\(ragged sequences"):
        load_dataset(path, reading="sequence")

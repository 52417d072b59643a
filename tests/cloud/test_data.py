"""Data loaders: real built-in data sets, user .npz files, and every bad-input case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud.data import load_dataset, stratified_split
from shared.errors import DatasetError


def test_mnist_5k_is_real_mnist() -> None:
    data = load_dataset("mnist-5k")
    assert data.x.shape == (5000, 1, 28, 28)
    assert data.num_classes == 10
    assert data.x.dtype == np.float32 and data.x.min() >= 0.0 and data.x.max() <= 1.0
    assert data.input_scale == 255.0


def test_digits_is_sklearn_digits() -> None:
    data = load_dataset("digits")
    assert data.x.shape == (1797, 1, 8, 8)
    assert data.kind == "image" and data.num_classes == 10
    assert data.x.max() == pytest.approx(1.0)


def test_split_is_stratified_and_deterministic() -> None:
    data = load_dataset("digits")
    a = stratified_split(data, seed=3)
    b = stratified_split(data, seed=3)
    c = stratified_split(data, seed=4)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    np.testing.assert_array_equal(a.test_x, b.test_x)
    assert not np.array_equal(a.test_x, c.test_x)
    assert len(a.train_y) + len(a.test_y) == len(data)
    # Each class keeps its share (±1 sample) on the test side.
    for cls in range(10):
        share = (data.y == cls).sum() * 0.2
        assert abs((a.test_y == cls).sum() - share) <= 1


def _save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((40, 6), (6,)), ((40, 5, 7), (1, 5, 7)), ((40, 5, 7, 3), (3, 5, 7))],
)
def test_user_npz_layouts(
    tmp_path: Path, shape: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(0)
    path = _save(tmp_path / "mine.npz", x=rng.random(shape), y=np.arange(40) % 4 + 3)
    data = load_dataset(str(path))
    assert data.input_shape == expected
    assert data.num_classes == 4
    assert data.class_names == (3, 4, 5, 6)  # labels remapped to 0..3, originals kept
    assert set(np.unique(data.y)) == {0, 1, 2, 3}


def test_uint8_images_are_scaled(tmp_path: Path) -> None:
    x = np.full((10, 4, 4), 255, dtype=np.uint8)
    path = _save(tmp_path / "img.npz", x=x, y=np.arange(10) % 2)
    data = load_dataset(str(path))
    assert data.input_scale == 255.0 and data.x.max() == 1.0


GOOD_X = np.zeros((10, 3), dtype=np.float32)
GOOD_Y = np.arange(10) % 2


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": GOOD_X}, "missing array(s) 'y'"),
        ({"features": GOOD_X, "labels": GOOD_Y}, "missing array(s) 'x', 'y'"),
        ({"x": GOOD_X, "y": GOOD_Y.astype(np.float32)}, "'y' must hold integer labels"),
        ({"x": GOOD_X.astype(str), "y": GOOD_Y}, "'x' must be numeric"),
        ({"x": GOOD_X, "y": GOOD_Y[:7]}, "'x' has 10 samples but 'y' has 7 labels"),
        ({"x": np.where(GOOD_X == 0, np.nan, 0), "y": GOOD_Y}, "NaN or infinite"),
        ({"x": np.full((10, 3), np.inf), "y": GOOD_Y}, "NaN or infinite"),
        ({"x": np.zeros((0, 3)), "y": np.zeros(0, dtype=int)}, "'x' is empty"),
        ({"x": GOOD_X, "y": np.zeros(10, dtype=int)}, "at least 2 classes"),
        ({"x": GOOD_X, "y": np.array([0] * 9 + [1])}, "class 1 has 1 sample"),
        ({"x": np.zeros((10, 2, 2, 2, 2)), "y": GOOD_Y}, "must be (N,F), (N,H,W) or (N,H,W,C)"),
        ({"x": GOOD_X, "y": GOOD_Y.reshape(5, 2)}, "'y' must be 1-D"),
    ],
)
def test_bad_npz_is_refused_with_the_reason(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError) as info:
        load_dataset(str(path))
    assert message in str(info.value)


def test_not_an_npz_at_all(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip archive\x00\x01")
    with pytest.raises(DatasetError, match=r"not a readable \.npz"):
        load_dataset(str(path))


def test_a_plain_npy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "array.npz"
    with path.open("wb") as handle:
        np.save(handle, GOOD_X)
    with pytest.raises(DatasetError, match=r"not an \.npz archive"):
        load_dataset(str(path))


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "obj.npz", x=np.array([{"a": 1}] * 10, dtype=object), y=GOOD_Y)
    with pytest.raises(DatasetError):
        load_dataset(str(path))


def test_missing_file_and_unknown_name() -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset("/nonexistent/data.npz")
    with pytest.raises(DatasetError, match="unknown data set 'cifar'"):
        load_dataset("cifar")

"""Flower Datasets partitioners over the bundled data: deterministic, disjoint, skewed as named."""

from __future__ import annotations

import numpy as np
import pytest

from shared.errors import ConfigError
from simulations.partitions import partition_indices


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    from cloud.data import load_dataset

    return load_dataset("digits").y


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shard", "quantity"])
def test_partitions_are_deterministic_by_seed_and_disjoint(labels: np.ndarray, scheme: str) -> None:
    a = partition_indices(labels, 20, scheme=scheme, seed=5)
    b = partition_indices(labels, 20, scheme=scheme, seed=5)
    c = partition_indices(labels, 20, scheme=scheme, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    flat = np.concatenate(a)
    assert len(flat) == len(set(flat.tolist()))  # no row on two devices
    assert all(len(p) > 0 for p in a)


def _labels_per_device(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    return float(np.mean([len(np.unique(labels[p])) for p in parts]))


def test_smaller_alpha_means_more_label_skew(labels: np.ndarray) -> None:
    mild = partition_indices(labels, 20, scheme="dirichlet", seed=1, alpha=10.0)
    harsh = partition_indices(labels, 20, scheme="dirichlet", seed=1, alpha=0.1)
    assert _labels_per_device(labels, harsh) < _labels_per_device(labels, mild) - 3


def test_iid_is_balanced_and_shards_are_pathological(labels: np.ndarray) -> None:
    iid = partition_indices(labels, 20, scheme="iid", seed=1)
    assert max(map(len, iid)) - min(map(len, iid)) <= 1
    assert _labels_per_device(labels, iid) > 9
    shards = partition_indices(labels, 20, scheme="shard", seed=1, shards_per_partition=2)
    assert all(len(np.unique(labels[p])) <= 3 for p in shards)  # a shard may straddle a label edge


def test_quantity_skew_varies_sizes_not_labels(labels: np.ndarray) -> None:
    parts = partition_indices(labels, 20, scheme="quantity", seed=1, alpha=0.5)
    sizes = sorted(map(len, parts))
    assert sum(sizes) == len(labels)
    assert sizes[-1] > 5 * sizes[len(sizes) // 2] or sizes[-1] > 4 * sizes[0]
    big = max(parts, key=len)
    assert len(np.unique(labels[big])) == 10


def test_dirichlet_over_many_devices_falls_back_to_per_device_label_mixes() -> None:
    from cloud.data import load_dataset, stratified_split

    y = stratified_split(load_dataset("mnist-5k"), seed=0).train_y
    parts = partition_indices(y, 800, scheme="dirichlet", seed=11, alpha=0.5)
    assert len(parts) == 800 and min(map(len, parts)) >= 1
    assert sum(map(len, parts)) == len(y)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"scheme": "zipf"}, "unknown partitioner"),
        ({"scheme": "iid", "num": 10_000}, "cannot split"),
        ({"scheme": "dirichlet", "alpha": 0.0}, "alpha must be > 0"),
        ({"scheme": "shard", "shards_per_partition": 1000}, "shards exceed"),
    ],
)
def test_bad_partition_requests_are_config_errors(
    labels: np.ndarray, kwargs: dict[str, object], needle: str
) -> None:
    num = int(kwargs.pop("num", 20))  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match=needle):
        partition_indices(labels, num, **kwargs)  # type: ignore[arg-type]

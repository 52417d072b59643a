"""IID and Dirichlet partitions: disjoint, complete, and skewed when asked."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.federation.partition import dirichlet_partition, iid_partition
from shared.errors import ConfigError

LABELS = np.repeat(np.arange(10), 100)


def _assert_disjoint_cover(parts: list[np.ndarray]) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS)
    assert set(joined.tolist()) == set(range(len(LABELS)))


def test_iid_partition_is_balanced() -> None:
    parts = iid_partition(LABELS, 4, seed=1)
    _assert_disjoint_cover(parts)
    assert {len(p) for p in parts} == {250}
    # IID: every client sees every class.
    assert all(len(np.unique(LABELS[p])) == 10 for p in parts)


def test_dirichlet_partition_is_label_skewed() -> None:
    skewed = dirichlet_partition(LABELS, 5, alpha=0.1, seed=0)
    mild = dirichlet_partition(LABELS, 5, alpha=100.0, seed=0)
    _assert_disjoint_cover(skewed)
    _assert_disjoint_cover(mild)

    def top_class_share(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.bincount(LABELS[p]).max() / len(p) for p in parts]))

    assert top_class_share(skewed) > 0.4
    assert top_class_share(mild) < 0.2


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        dirichlet_partition(LABELS, 5, alpha=0.0)
    with pytest.raises(ConfigError):
        iid_partition(LABELS, 0)

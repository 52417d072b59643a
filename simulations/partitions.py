"""Split a training set across simulated devices with Flower Datasets partitioners.

The bundled data (``mnist-5k``, ``digits``) are numpy arrays, so no download is involved:
the labels become an in-memory Hugging Face ``datasets.Dataset`` with an ``idx`` column, a
``flwr_datasets`` partitioner splits it, and each partition's ``idx`` column is the list of
rows that device holds. Every scheme is deterministic for a given seed:

* ``iid`` — :class:`~flwr_datasets.partitioner.IidPartitioner` over a seeded shuffle;
* ``dirichlet`` — label skew Dir(α):
  :class:`~flwr_datasets.partitioner.DirichletPartitioner` (each class split over the
  devices by Dir(α) proportions). Beyond a few hundred devices per few thousand rows that
  split leaves devices empty and the library gives up after 10 redraws; then
  :class:`~flwr_datasets.partitioner.InnerDirichletPartitioner` is used instead (equal
  sizes, each device's label mix drawn from Dir(α)) — the same skew from the device's side;
* ``shard`` — :class:`~flwr_datasets.partitioner.ShardPartitioner`, the pathological
  "k label-sorted shards per client" split of McMahan et al.;
* ``quantity`` — :class:`~flwr_datasets.partitioner.SizePartitioner` over a seeded shuffle:
  labels IID, sizes ``1 + Multinomial(n - k, Dir(α))`` (NIID-Bench's quantity skew; the
  library's Linear/Exponential partitioners give empty devices beyond a few hundred).
"""

from __future__ import annotations

import warnings
from enum import StrEnum
from typing import Any

import numpy as np

from shared.errors import ConfigError

__all__ = ["PartitionScheme", "partition_indices"]


class PartitionScheme(StrEnum):
    """The partitioning schemes a scenario may name."""

    IID = "iid"
    DIRICHLET = "dirichlet"
    SHARD = "shard"
    QUANTITY = "quantity"


def _load_all(partitioner: Any, table: Any, count: int) -> list[np.ndarray]:
    partitioner.dataset = table
    with warnings.catch_warnings():
        # The Dirichlet partitioners warn on every redraw; a failure still raises.
        warnings.simplefilter("ignore", UserWarning)
        return [
            np.sort(np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64))
            for i in range(count)
        ]


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    *,
    scheme: str,
    seed: int = 0,
    alpha: float = 0.5,
    shards_per_partition: int = 2,
    min_partition_size: int = 1,
) -> list[np.ndarray]:
    """Row indices of ``labels`` held by each of ``num_partitions`` devices.

    Args:
        labels: Integer class labels of the training set.
        num_partitions: Devices that hold data.
        scheme: One of :class:`PartitionScheme`.
        seed: Makes the split reproducible.
        alpha: Dirichlet concentration (smaller: more label skew).
        shards_per_partition: Label-sorted shards per device (``shard``).
        min_partition_size: Dirichlet redraws until every device holds this many rows.

    Raises:
        ConfigError: unknown scheme, impossible sizes, or a Dirichlet draw that cannot give
            every device ``min_partition_size`` rows.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        InnerDirichletPartitioner,
        Partitioner,
        ShardPartitioner,
        SizePartitioner,
    )

    try:
        which = PartitionScheme(scheme)
    except ValueError:
        known = ", ".join(s.value for s in PartitionScheme)
        raise ConfigError(f"unknown partitioner {scheme!r}; use one of {known}") from None
    if num_partitions < 1 or num_partitions * max(1, min_partition_size) > len(labels):
        raise ConfigError(f"cannot split {len(labels)} samples across {num_partitions} devices")
    if which is PartitionScheme.DIRICHLET and alpha <= 0:
        raise ConfigError(f"dirichlet alpha must be > 0, got {alpha}")
    if which is PartitionScheme.SHARD and (
        shards_per_partition < 1 or num_partitions * shards_per_partition > len(labels)
    ):
        raise ConfigError(
            f"{num_partitions} devices x {shards_per_partition} shards exceed {len(labels)} rows"
        )
    table = Dataset.from_dict(
        {"idx": np.arange(len(labels), dtype=np.int64), "label": np.asarray(labels).tolist()}
    )
    partitioner: Partitioner
    if which is PartitionScheme.IID:
        table = table.shuffle(seed=seed)
        partitioner = IidPartitioner(num_partitions)
    elif which is PartitionScheme.QUANTITY:
        table = table.shuffle(seed=seed)
        rng = np.random.default_rng(seed)
        spare = len(labels) - num_partitions
        sizes = 1 + rng.multinomial(spare, rng.dirichlet([alpha] * num_partitions))
        partitioner = SizePartitioner([int(n) for n in sizes])
    elif which is PartitionScheme.DIRICHLET:
        partitioner = DirichletPartitioner(
            num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_partition_size,
            seed=seed,
        )
    else:
        partitioner = ShardPartitioner(
            num_partitions,
            partition_by="label",
            num_shards_per_partition=shards_per_partition,
            seed=seed,
        )
    try:
        parts = _load_all(partitioner, table, num_partitions)
    except ValueError as exc:  # flwr-datasets' "could not satisfy min size" and friends
        if which is not PartitionScheme.DIRICHLET:
            raise ConfigError(f"{which.value} partitioning failed: {exc}") from exc
        even = [len(labels) // num_partitions] * num_partitions
        for i in range(len(labels) % num_partitions):
            even[i] += 1
        inner = InnerDirichletPartitioner(even, partition_by="label", alpha=alpha, seed=seed)
        try:
            parts = _load_all(inner, table, num_partitions)
        except ValueError as again:
            raise ConfigError(f"dirichlet partitioning failed: {again}") from again
    if any(len(p) == 0 for p in parts):
        raise ConfigError(
            f"{which.value} partitioning left a device without data; use fewer devices"
        )
    return parts

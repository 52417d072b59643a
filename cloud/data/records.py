"""Record which data a version was trained on, and get the same held-out split back later.

The record is stored with every registry version, so quantization (and a user reading
``fedge models show``) evaluates on exactly the test split training never saw. A user's
``.npz`` is pinned by its sha256: if the file changed since, we refuse rather than evaluate
on different data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cloud.data.datasets import BUILTIN_DATASETS, Dataset, Split, load_dataset, stratified_split
from cloud.data.timeseries import Reading, is_bundled_source
from shared.errors import DatasetError

DEFAULT_TEST_FRACTION = 0.2


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_record(
    source: str,
    dataset: Dataset,
    *,
    seed: int,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    reading: Reading = "auto",
) -> dict[str, Any]:
    """The JSON record of a data set and split, for the registry.

    ``reading`` is how 3-D inputs were read (``sequence`` or ``image``); it is stored so
    the same split comes back in the same shape.
    """
    record: dict[str, Any] = {
        "source": source,
        "name": dataset.name,
        "kind": dataset.kind,
        "samples": len(dataset),
        "num_classes": dataset.num_classes,
        "class_names": list(dataset.class_names),
        "input_scale": dataset.input_scale,
        "seed": seed,
        "test_fraction": test_fraction,
        "reading": reading,
        "input_shape": list(dataset.input_shape),
    }
    if source not in BUILTIN_DATASETS and not is_bundled_source(source):
        path = Path(source).resolve()
        record["source"] = str(path)
        record["sha256"] = file_sha256(path)
    return record


def split_from_record(record: dict[str, Any]) -> Split:
    """Reload the data set of ``record`` and recreate the same split.

    Raises:
        DatasetError: the data set is gone or its file changed since training.
    """
    source = str(record.get("source", ""))
    if not source:
        raise DatasetError("this version has no data record; pass the data explicitly")
    expected = record.get("sha256")
    if expected and Path(source).exists() and file_sha256(Path(source)) != expected:
        raise DatasetError(f"{source} changed since this version was trained (sha256 differs)")
    reading = record.get("reading", "auto")
    if reading not in ("auto", "image", "sequence"):
        raise DatasetError(f"this version's data record has an unknown reading {reading!r}")
    dataset = load_dataset(source, reading=reading)
    return stratified_split(
        dataset,
        test_fraction=float(record.get("test_fraction", DEFAULT_TEST_FRACTION)),
        seed=int(record.get("seed", 0)),
    )

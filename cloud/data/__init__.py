"""Data sets for training: the real ones that ship inside packages and the user's own ``.npz``."""

from cloud.data.datasets import BUILTIN_DATASETS, Dataset, Split, load_dataset, stratified_split
from cloud.data.records import data_record, split_from_record

__all__ = [
    "BUILTIN_DATASETS",
    "Dataset",
    "Split",
    "data_record",
    "load_dataset",
    "split_from_record",
    "stratified_split",
]

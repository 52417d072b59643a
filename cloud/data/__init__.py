"""Data sets for training: the real ones that ship inside packages and the user's own ``.npz``."""

from cloud.data.datasets import BUILTIN_DATASETS, Dataset, Split, load_dataset, stratified_split

__all__ = ["BUILTIN_DATASETS", "Dataset", "Split", "load_dataset", "stratified_split"]

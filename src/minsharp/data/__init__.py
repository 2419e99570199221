"""Data handling: turning user data into input batches, the data sets, and label corruption."""

from minsharp.data.batches import input_batches
from minsharp.data.corruption import CorruptedLabels, corrupt_labels
from minsharp.data.datasets import DATASETS, Splits, default_data_root, load_dataset
from minsharp.data.digits import load_digits
from minsharp.data.download import download_dataset
from minsharp.data.mnist import load_mnist_split

__all__ = [
    "DATASETS",
    "CorruptedLabels",
    "Splits",
    "corrupt_labels",
    "default_data_root",
    "download_dataset",
    "input_batches",
    "load_dataset",
    "load_digits",
    "load_mnist_split",
]

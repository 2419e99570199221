"""Data handling: the data-spec parser, the data sets, input batches, and label corruption."""

from minsharp.data.batches import input_batches
from minsharp.data.corruption import CorruptedLabels, corrupt_labels
from minsharp.data.datasets import DATASETS, Splits, default_data_root, load_dataset
from minsharp.data.digits import load_digits
from minsharp.data.download import download_dataset
from minsharp.data.mnist import load_mnist_split
from minsharp.data.sources import DataSource, LoadedData, load_examples, parse_data_spec

__all__ = [
    "DATASETS",
    "CorruptedLabels",
    "DataSource",
    "LoadedData",
    "Splits",
    "corrupt_labels",
    "default_data_root",
    "download_dataset",
    "input_batches",
    "load_dataset",
    "load_digits",
    "load_examples",
    "load_mnist_split",
    "parse_data_spec",
]

"""Data handling: turning user data into input batches, and the built-in data sets."""

from minsharp.data.batches import input_batches
from minsharp.data.digits import load_digits
from minsharp.data.mnist import load_mnist_split

__all__ = ["input_batches", "load_digits", "load_mnist_split"]

"""scikit-learn's bundled digits: the built-in data set that needs no network."""

from __future__ import annotations

import torch
from torch import Tensor

from minsharp.errors import DataError
from minsharp.options import integer, number


def load_digits(
    test_fraction: float = 0.25, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """8×8 digit images (1797, 10 classes) as flat features in [0, 1], split train/test.

    Returns ``((X_train, y_train), (X_test, y_test))`` with a seeded random split.

    Raises:
        DataError: ``test_fraction`` outside (0, 1), a seed that is not an integer, or a
            ``dtype`` that is not a floating torch dtype.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    number("test_fraction", test_fraction, above=0, below=1, error=DataError)
    integer("seed", seed, error=DataError)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DataError(f"dtype must be a floating dtype such as torch.float32; got {dtype!r}.")
    bunch = sklearn_digits()
    inputs = torch.as_tensor(bunch.data, dtype=dtype) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = round(len(labels) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return (inputs[train], labels[train]), (inputs[test], labels[test])

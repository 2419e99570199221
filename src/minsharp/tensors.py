"""Small tensor utilities shared across minsharp."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def all_finite(tensor: Tensor) -> bool:
    """Whether every entry is finite.

    NaN and ±inf propagate through a sum, so a finite sum proves the claim at the cost of one
    reduction; only a non-finite sum (which may also be an overflow) pays for the exact test.
    """
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def standard_error(samples: Tensor) -> float:
    """Standard error of the mean of ``samples``: their sample standard deviation over √n.

    NaN for fewer than two samples, where the deviation is undefined.

    Example:
        >>> standard_error(torch.tensor([1.0, 3.0]))
        1.0
    """
    count = samples.numel()
    return float(samples.std() / math.sqrt(count)) if count > 1 else math.nan

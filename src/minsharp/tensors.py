"""Small tensor utilities shared across minsharp."""

from __future__ import annotations

import torch
from torch import Tensor


def all_finite(tensor: Tensor) -> bool:
    """Whether every entry is finite.

    NaN and ±inf propagate through a sum, so a finite sum proves the claim at the cost of one
    reduction; only a non-finite sum (which may also be an overflow) pays for the exact test.
    """
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())

"""Small tensor utilities shared across minsharp."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from minsharp.errors import DataError


def check_labels(labels: Any, count: int, what: str) -> Tensor:
    """``labels`` if they are ``count`` class indices ≥ 0 in a 1-D integer tensor.

    Every reader of labelled data checks its labels here. ``what`` starts each message and
    names where the labels come from (``"data: batch 3"``, ``"data file x.pt"``).

    Raises:
        DataError: not an integer tensor (floating, complex and bool are refused), not one
            label per input, or negative labels.
    """
    if (
        not isinstance(labels, Tensor)
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        found = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise DataError(f"{what}: labels must be integer class indices; got {found}.")
    if labels.dim() != 1 or labels.shape[0] != count:
        raise DataError(
            f"{what}: {count} inputs but labels of shape {tuple(labels.shape)}; labels must have "
            f"shape ({count},), one class index per input (a 1-D tensor)."
        )
    if labels.numel() and int(labels.min()) < 0:
        raise DataError(
            f"{what}: negative labels; labels must be class indices 0..K−1 (found negatives)."
        )
    return labels


def all_finite(tensor: Tensor) -> bool:
    """Whether every entry is finite.

    NaN and ±inf propagate through a sum, so a finite sum proves the claim at the cost of one
    reduction; only a non-finite sum (which may also be an overflow) pays for the exact test.
    """
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def finite_flags(tensors: list[Tensor]) -> list[bool]:
    """Per tensor, whether every entry is finite (as :func:`all_finite` says).

    Floating tensors on one device, all finite, cost one host round trip: their sums, cast to
    float32 and stacked, are finite. Anything else (or a float64 sum past float32's range)
    takes the per-tensor test.
    """
    together = (
        tensors
        and len({tensor.device for tensor in tensors}) == 1
        and all(tensor.is_floating_point() for tensor in tensors)
    )
    if together and bool(torch.isfinite(torch.stack([t.sum().float() for t in tensors])).all()):
        return [True] * len(tensors)
    return [all_finite(tensor) for tensor in tensors]


def check_examples(inputs: Any) -> Tensor:
    """``inputs`` if it is a tensor of N ≥ 1 examples without NaN or inf; DataError otherwise."""
    if not isinstance(inputs, Tensor) or inputs.dim() == 0 or inputs.shape[0] == 0:
        found = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise DataError(f"inputs must be a tensor of examples (N, …) with N ≥ 1; got {found}.")
    if inputs.is_floating_point() and not all_finite(inputs):
        raise DataError("inputs contain NaN or infinite values; clean or drop those examples.")
    return inputs


def standard_error(samples: Tensor) -> float:
    """Standard error of the mean of ``samples``: their sample standard deviation over √n.

    NaN for fewer than two samples, where the deviation is undefined.

    Example:
        >>> standard_error(torch.tensor([1.0, 3.0]))
        1.0
    """
    count = samples.numel()
    return float(samples.std() / math.sqrt(count)) if count > 1 else math.nan

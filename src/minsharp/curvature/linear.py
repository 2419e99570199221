"""Rule for ``nn.Linear``: inputs (N, *T, P) become patches with S = T positions."""

from __future__ import annotations

from torch import Tensor, nn


def linear_patches(module: nn.Linear, inputs: Tensor) -> Tensor:
    """Patches ``U`` (N, 1, P, S) of a Linear layer; S is the product of the leading dims."""
    N, P = inputs.shape[0], inputs.shape[-1]
    return inputs.reshape(N, -1, P).transpose(1, 2).unsqueeze(1)


def linear_rows(module: nn.Linear, cotangents: Tensor) -> Tensor:
    """Cotangents (K, N, *T, C) of the output as rows ``δ`` (K, N, 1, C, S)."""
    K, N, C = cotangents.shape[0], cotangents.shape[1], cotangents.shape[-1]
    return cotangents.reshape(K, N, -1, C).transpose(2, 3).unsqueeze(2)


def linear_units(module: nn.Linear, tensor: Tensor) -> Tensor:
    """A weight-shaped tensor ``(out, in)`` as (output units × input units × 1 position)."""
    return tensor.unsqueeze(-1)


def linear_weight(module: nn.Linear, units: Tensor) -> Tensor:
    """The inverse of :func:`linear_units`."""
    return units.squeeze(-1)

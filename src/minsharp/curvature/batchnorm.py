"""Rule for eval-mode ``nn.BatchNorm1d/2d/3d``: the affine weight γ and bias β.

In eval mode ``y[c, s] = γ_c · x̂[c, s] + β_c`` with ``x̂ = (x − running_mean) / √(running_var
+ ε)``: per channel a 1×1 map, i.e. a grouped layer with one group per channel, one input per
unit (P = 1) and the spatial positions as S. The network stays piecewise linear in γ and β.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from minsharp.errors import ModelError

BatchNormNd = nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d


def batchnorm_patches(module: BatchNormNd, inputs: Tensor) -> Tensor:
    """Normalised inputs ``x̂`` as patches ``U`` (N, G = C, 1, S)."""
    if module.running_mean is None or module.running_var is None:
        raise ModelError(
            f"{type(module).__name__} without running statistics (track_running_stats=False) "
            "normalises with each batch's own statistics, so its examples are coupled and the "
            "per-example formula does not hold. Measure a model with running statistics."
        )
    shape = (1, -1) + (1,) * (inputs.dim() - 2)
    mean = module.running_mean.reshape(shape)
    scale = torch.rsqrt(module.running_var.reshape(shape) + module.eps)
    normalised = (inputs - mean) * scale
    N, C = inputs.shape[:2]
    return normalised.reshape(N, C, 1, -1)


def batchnorm_rows(module: BatchNormNd, cotangents: Tensor) -> Tensor:
    """Cotangents (K, N, C, *spatial) of the output as rows ``δ`` (K, N, G = C, 1, S)."""
    K, N, C = cotangents.shape[:3]
    return cotangents.reshape(K, N, C, 1, -1)


def batchnorm_units(module: BatchNormNd, tensor: Tensor) -> Tensor:
    """The affine weight γ ``(C,)`` as (C output units × 1 input unit × 1 position)."""
    return tensor.reshape(-1, 1, 1)


def batchnorm_weight(module: BatchNormNd, units: Tensor) -> Tensor:
    """The inverse of :func:`batchnorm_units`."""
    return units.reshape(-1)

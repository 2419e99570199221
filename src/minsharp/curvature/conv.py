"""Rule for ``nn.Conv1d/2d/3d``: unfolded input patches, any stride, padding, dilation, groups."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ConvNd = nn.Conv1d | nn.Conv2d | nn.Conv3d


def conv_patches(module: ConvNd, inputs: Tensor) -> Tensor:
    """Unfolded patches ``U`` (N, G, C_in/G · kernel volume, S) of a convolution.

    The patch axis is ordered (input channel, kernel offsets...) like the flattened weight
    ``(C_out, C_in/G, *kernel)``, so ``W.view(G, C, P) @ U`` reproduces the convolution.
    """
    dims = len(module.kernel_size)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    # The module's own padding, as F.pad wants it: also resolves padding="same"/"valid".
    padded = F.pad(inputs, module._reversed_padding_repeated_twice, mode=mode)
    windows = padded
    for axis, (size, stride, dilation) in enumerate(
        zip(module.kernel_size, module.stride, module.dilation, strict=True)
    ):
        windows = windows.unfold(2 + axis, dilation * (size - 1) + 1, stride)
    if any(d > 1 for d in module.dilation):
        windows = windows[(..., *(slice(None, None, d) for d in module.dilation))]
    # windows: (N, C_in, *out_spatial, *kernel) -> (N, G, C_in/G, *kernel, *out_spatial)
    N, C_in = windows.shape[:2]
    G = module.groups
    spatial = list(range(2, 2 + dims))
    kernel = list(range(2 + dims, 2 + 2 * dims))
    windows = windows.permute(0, 1, *kernel, *spatial)
    return windows.reshape(N, G, (C_in // G) * _volume(module.kernel_size), -1)


def conv_rows(module: ConvNd, cotangents: Tensor) -> Tensor:
    """Cotangents (K, N, C_out, *out_spatial) as rows ``δ`` (K, N, G, C_out/G, S)."""
    K, N, C_out = cotangents.shape[:3]
    G = module.groups
    return cotangents.reshape(K, N, G, C_out // G, -1)


def _volume(kernel_size: tuple[int, ...]) -> int:
    volume = 1
    for size in kernel_size:
        volume *= size
    return volume


def conv_units(module: ConvNd, tensor: Tensor) -> Tensor:
    """A weight-shaped tensor as (C_out output units × C_in input units × kernel positions).

    The weight ``(C_out, C_in / G, *kernel)`` of a grouped convolution only connects group
    ``g``'s outputs to group ``g``'s inputs: its blocks are placed block-diagonally, zero
    elsewhere, so that column ``j`` is input channel ``j``.
    """
    return grouped_units(tensor, module.groups)


def conv_weight(module: ConvNd, units: Tensor) -> Tensor:
    """The inverse of :func:`conv_units`: the diagonal blocks, shaped like the weight."""
    groups = module.groups
    rows, columns = units.shape[0] // groups, units.shape[1] // groups
    blocks = [
        units[g * rows : (g + 1) * rows, g * columns : (g + 1) * columns] for g in range(groups)
    ]
    return torch.cat(blocks).reshape(module.weight.shape)


def grouped_units(tensor: Tensor, groups: int) -> Tensor:
    """:func:`conv_units` for a tensor ``(C_out, C_in / groups, *kernel)`` and ``groups``."""
    rows, columns = tensor.shape[:2]
    per_position = tensor.reshape(rows, columns, -1)
    if groups == 1:
        return per_position
    return torch.stack(
        [
            torch.block_diag(*per_position[..., k].chunk(groups))
            for k in range(per_position.shape[-1])
        ],
        dim=-1,
    )

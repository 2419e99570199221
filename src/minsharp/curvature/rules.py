"""The registry of layer rules: which module types the exact engine supports, and how.

A rule turns one call of its module into patches ``U`` (N, G, P, S) and turns the
back-propagated output cotangents into rows ``δ`` (K, N, G, C, S); ``minsharp.curvature
.patches`` does the rest for every layer type alike. Modules are matched by exact type,
because a subclass may change what ``forward`` computes.

Adding a layer type: write its two functions, register them in ``RULES`` below, and add it
to the random networks of ``tests/test_curvature_exact.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from minsharp.curvature.batchnorm import batchnorm_patches, batchnorm_rows
from minsharp.curvature.conv import conv_patches, conv_rows
from minsharp.curvature.linear import linear_patches, linear_rows


@dataclass(frozen=True)
class LayerRule:
    """How one module type maps onto the patch form of ``minsharp.curvature.patches``."""

    patches: Callable[[nn.Module, Tensor], Tensor]
    rows: Callable[[nn.Module, Tensor], Tensor]


_LINEAR = LayerRule(patches=linear_patches, rows=linear_rows)
_CONV = LayerRule(patches=conv_patches, rows=conv_rows)
_BATCHNORM = LayerRule(patches=batchnorm_patches, rows=batchnorm_rows)

#: The layers of a network's chain: their weights carry the layer and neuron symmetries.
WEIGHT_LAYERS: dict[type[nn.Module], LayerRule] = {
    nn.Linear: _LINEAR,
    nn.Conv1d: _CONV,
    nn.Conv2d: _CONV,
    nn.Conv3d: _CONV,
}

RULES: dict[type[nn.Module], LayerRule] = {
    **WEIGHT_LAYERS,
    nn.BatchNorm1d: _BATCHNORM,
    nn.BatchNorm2d: _BATCHNORM,
    nn.BatchNorm3d: _BATCHNORM,
}


def supported_types() -> str:
    """Names of the supported module types, for error messages."""
    return ", ".join(f"nn.{cls.__name__}" for cls in RULES)

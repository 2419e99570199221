"""The registry of layer rules: which module types the exact engine supports, and how.

A rule turns one call of its module into patches ``U`` (N, G, P, S) and turns the
back-propagated output cotangents into rows ``δ`` (K, N, G, C, S); ``minsharp.curvature
.patches`` does the rest for every layer type alike. A module gets the rule of its class in
``RULES``, or of the nearest such base class when it computes what that class computes
(:func:`fast_rule`); every other module holding trainable parameters gets the generic rule
(``minsharp.curvature.generic``).

Adding a layer type: write its two functions, register them in ``RULES`` below, and add it
to the random networks of ``tests/test_curvature_exact.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.utils import parametrize

from minsharp.curvature.batchnorm import (
    batchnorm_patches,
    batchnorm_rows,
    batchnorm_units,
    batchnorm_weight,
)
from minsharp.curvature.conv import conv_patches, conv_rows, conv_units, conv_weight
from minsharp.curvature.linear import linear_patches, linear_rows, linear_units, linear_weight
from minsharp.errors import UnsupportedModuleError


@dataclass(frozen=True)
class LayerRule:
    """How one module type maps onto the patch form of ``minsharp.curvature.patches``."""

    patches: Callable[[nn.Module, Tensor], Tensor]
    rows: Callable[[nn.Module, Tensor], Tensor]
    units: Callable[[nn.Module, Tensor], Tensor]
    """A weight-shaped tensor as (output units × input units × positions): the one place
    that knows the module's weight layout."""
    weight: Callable[[nn.Module, Tensor], Tensor]
    """The inverse of ``units``."""


LINEAR = LayerRule(linear_patches, linear_rows, linear_units, linear_weight)
_CONV = LayerRule(conv_patches, conv_rows, conv_units, conv_weight)
_BATCHNORM = LayerRule(batchnorm_patches, batchnorm_rows, batchnorm_units, batchnorm_weight)

#: The layers of a network's chain: their weights carry the layer and neuron symmetries.
WEIGHT_LAYERS: dict[type[nn.Module], LayerRule] = {
    nn.Linear: LINEAR,
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


#: The methods a subclass must inherit unchanged to keep its base class's rule.
_COMPUTING_METHODS = ("forward", "_conv_forward")


def fast_rule(module: nn.Module) -> LayerRule | None:
    """The rule of ``module``'s class in ``RULES``, or of a base class whose computation it keeps.

    A subclass keeps its base class's rule when it inherits ``forward`` (and a convolution's
    ``_conv_forward``) unchanged; one that overrides them, and every module whose weight is
    computed by ``torch.nn.utils.parametrize`` (weight norm, spectral norm), has no fast rule:
    the engine gives it the generic rule.
    """
    if parametrize.is_parametrized(module):
        return None
    cls = type(module)
    for base in cls.__mro__:
        rule = RULES.get(base)
        if rule is not None:
            same = all(
                getattr(cls, name, None) is getattr(base, name, None) for name in _COMPUTING_METHODS
            )
            return rule if same else None
    return None


def supported_types() -> str:
    """Names of the supported module types, for error messages."""
    return ", ".join(f"nn.{cls.__name__}" for cls in RULES)


def weight_units(module: nn.Module, tensor: Tensor) -> Tensor:
    """``tensor``, shaped like ``module.weight``, as (output units × input units × positions).

    A Linear weight ``(out, in)`` has one position; a convolution's ``(C_out, C_in / G,
    *kernel)`` becomes ``(C_out, C_in, kernel volume)`` with its groups block-diagonal; a
    batch-norm γ ``(C,)`` is ``(C, 1, 1)``. Raises :class:`UnsupportedModuleError` for any
    other module type (``nn.ConvTranspose2d`` stores ``(C_in, C_out / G, *kernel)``, so
    reading it as a convolution would be silently wrong).

    Example:
        >>> import torch
        >>> conv = torch.nn.Conv1d(2, 4, 3, groups=2)
        >>> weight_units(conv, conv.weight).shape
        torch.Size([4, 2, 3])
    """
    return _rule_of(module).units(module, tensor)


def units_to_weight(module: nn.Module, units: Tensor) -> Tensor:
    """The inverse of :func:`weight_units`: a tensor shaped like ``module.weight``."""
    return _rule_of(module).weight(module, units)


def _rule_of(module: nn.Module) -> LayerRule:
    rule = fast_rule(module)
    if rule is None:
        raise UnsupportedModuleError(
            f"{type(module).__name__}: minsharp does not know how its weight maps to output "
            f"and input units. Supported modules: {supported_types()} (and subclasses that "
            "keep their forward)."
        )
    return rule

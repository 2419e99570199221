"""The named networks of the command line and :func:`build_model`, which builds one by name.

:data:`ZOO` names each network of :mod:`minsharp.models.networks` and
:mod:`minsharp.models.cifar` with how to build it for a data set's input shape and class count.
"""

from __future__ import annotations

import difflib
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from minsharp.errors import ModelError
from minsharp.models.cifar import resnet20, vgg11
from minsharp.models.networks import lenet, mlp, paper_mlp, small_cnn, small_mlp
from minsharp.options import nn_module


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars.

    Raises:
        ModelError: ``model`` is not a ``torch.nn.Module``.
    """
    nn_module("model", model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class ZooEntry:
    """A network of :data:`ZOO`: how to build it for a data set, and what it accepts."""

    build: Callable[..., nn.Module]
    """``build(input_shape, num_classes, **options)``."""
    images: bool
    """Whether the network takes images ``(C, H, W)``; otherwise inputs are flattened."""
    options: dict[str, Any]
    """The accepted options and their defaults."""
    summary: str


def _hidden_widths(hidden: Any) -> list[int]:
    """``hidden`` as a list of positive widths; a single int is one hidden layer."""
    widths = [hidden] if isinstance(hidden, int) else hidden
    if (
        not isinstance(widths, (list, tuple))
        or not widths
        or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)
    ):
        raise ModelError(
            f"model 'mlp': option hidden must be a positive width or a non-empty list of "
            f"them, e.g. hidden=[64, 32]; got {hidden!r}."
        )
    return list(widths)


#: The named networks of the command line (``minsharp measure --model NAME``).
ZOO: dict[str, ZooEntry] = {
    "small_mlp": ZooEntry(
        build=lambda shape, classes, *, bias: small_mlp(math.prod(shape), classes, bias=bias),
        images=False,
        options={"bias": True},
        summary="SmallMLP, in-20-20-K, ReLU (Minimum Sharpness paper, Fig. 1)",
    ),
    "paper_mlp": ZooEntry(
        build=lambda shape, classes, *, bias: paper_mlp(math.prod(shape), classes, bias=bias),
        images=False,
        options={"bias": True},
        summary="MLP in-512-128-512-K, ReLU (Minimum Sharpness paper, randomized labels)",
    ),
    "mlp": ZooEntry(
        build=lambda shape, classes, *, hidden, bias, batchnorm: mlp(
            math.prod(shape), _hidden_widths(hidden), classes, bias=bias, batchnorm=batchnorm
        ),
        images=False,
        options={"hidden": [64, 32], "bias": True, "batchnorm": False},
        summary="ReLU MLP in-hidden…-K with the given hidden widths (`minsharp demo`: [128, 128]); "
        "batchnorm=True puts a BatchNorm1d before each hidden ReLU",
    ),
    "small_cnn": ZooEntry(
        build=lambda shape, classes, *, bias, batchnorm: small_cnn(
            shape[0], (shape[1], shape[2]), classes, bias=bias, batchnorm=batchnorm
        ),
        images=True,
        options={"bias": True, "batchnorm": False},
        summary="SmallCNN: conv5×5→20, pool 2, conv5×5→20, pool 2, linear (Fig. 1); "
        "batchnorm=True puts a BatchNorm2d after each convolution (BN-sharpness study)",
    ),
    "lenet": ZooEntry(
        build=lambda shape, classes, *, bias: lenet(
            shape[0], (shape[1], shape[2]), classes, bias=bias
        ),
        images=True,
        options={"bias": True},
        summary="LeNet: 3 conv5×5 (6, 16, 120 maps), linear 84, linear K (randomized labels)",
    ),
    "resnet20": ZooEntry(
        build=lambda shape, classes, *, bias, batchnorm: resnet20(
            shape[0], classes, bias=bias, batchnorm=batchnorm
        ),
        images=True,
        options={"bias": True, "batchnorm": True},
        summary="ResNet-20 (He et al. 2016, CIFAR layout): 3 stages × 3 basic blocks, 16/32/64 "
        "channels, projection shortcuts; batchnorm=False drops the BatchNorm2d layers",
    ),
    "vgg11": ZooEntry(
        build=lambda shape, classes, *, bias, batchnorm, width: vgg11(
            shape[0], (shape[1], shape[2]), classes, bias=bias, batchnorm=batchnorm, width=width
        ),
        images=True,
        options={"bias": True, "batchnorm": False, "width": 64},
        summary="VGG-11 (Simonyan & Zisserman 2015, config A, CIFAR form): 8 conv3×3 "
        "64…512, 5 max-pools (skipped on 1-pixel sides), one linear layer; batchnorm=True puts "
        "a BatchNorm2d after each convolution; width scales the channels (first layer's)",
    ),
}


def did_you_mean(name: str) -> str:
    """`` Did you mean a, b?`` naming the zoo models closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, ZOO, n=3)
    return f" Did you mean {', '.join(close)}?" if close else ""


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **options: Any
) -> nn.Module:
    """Build the network ``name`` of :data:`ZOO` for inputs of one example's shape.

    Args:
        name: a key of :data:`ZOO`.
        input_shape: the shape of one example, e.g. ``(64,)`` or ``(1, 28, 28)``. MLPs flatten
            it; convolutional networks need ``(channels, height, width)``.
        num_classes: number of outputs.
        **options: the network's options (``ZOO[name].options``), e.g. ``bias=False`` or, for
            ``mlp``, ``hidden=[64, 32]``.

    Returns:
        The freshly initialised network.

    Raises:
        ModelError: unknown name or option, a bad option value, or inputs of a shape the
            network cannot take. The message lists the accepted names or options.

    Example:
        >>> build_model("mlp", (64,), 10, hidden=[16])
        Sequential(
          (0): Flatten(start_dim=1, end_dim=-1)
          (1): Linear(in_features=64, out_features=16, bias=True)
          (2): ReLU()
          (3): Linear(in_features=16, out_features=10, bias=True)
        )
    """
    if name not in ZOO:
        raise ModelError(
            f"unknown model {name!r}.{did_you_mean(name)} Known models: {', '.join(ZOO)}."
        )
    entry = ZOO[name]
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        accepted = ", ".join(f"{key}={value!r}" for key, value in entry.options.items())
        raise ModelError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; its options are: "
            f"{accepted}."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(
            f"model {name!r}: num_classes must be a positive integer; got {num_classes!r}."
        )
    shape = _shape(name, input_shape)
    if entry.images and len(shape) != 3:
        raise ModelError(
            f"model {name!r} takes images of shape (channels, height, width), but one example "
            f"of the data has shape {shape}. Give the inputs as (N, C, H, W), or use an MLP."
        )
    if not shape or min(shape) < 1:
        raise ModelError(f"model {name!r}: examples of shape {shape} have no features.")
    chosen = {**entry.options, **options}
    for flag in ("bias", "batchnorm"):
        if flag in chosen and not isinstance(chosen[flag], bool):
            raise ModelError(
                f"model {name!r}: option {flag} must be True or False; got {chosen[flag]!r}."
            )
    return entry.build(shape, num_classes, **chosen)


def _shape(name: str, input_shape: Any) -> tuple[int, ...]:
    """``input_shape`` as a tuple of ints; :class:`ModelError` unless it is a sequence of them."""
    try:
        if isinstance(input_shape, str) or any(isinstance(side, bool) for side in input_shape):
            raise TypeError
        return tuple(operator.index(side) for side in input_shape)
    except TypeError:
        raise ModelError(
            f"model {name!r}: input_shape must be the shape of one example as a sequence of "
            f"integers, e.g. (64,) or (1, 28, 28); got {input_shape!r}."
        ) from None

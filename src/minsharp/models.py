"""Networks of the seed papers (MATH §6), for any input shape and class count."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn


def mlp(
    in_features: int, hidden: Sequence[int], num_classes: int, *, bias: bool = True
) -> nn.Sequential:
    """ReLU multilayer perceptron ``in → hidden[0] → … → num_classes`` on flattened inputs."""
    widths = [in_features, *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for width_in, width_out in itertools.pairwise(widths):
        layers += [nn.Linear(width_in, width_out, bias=bias), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], num_classes, bias=bias))
    return nn.Sequential(*layers)


def small_mlp(in_features: int = 784, num_classes: int = 10, *, bias: bool = True) -> nn.Sequential:
    """SmallMLP of the Minimum Sharpness paper: 784-20-20-10, ReLU."""
    return mlp(in_features, [20, 20], num_classes, bias=bias)


def paper_mlp(in_features: int = 784, num_classes: int = 10, *, bias: bool = True) -> nn.Sequential:
    """The randomized-label MLP of the Minimum Sharpness paper: 784-512-128-512-10, ReLU."""
    return mlp(in_features, [512, 128, 512], num_classes, bias=bias)


def small_cnn(
    in_channels: int = 1, image_size: int = 28, num_classes: int = 10, *, bias: bool = True
) -> nn.Sequential:
    """SmallCNN of the Minimum Sharpness paper: conv5×5 →20, pool 2, conv5×5 →20, pool 2, linear.

    With 28×28 inputs the linear layer is 320 → 10.
    """
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"small_cnn needs images of at least 12×12 pixels; got {image_size}.")
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, 5, bias=bias),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 20, 5, bias=bias),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(20 * side * side, num_classes, bias=bias),
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

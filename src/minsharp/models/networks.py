"""The networks of the Minimum Sharpness paper (theory §6), for any input shape and class count.

ReLU MLPs (:func:`mlp`, :func:`small_mlp`, :func:`paper_mlp`) and the small convolutional
networks (:func:`small_cnn`, :func:`lenet`), plus the size and flag checks every builder of
the zoo shares (:func:`layer_size`, :func:`image_sides`, :func:`check_flags`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from torch import nn

from minsharp.errors import ModelError
from minsharp.options import boolean, integer


def mlp(
    in_features: int,
    hidden: Sequence[int],
    num_classes: int,
    *,
    bias: bool = True,
    batchnorm: bool = False,
) -> nn.Sequential:
    """ReLU multilayer perceptron ``in → hidden[0] → … → num_classes`` on flattened inputs.

    With ``batchnorm``, every hidden Linear layer is followed by ``nn.BatchNorm1d`` before its
    ReLU (Linear → BN → ReLU), so each hidden unit's incoming weight row is scale-free
    (theory §5).

    Raises:
        ModelError: a size that is not a positive integer, ``hidden`` not a sequence of them,
            or ``bias``/``batchnorm`` not a bool.

    Example:
        >>> [type(layer).__name__ for layer in mlp(4, [3], 2, batchnorm=True)]
        ['Flatten', 'Linear', 'BatchNorm1d', 'ReLU', 'Linear']
    """
    layer_size("in_features", in_features)
    if isinstance(hidden, str) or not isinstance(hidden, Sequence):
        raise ModelError(
            f"hidden must be a sequence of positive widths, e.g. [64, 32]; got {hidden!r}."
        )
    for width in hidden:
        layer_size("hidden width", width)
    layer_size("num_classes", num_classes)
    check_flags(bias=bias, batchnorm=batchnorm)
    widths = [in_features, *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for width_in, width_out in itertools.pairwise(widths):
        layers.append(nn.Linear(width_in, width_out, bias=bias))
        if batchnorm:
            layers.append(nn.BatchNorm1d(width_out))
        layers.append(nn.ReLU())
    layers.append(nn.Linear(widths[-1], num_classes, bias=bias))
    return nn.Sequential(*layers)


def small_mlp(in_features: int = 784, num_classes: int = 10, *, bias: bool = True) -> nn.Sequential:
    """SmallMLP of the Minimum Sharpness paper: 784-20-20-10, ReLU."""
    return mlp(in_features, [20, 20], num_classes, bias=bias)


def paper_mlp(in_features: int = 784, num_classes: int = 10, *, bias: bool = True) -> nn.Sequential:
    """The randomized-label MLP of the Minimum Sharpness paper: 784-512-128-512-10, ReLU."""
    return mlp(in_features, [512, 128, 512], num_classes, bias=bias)


def small_cnn(
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 28,
    num_classes: int = 10,
    *,
    bias: bool = True,
    batchnorm: bool = False,
) -> nn.Sequential:
    """SmallCNN of the Minimum Sharpness paper: conv5×5 →20, pool 2, conv5×5 →20, pool 2, linear.

    With 28×28 inputs the linear layer is 320 → 10. ``image_size`` is the side of square
    images or ``(height, width)``. With ``batchnorm`` each convolution is followed by
    ``nn.BatchNorm2d`` before its ReLU (conv → BN → ReLU → pool): the network of the
    BN-sharpness study (theory §5), where each output channel's filter is scale-free.

    Raises:
        ModelError: the images are smaller than 16×16 pixels, where nothing is left after the
            second pooling; or a size that is not a positive integer, or a flag not a bool.
    """
    layer_size("in_channels", in_channels)
    height, width = image_sides(image_size)
    layer_size("num_classes", num_classes)
    check_flags(bias=bias, batchnorm=batchnorm)
    sides = [((side - 4) // 2 - 4) // 2 for side in (height, width)]
    if min(sides) < 1:
        raise ModelError(f"small_cnn needs images of at least 16×16 pixels; got {height}×{width}.")
    layers: list[nn.Module] = []
    for channels_in in (in_channels, 20):
        layers.append(nn.Conv2d(channels_in, 20, 5, bias=bias))
        if batchnorm:
            layers.append(nn.BatchNorm2d(20))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    layers += [nn.Flatten(), nn.Linear(20 * sides[0] * sides[1], num_classes, bias=bias)]
    return nn.Sequential(*layers)


def lenet(
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 28,
    num_classes: int = 10,
    *,
    bias: bool = True,
) -> nn.Sequential:
    """LeNet of the Minimum Sharpness paper's randomized-label experiment (theory §6).

    conv5×5 →6 (padding 2), ReLU, max-pool 2 (stride 1), conv5×5 6→16, ReLU, max-pool 2,
    conv5×5 16→120, ReLU, linear →84, ReLU, linear 84→``num_classes``. With 28×28 inputs the
    third convolution leaves 120 maps of 7×7 and the first linear layer is 5880 → 84; for
    other sizes the flattened size is computed. ``image_size`` is the side of square images
    or ``(height, width)``.

    Raises:
        ModelError: the images are smaller than 15×15 pixels, where the third convolution
            has nothing left to cover; or a size that is not a positive integer, or ``bias``
            not a bool.

    Example:
        >>> lenet()[-3]
        Linear(in_features=5880, out_features=84, bias=True)
    """
    layer_size("in_channels", in_channels)
    height, width = image_sides(image_size)
    layer_size("num_classes", num_classes)
    check_flags(bias=bias)
    # pad-2 conv keeps the side; pool 2 stride 1 takes 1; conv 5 takes 4; pool 2 halves; conv 5.
    sides = [(side - 1 - 4 - 2) // 2 + 1 - 4 for side in (height, width)]
    if min(sides) < 1:
        raise ModelError(f"lenet needs images of at least 15×15 pixels; got {height}×{width}.")
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2, bias=bias),
        nn.ReLU(),
        nn.MaxPool2d(2, stride=1),
        nn.Conv2d(6, 16, 5, bias=bias),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 120, 5, bias=bias),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(120 * sides[0] * sides[1], 84, bias=bias),
        nn.ReLU(),
        nn.Linear(84, num_classes, bias=bias),
    )


def image_sides(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of an image size given as one side or a pair, checked positive."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if isinstance(image_size, str) or not isinstance(image_size, Sequence) or len(image_size) != 2:
        raise ModelError(
            f"image_size must be one side or a pair (height, width) of positive integers; got "
            f"{image_size!r}."
        )
    height, width = (layer_size("image_size", side) for side in image_size)
    return height, width


def layer_size(name: str, value: Any) -> int:
    """``value`` if it is a positive integer (a layer size); :class:`ModelError` otherwise."""
    return integer(name, value, minimum=1, error=ModelError)


def check_flags(**flags: Any) -> None:
    """Raise :class:`ModelError` unless every flag is ``True`` or ``False``."""
    for name, value in flags.items():
        boolean(name, value, error=ModelError)

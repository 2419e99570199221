"""Networks of the seed papers (theory §6), for any input shape and class count.

Besides the factory functions, :data:`ZOO` names each network for the command line, and
:func:`build_model` builds one by name for a data set's input shape and class count.
"""

from __future__ import annotations

import difflib
import itertools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from minsharp.errors import ModelError
from minsharp.options import boolean, integer, nn_module

__all__ = [
    "ZOO",
    "ZooEntry",
    "build_model",
    "count_parameters",
    "lenet",
    "mlp",
    "paper_mlp",
    "resnet20",
    "small_cnn",
    "small_mlp",
]


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
    _size("in_features", in_features)
    if isinstance(hidden, str) or not isinstance(hidden, Sequence):
        raise ModelError(
            f"hidden must be a sequence of positive widths, e.g. [64, 32]; got {hidden!r}."
        )
    for width in hidden:
        _size("hidden width", width)
    _size("num_classes", num_classes)
    _flags(bias=bias, batchnorm=batchnorm)
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
    _size("in_channels", in_channels)
    height, width = _sides(image_size)
    _size("num_classes", num_classes)
    _flags(bias=bias, batchnorm=batchnorm)
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
    _size("in_channels", in_channels)
    height, width = _sides(image_size)
    _size("num_classes", num_classes)
    _flags(bias=bias)
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


class BasicBlock(nn.Module):
    """Two 3×3 convolutions and a residual sum: ``relu(f(x) + shortcut(x))`` (He et al. 2016).

    The shortcut is the identity, or a strided 1×1 convolution (with its batch-norm) where
    the block changes width or resolution: the projection shortcut, option B of the paper,
    which keeps every operation a module with its own parameters.
    """

    def __init__(
        self, channels_in: int, channels: int, stride: int, bias: bool, batchnorm: bool
    ) -> None:
        super().__init__()

        def normalised(*layers: nn.Module) -> nn.Sequential:
            extra = [nn.BatchNorm2d(channels)] if batchnorm else []
            return nn.Sequential(*layers, *extra)

        conv_bias = bias and not batchnorm  # a batch-norm's β makes a conv bias redundant
        self.residual = nn.Sequential(
            normalised(nn.Conv2d(channels_in, channels, 3, stride, 1, bias=conv_bias)),
            nn.ReLU(),
            normalised(nn.Conv2d(channels, channels, 3, 1, 1, bias=conv_bias)),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels:
            self.shortcut = normalised(nn.Conv2d(channels_in, channels, 1, stride, bias=conv_bias))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """``relu(residual(x) + shortcut(x))``."""
        return self.relu(self.residual(x) + self.shortcut(x))


def resnet20(
    in_channels: int = 3,
    num_classes: int = 10,
    *,
    bias: bool = True,
    batchnorm: bool = True,
) -> nn.Sequential:
    """ResNet-20 of He et al. 2016 ("Deep residual learning", §4.2, the CIFAR network).

    conv3×3 →16, then 3 stages of 3 :class:`BasicBlock` with 16, 32 and 64 channels (the
    first block of stages 2 and 3 halves the resolution), global average pooling and a
    linear layer 64 → ``num_classes``: 19 convolutions and the linear layer, for images of
    any size with ``in_channels`` channels. With ``batchnorm`` (the paper's network) each
    convolution is followed by ``nn.BatchNorm2d`` and has no bias; ``bias`` gives the
    convolutions (without batch-norm) and the linear layer their biases.

    Raises:
        ModelError: a size that is not a positive integer, or a flag not a bool.

    Example:
        >>> import torch
        >>> resnet20(3, 10)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    _size("in_channels", in_channels)
    _size("num_classes", num_classes)
    _flags(bias=bias, batchnorm=batchnorm)
    stem: list[nn.Module] = [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=bias and not batchnorm)]
    if batchnorm:
        stem.append(nn.BatchNorm2d(16))
    blocks: list[nn.Module] = []
    channels_in = 16
    for stage, channels in enumerate((16, 32, 64)):
        for index in range(3):
            stride = 2 if stage > 0 and index == 0 else 1
            blocks.append(BasicBlock(channels_in, channels, stride, bias, batchnorm))
            channels_in = channels
    return nn.Sequential(
        *stem,
        nn.ReLU(),
        *blocks,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes, bias=bias),
    )


def _sides(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of an image size given as one side or a pair, checked positive."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if isinstance(image_size, str) or not isinstance(image_size, Sequence) or len(image_size) != 2:
        raise ModelError(
            f"image_size must be one side or a pair (height, width) of positive integers; got "
            f"{image_size!r}."
        )
    height, width = (_size("image_size", side) for side in image_size)
    return height, width


def _size(name: str, value: Any) -> int:
    """``value`` if it is a positive integer (a layer size); :class:`ModelError` otherwise."""
    return integer(name, value, minimum=1, error=ModelError)


def _flags(**flags: Any) -> None:
    """Raise :class:`ModelError` unless every flag is ``True`` or ``False``."""
    for name, value in flags.items():
        boolean(name, value, error=ModelError)


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

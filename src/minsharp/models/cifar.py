"""The CIFAR-10 networks of the sharpness literature: ResNet-20 and VGG-11, any image size.

Both take ``(N, C, H, W)`` images of any channel count and size and end in ``num_classes``
logits; both come with and without batch-norm.
"""

from __future__ import annotations

from torch import Tensor, nn

from minsharp.models.networks import check_flags, image_sides, layer_size


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
    layer_size("in_channels", in_channels)
    layer_size("num_classes", num_classes)
    check_flags(bias=bias, batchnorm=batchnorm)
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


#: Configuration A of Simonyan & Zisserman 2015 (Table 1): the output channels of each 3×3
#: convolution, ``"M"`` a 2×2 max-pooling of stride 2.
VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg11(
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 32,
    num_classes: int = 10,
    *,
    bias: bool = True,
    batchnorm: bool = False,
    width: int = 64,
) -> nn.Sequential:
    """VGG-11 (Simonyan & Zisserman 2015, configuration A) in the CIFAR form.

    The eight 3×3 convolutions (padding 1) of :data:`VGG11_LAYOUT`, each followed by a ReLU,
    with the five 2×2 max-poolings between them, then one linear layer from the flattened
    maps to ``num_classes``: with 32×32 images the maps end at 512 × 1 × 1 and the classifier
    is 512 → ``num_classes``, as in the CIFAR-10 versions of the network (the ImageNet
    network's three 4096-wide layers sized for 224×224 inputs are dropped). For other sizes
    the classifier takes ``512 × h × w`` for the ``h × w`` maps left. A pooling halves (rounding
    down) each side of at least 2 pixels and leaves a side of 1 pixel alone, so that images
    smaller than 32×32 lose their last poolings instead of vanishing: 28×28 MNIST images go
    28 → 14 → 7 → 3 → 1 and skip the fifth. With ``batchnorm`` (the common CIFAR variant;
    the paper's network has none) each convolution is followed by ``nn.BatchNorm2d`` before
    its ReLU and has no bias; ``bias`` gives the convolutions (without batch-norm) and the
    linear layer their biases. ``width`` is the first convolution's channels, 64 in the
    paper; every layer's channels scale with it (``width=16``: 16, 32, 64, 64, 128…), for the
    width sweeps of the sharpness literature and for quick checks.

    Raises:
        ModelError: a size that is not a positive integer, or a flag not a bool.

    Example:
        >>> import torch
        >>> [m.out_channels for m in vgg11(width=8) if isinstance(m, torch.nn.Conv2d)]
        [8, 16, 32, 32, 64, 64, 64, 64]
        >>> net = vgg11(3, 32, 10)
        >>> net(torch.zeros(2, 3, 32, 32)).shape, net[-1]
        (torch.Size([2, 10]), Linear(in_features=512, out_features=10, bias=True))
    """
    channels_in = layer_size("in_channels", in_channels)
    rows, columns = image_sides(image_size)
    layer_size("num_classes", num_classes)
    check_flags(bias=bias, batchnorm=batchnorm)
    layer_size("width", width)
    layers: list[nn.Module] = []
    for step in VGG11_LAYOUT:
        if isinstance(step, str):  # "M"
            kernel = (min(rows, 2), min(columns, 2))
            if kernel != (1, 1):
                layers.append(nn.MaxPool2d(kernel, stride=kernel))
            rows, columns = rows // kernel[0], columns // kernel[1]
            continue
        channels = step * width // 64
        layers.append(nn.Conv2d(channels_in, channels, 3, padding=1, bias=bias and not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(channels))
        layers.append(nn.ReLU())
        channels_in = channels
    layers += [nn.Flatten(), nn.Linear(channels_in * rows * columns, num_classes, bias=bias)]
    return nn.Sequential(*layers)

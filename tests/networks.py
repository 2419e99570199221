"""Seeded random networks for the curvature tests: test cases as data.

Every builder takes an integer seed and returns a :class:`Case` ``(model, inputs, labels)``:

* ``model`` — a float64 ``nn.Module`` in eval mode with at most ``MAX_PARAMETERS`` trainable
  entries, so that the brute-force references stay fast;
* ``inputs`` — float64 tensor with N ≤ 7 examples on the leading axis;
* ``labels`` — int64 tensor (N,) with values in [0, K), K ∈ {2, 3, 4}.

The same seed always gives the same case (the global torch RNG is forked, not consumed).
``PIECEWISE_LINEAR`` holds the builders of networks piecewise linear in every trainable
parameter (Linear/Conv weights and biases, ReLU-like activations, pooling, residual sums,
concatenation, eval-mode batch-norm (its affine parameters measured too), eval-mode dropout), on
which the Hessian diagonal equals the Gauss–Newton diagonal. ``SMOOTH`` holds networks with
smooth nonlinearities (tanh, GELU, sigmoid, softplus, LayerNorm), where only the GGN is exact.

Use with hypothesis as ``@given(build=st.sampled_from(PIECEWISE_LINEAR), seed=SEEDS)``, so a
failing example prints the builder's name and the seed, and reproduces with ``build(seed)``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from hypothesis import strategies as st
from torch import Tensor, nn

#: Largest number of trainable parameter entries of a generated network.
MAX_PARAMETERS = 300
#: Largest number of examples of a generated case.
MAX_EXAMPLES = 7
#: Seeds for hypothesis.
SEEDS = st.integers(min_value=0, max_value=2**31 - 1)


class Case(NamedTuple):
    """One test case: a float64 eval-mode model, its inputs and labels."""

    model: nn.Module
    inputs: Tensor
    labels: Tensor


Builder = Callable[[int], Case]


class InvalidDraw(Exception):
    """A drawn architecture does not fit (bad shapes or too many parameters): draw again."""


@contextmanager
def _seeded(seed: int) -> Iterator[random.Random]:
    """A Python RNG for the architecture; torch's global RNG seeded for the weights, restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield random.Random(seed)


def _draw(seed: int, attempt: Callable[[random.Random], tuple[nn.Module, Tensor, int]]) -> Case:
    """Call ``attempt(rng)`` until it gives a network that fits, then finish the case.

    ``attempt`` returns ``(model, inputs, K)``; it raises :class:`InvalidDraw` (or any error
    from torch about shapes) for an architecture to reject.
    """
    with _seeded(seed) as rng:
        for _ in range(200):
            try:
                model, inputs, K = attempt(rng)
                model = model.double().eval()
                _freeze_layer_norm(model)
                _randomise_running_statistics(model, rng)
                with torch.no_grad():
                    logits = model(inputs)
            except (InvalidDraw, RuntimeError, ValueError):
                continue
            if logits.shape != (inputs.shape[0], K):
                continue
            if not 0 < count_trainable(model) <= MAX_PARAMETERS:
                continue
            labels = torch.randint(0, K, (inputs.shape[0],))
            return Case(model, inputs, labels)
    raise AssertionError(f"no valid network drawn for seed {seed}")


def count_trainable(model: nn.Module) -> int:
    """Number of trainable parameter entries of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _freeze_layer_norm(model: nn.Module) -> None:
    """Freeze LayerNorm affine parameters: the seeded tables exercise the fast rules only.

    LayerNorm's own parameters are measured by the generic rule
    (``tests/test_generic_rule.py``)."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.requires_grad_(False)


def _randomise_running_statistics(model: nn.Module, rng: random.Random) -> None:
    """Make eval-mode batch-norm a non-trivial affine map (and its affine part non-trivial)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                if module.affine:
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0.0, 0.3)


def _inputs(rng: random.Random, *shape: int) -> Tensor:
    N = rng.randint(1, MAX_EXAMPLES)
    return torch.randn(N, *shape, dtype=torch.float64) * rng.choice([0.5, 1.0, 2.0])


def _activation(rng: random.Random) -> nn.Module:
    return rng.choice(
        [
            lambda: nn.ReLU(),
            lambda: nn.ReLU(inplace=True),
            lambda: nn.LeakyReLU(rng.choice([0.01, 0.1, 0.3])),
            lambda: nn.LeakyReLU(0.2, inplace=True),
            lambda: nn.Hardtanh(),
            lambda: nn.Hardtanh(-0.5, 0.8),
        ]
    )()


def _between(rng: random.Random, features: int, dims: int) -> list[nn.Module]:
    """Optional eval-mode batch-norm and dropout to put after a layer with ``features``."""
    extra: list[nn.Module] = []
    if rng.random() < 0.3:
        norm = [nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d][dims]
        extra.append(norm(features, affine=rng.random() < 0.7))
    if rng.random() < 0.2:
        dropout = [nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d][dims]
        extra.append(dropout(0.5))
    return extra


def _freeze_something(rng: random.Random, model: nn.Module) -> None:
    """Sometimes freeze one weight or bias (never all of them): it must then be skipped."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if len(parameters) > 1 and rng.random() < 0.2:
        rng.choice(parameters).requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Multilayer perceptrons
# ---------------------------------------------------------------------------------------------


def mlp(seed: int) -> Case:
    """ReLU-like MLP of random depth (1–4 layers) and width, biases on or off per layer."""

    def attempt(rng: random.Random) -> tuple[nn.Module, Tensor, int]:
        K = rng.choice([2, 3, 4])
        depth = rng.randint(1, 4)
        widths = [rng.randint(2, 6)] + [rng.randint(2, 8) for _ in range(depth - 1)] + [K]
        layers: list[nn.Module] = []
        shape: tuple[int, ...] = (widths[0],)
        if rng.random() < 0.2:  # start from a (2, F/2)-shaped example, flattened
            shape = (2, rng.randint(1, 3))
            widths[0] = shape[0] * shape[1]
            layers.append(nn.Flatten())
        for i, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(width_in, width_out, bias=rng.random() < 0.7))
            if i < depth - 1:
                layers += _between(rng, width_out, 0)
                layers.append(_activation(rng))
        model = nn.Sequential(*layers)
        _freeze_something(rng, model)
        return model, _inputs(rng, *shape), K

    return _draw(seed, attempt)


# ---------------------------------------------------------------------------------------------
# Linear layers on sequences (N, T, F): several positions share the weights
# ---------------------------------------------------------------------------------------------


class SequenceNet(nn.Module):
    """Linear layers applied per position of (N, *T, F) inputs, then a reduction over T."""

    def __init__(self, layers: nn.Sequential, reduce: str, head: nn.Module) -> None:
        super().__init__()
        self.layers = layers
        self.reduce = reduce
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        h = self.layers(x)
        if self.reduce == "mean":
            h = h.mean(dim=tuple(range(1, h.dim() - 1)))
        elif self.reduce == "max":
            h = h.flatten(1, -2).amax(1)
        elif self.reduce == "last":
            h = h.flatten(1, -2)[:, -1]
        else:
            h = h.flatten(1)
        return self.head(h)


def sequence_linear(seed: int) -> Case:
    """Linear on 3-D (N, T, F) or 4-D (N, A, T, F) inputs, then mean/max/last/flatten, head."""

    def attempt(rng: random.Random) -> tuple[nn.Module, Tensor, int]:
        K = rng.choice([2, 3, 4])
        T = (rng.randint(1, 4),) if rng.random() < 0.75 else (2, rng.randint(1, 3))
        features = rng.randint(1, 5)
        hidden = rng.randint(2, 6)
        layers: list[nn.Module] = [nn.Linear(features, hidden, bias=rng.random() < 0.7)]
        layers.append(_activation(rng))
        if rng.random() < 0.5:
            layers += [nn.Linear(hidden, hidden, bias=rng.random() < 0.5), _activation(rng)]
        reduce = rng.choice(["mean", "max", "last", "flatten"])
        positions = 1
        for t in T:
            positions *= t
        head_in = hidden * positions if reduce == "flatten" else hidden
        head = nn.Linear(head_in, K, bias=rng.random() < 0.7)
        model = SequenceNet(nn.Sequential(*layers), reduce, head)
        return model, _inputs(rng, *T, features), K

    return _draw(seed, attempt)


# ---------------------------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------------------------

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_ADAPTIVE_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def _sizes(rng: random.Random, dims: int, low: int, high: int) -> tuple[int, ...]:
    return tuple(rng.randint(low, high) for _ in range(dims))


def _random_conv(rng: random.Random, dims: int, c_in: int, max_kernel: int) -> nn.Module:
    """A convolution with random channels, kernel, stride, padding, dilation, groups, mode."""
    groups = rng.choice([g for g in (1, 2, 3) if c_in % g == 0])
    c_out = groups * rng.randint(1, 3)
    kernel = _sizes(rng, dims, 1, max_kernel)
    dilation = _sizes(rng, dims, 1, 2) if rng.random() < 0.3 else 1
    choice = rng.random()
    if choice < 0.25:
        stride: int | tuple[int, ...] = 1
        padding: str | int | tuple[int, ...] = "same"
    elif choice < 0.35:
        stride = _sizes(rng, dims, 1, 2)
        padding = "valid"
    else:
        stride = _sizes(rng, dims, 1, 2)
        padding = _sizes(rng, dims, 0, 2)
    return _CONV[dims](
        c_in,
        c_out,
        kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=rng.random() < 0.7,
        padding_mode=rng.choice(["zeros", "zeros", "reflect", "circular", "replicate"]),
    )


def _pool(rng: random.Random, dims: int) -> list[nn.Module]:
    choice = rng.random()
    if choice < 0.3:
        return [_MAX_POOL[dims](2, stride=rng.choice([1, 2]), ceil_mode=rng.random() < 0.3)]
    if choice < 0.5:
        return [_AVG_POOL[dims](2, stride=rng.choice([1, 2]))]
    if choice < 0.6:
        return [_AVG_POOL[dims](3, stride=2, padding=1, count_include_pad=False)]
    if choice < 0.7:
        return [_ADAPTIVE_POOL[dims](rng.randint(1, 2))]
    return []


def _conv_net(seed: int, dims: int) -> Case:
    max_kernel = {1: 3, 2: 3, 3: 2}[dims]
    max_side = {1: 9, 2: 6, 3: 3}[dims]

    def attempt(rng: random.Random) -> tuple[nn.Module, Tensor, int]:
        K = rng.choice([2, 3, 4])
        channels = rng.randint(1, 3)
        shape = (channels, *_sizes(rng, dims, 2, max_side))
        layers: list[nn.Module] = []
        for _ in range(rng.randint(1, 2 if dims < 3 else 1)):
            conv = _random_conv(rng, dims, channels, max_kernel)
            channels = conv.out_channels
            layers += [conv, *_between(rng, channels, dims), _activation(rng), *_pool(rng, dims)]
        layers.append(nn.Flatten())
        body = nn.Sequential(*layers).double()
        with torch.no_grad():
            features = body(torch.zeros(1, *shape, dtype=torch.float64)).shape[1]
        if features > 40:
            raise InvalidDraw
        model = nn.Sequential(*layers, nn.Linear(features, K, bias=rng.random() < 0.7))
        _freeze_something(rng, model)
        return model, _inputs(rng, *shape), K

    return _draw(seed, attempt)


def conv1d(seed: int) -> Case:
    """Conv1d stack: random stride/padding ('same', 'valid')/dilation/groups/padding mode."""
    return _conv_net(seed, 1)


def conv2d(seed: int) -> Case:
    """Conv2d stack with rectangular kernels, pooling (max, avg, adaptive) and flatten."""
    return _conv_net(seed, 2)


def conv3d(seed: int) -> Case:
    """One tiny Conv3d layer on 3-D volumes, then flatten and a linear head."""
    return _conv_net(seed, 3)


# ---------------------------------------------------------------------------------------------
# Residual networks and concatenated branches (custom forward code, not nn.Sequential)
# ---------------------------------------------------------------------------------------------


class ResidualMLP(nn.Module):
    """``h = stem(x); h = h + f(h)`` per block, with ``f = fc2 ∘ act ∘ fc1``; then a head."""

    def __init__(self, features: int, width: int, hidden: list[int], K: int, rng: random.Random):
        super().__init__()
        self.stem = nn.Linear(features, width, bias=rng.random() < 0.7)
        self.fc1 = nn.ModuleList(nn.Linear(width, h, bias=rng.random() < 0.7) for h in hidden)
        self.fc2 = nn.ModuleList(nn.Linear(h, width, bias=rng.random() < 0.7) for h in hidden)
        self.act = nn.ModuleList(_activation(rng) for _ in hidden)
        self.head = nn.Linear(width, K, bias=rng.random() < 0.7)
        self.final = _activation(rng)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for fc1, act, fc2 in zip(self.fc1, self.act, self.fc2, strict=True):
            h = h + fc2(act(fc1(h)))
        return self.head(self.final(h))


class ResidualConv(nn.Module):
    """Conv residual block with a 1×1 projection skip: ``proj(x) + conv2(act(conv1(x)))``."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, K: int, side: int, rng: random.Random):
        super().__init__()
        mode = rng.choice(["zeros", "reflect", "circular", "replicate"])
        self.conv1 = nn.Conv2d(c_in, c_mid, 3, padding="same", padding_mode=mode)
        self.conv2 = nn.Conv2d(c_mid, c_out, rng.choice([2, 3]), padding="same", bias=False)
        self.proj = nn.Conv2d(c_in, c_out, 1, bias=rng.random() < 0.5)
        self.act = _activation(rng)
        self.pool = nn.MaxPool2d(2) if rng.random() < 0.5 else nn.AvgPool2d(2)
        pooled = side // 2
        self.head = nn.Linear(c_out * pooled * pooled, K)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x) + self.conv2(self.act(self.conv1(x)))
        h = torch.relu(h)
        return self.head(self.pool(h).flatten(1))


def residual(seed: int) -> Case:
    """Residual networks ``x + f(x)`` written as forward code: MLP blocks or a conv block."""

    def attempt(rng: random.Random) -> tuple[nn.Module, Tensor, int]:
        K = rng.choice([2, 3, 4])
        if rng.random() < 0.6:
            features, width = rng.randint(2, 5), rng.randint(2, 6)
            hidden = [rng.randint(2, 6) for _ in range(rng.randint(1, 2))]
            return ResidualMLP(features, width, hidden, K, rng), _inputs(rng, features), K
        c_in, side = rng.randint(1, 2), rng.randint(2, 4)
        model = ResidualConv(c_in, rng.randint(1, 3), rng.randint(1, 2), K, side, rng)
        return model, _inputs(rng, c_in, side, side), K

    return _draw(seed, attempt)


class TwoBranch(nn.Module):
    """``head(act(cat(a(x), b(x))))``: two branches concatenated along the feature axis."""

    def __init__(self, a: nn.Module, b: nn.Module, head: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.a, self.b, self.head, self.act = a, b, head, act

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(torch.cat([self.a(x), self.b(x)], dim=1)))


def two_branch(seed: int) -> Case:
    """Concatenation of two branches (linear/linear, or conv/linear on images) with torch.cat."""

    def attempt(rng: random.Random) -> tuple[nn.Module, Tensor, int]:
        K = rng.choice([2, 3, 4])
        if rng.random() < 0.5:
            features = rng.randint(2, 5)
            widths = rng.randint(1, 5), rng.randint(1, 5)
            a = nn.Sequential(nn.Linear(features, widths[0]), _activation(rng))
            b = nn.Sequential(
                nn.Linear(features, 3, bias=False), _activation(rng), nn.Linear(3, widths[1])
            )
            shape: tuple[int, ...] = (features,)
        else:
            channels, side = rng.randint(1, 2), rng.randint(2, 4)
            conv = nn.Conv2d(channels, 2, 2, padding=rng.choice([0, 1]))
            out_side = side - 1 + 2 * conv.padding[0]
            a = nn.Sequential(conv, _activation(rng), nn.Flatten())
            b = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, 3))
            widths = (2 * out_side * out_side, 3)
            shape = (channels, side, side)
        head = nn.Linear(sum(widths), K, bias=rng.random() < 0.7)
        return TwoBranch(a, b, head, _activation(rng)), _inputs(rng, *shape), K

    return _draw(seed, attempt)


#: Builders of networks piecewise linear in every trainable parameter.
PIECEWISE_LINEAR: list[Builder] = [
    mlp,
    sequence_linear,
    conv1d,
    conv2d,
    conv3d,
    residual,
    two_branch,
]


# ---------------------------------------------------------------------------------------------
# Smooth networks: the Hessian is not the GGN, but the GGN is still exact
# ---------------------------------------------------------------------------------------------

_SMOOTH = [nn.Tanh, nn.GELU, nn.Sigmoid, nn.Softplus, nn.SiLU]


def smooth_mlp(seed: int) -> Case:
    """MLP with tanh/GELU/sigmoid/softplus/SiLU activations and LayerNorm without affine."""

    def attempt(rng: random.Random) -> tuple[nn.Module, Tensor, int]:
        K = rng.choice([2, 3, 4])
        depth = rng.randint(2, 3)
        widths = [rng.randint(2, 5)] + [rng.randint(2, 7) for _ in range(depth - 1)] + [K]
        layers: list[nn.Module] = []
        for i, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(width_in, width_out, bias=rng.random() < 0.7))
            if i < depth - 1:
                if rng.random() < 0.4:
                    layers.append(nn.LayerNorm(width_out, elementwise_affine=False))
                layers.append(rng.choice(_SMOOTH)())
        return nn.Sequential(*layers), _inputs(rng, widths[0]), K

    return _draw(seed, attempt)


def smooth_conv(seed: int) -> Case:
    """Conv1d with a smooth activation, LayerNorm (no affine) over features, linear head."""

    def attempt(rng: random.Random) -> tuple[nn.Module, Tensor, int]:
        K = rng.choice([2, 3, 4])
        channels, length = rng.randint(1, 2), rng.randint(3, 6)
        conv = nn.Conv1d(channels, 2, rng.randint(1, 3), padding=rng.choice([0, 1]))
        out_length = length - conv.kernel_size[0] + 1 + 2 * conv.padding[0]
        layers = [conv, rng.choice(_SMOOTH)(), nn.Flatten()]
        if rng.random() < 0.5:
            layers.append(nn.LayerNorm(2 * out_length, elementwise_affine=False))
        layers.append(nn.Linear(2 * out_length, K))
        return nn.Sequential(*layers), _inputs(rng, channels, length), K

    return _draw(seed, attempt)


#: Builders of networks that are not piecewise linear in some parameters.
SMOOTH: list[Builder] = [smooth_mlp, smooth_conv]


# ---------------------------------------------------------------------------------------------
# Networks of modules without a fast rule (the generic rule): attention, LayerNorm, Embedding
# ---------------------------------------------------------------------------------------------


class TransformerClassifier(nn.Module):
    """One ``nn.TransformerEncoderLayer`` (d_model 8, 2 heads, feed-forward 16), mean-pooled
    over the sequence, then a Linear head: the attention classifier of issue 15."""

    def __init__(self, classes: int = 3, *, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.encoder = nn.TransformerEncoderLayer(
            8, 2, dim_feedforward=16, dropout=0.0, batch_first=batch_first
        )
        self.head = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)  # the encoder then sees (S, N, E)
        features = self.encoder(x)
        return self.head(features.mean(1 if self.batch_first else 0))


def transformer_classifier(
    seed: int, *, examples: int = 5, length: int = 4, batch_first: bool = True
) -> Case:
    """A float64 :class:`TransformerClassifier` in eval mode on (N, length, 8) inputs, K = 3."""
    with _seeded(seed):
        model = TransformerClassifier(3, batch_first=batch_first).double().eval()
        inputs = torch.randn(examples, length, 8, dtype=torch.float64)
        labels = torch.randint(0, 3, (examples,))
    return Case(model, inputs, labels)


class EmbeddingClassifier(nn.Module):
    """Embedding of token ids (N, T), optionally LayerNorm, ReLU, flattened into a Linear head."""

    def __init__(self, vocabulary: int = 7, width: int = 3, length: int = 4, *, norm: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.head = nn.Linear(width * length, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(torch.relu(self.norm(self.embedding(tokens))).flatten(1))


def embedding_classifier(seed: int, *, norm: bool = True, examples: int = 6) -> Case:
    """A float64 :class:`EmbeddingClassifier` on random token ids (N, 4), K = 3.

    Without the LayerNorm it is piecewise linear in every parameter; with it, in LayerNorm's
    γ, β and the head only.
    """
    with _seeded(seed):
        model = EmbeddingClassifier(norm=norm).double().eval()
        inputs = torch.randint(0, 7, (examples, 4))
        labels = torch.randint(0, 3, (examples,))
    return Case(model, inputs, labels)

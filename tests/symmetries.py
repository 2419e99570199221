"""Function-preserving reparametrisations of small Sequential networks, for invariance tests.

The three symmetries of ``minsharp.measures.SYMMETRIES``, applied to copies of float64
``nn.Sequential`` networks of Linear/Conv layers, batch-norm, ReLU and pooling:

* :func:`rescale_layers` — ``W_l → α_l W_l``, ``b_l → c_l b_l`` with ``c_l`` the activation's
  accumulated scale; the layer feeding a batch-norm brings the scale back to 1 (its fixed
  running statistics pin it) and the batch-norm's γ, β start a new one; the last layer's α
  brings the scale back to 1 (a group element of theory §7 for any batch-norm ε);
* :func:`rescale_neurons` — at every junction of two layers with only ReLU/pooling (and a
  flatten) between them, unit ``i`` scaled by ``s_i`` on its way in and ``1/s_i`` out;
* :func:`rescale_batchnorm_inputs` — row ``k`` of each weight feeding a batch-norm (and its
  bias entry) times ``c_k``, the running mean times ``c_k`` and the variance times ``c_k²``.

Every transform returns a copy and checks that it computes the same logits.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from minsharp.errors import DataError

PARAMETRISED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
BATCHNORM = nn.modules.batchnorm._BatchNorm
#: Standard deviation of the log of the random scale factors.
LOG_SPREAD = 0.5
#: Batch-norm ε of the test networks: small enough that ``var → c² var`` is exact in float64.
BATCHNORM_EPS = 1e-14


def _factors(shape: int | tuple[int, ...], generator: torch.Generator) -> Tensor:
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * LOG_SPREAD).exp()


def _scale_rows(layer: nn.Module, factors: Tensor) -> None:
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.mul_(factors.reshape(shape))
    if layer.bias is not None:
        layer.bias.mul_(factors)


def _scale_batchnorm_statistics(norm: nn.Module, factors: Tensor) -> None:
    norm.running_mean.mul_(factors)
    norm.running_var.mul_(factors.square())


def rescale_layers(model: nn.Sequential, seed: int) -> nn.Sequential:
    """The layer (α-scale) symmetry, generalised through batch-norm; see the module doc."""
    generator = torch.Generator().manual_seed(seed)
    twin = copy.deepcopy(model)
    modules = list(twin)
    layers = [m for m in modules if isinstance(m, PARAMETRISED)]
    scale = 1.0
    with torch.no_grad():
        for module, following in itertools.zip_longest(modules, modules[1:]):
            if isinstance(module, PARAMETRISED):
                # The logits, and a layer feeding a batch-norm (fixed statistics), end at 1.
                pinned = module is layers[-1] or isinstance(following, BATCHNORM)
                alpha = 1 / scale if pinned else float(_factors(1, generator))
                module.weight.mul_(alpha)
                scale *= alpha
                if module.bias is not None:
                    module.bias.mul_(scale)
            elif isinstance(module, BATCHNORM):
                scale = float(_factors(1, generator))
                module.weight.mul_(scale)
                module.bias.mul_(scale)
    return _checked(model, twin)


def neuron_junctions(model: nn.Sequential) -> list[tuple[nn.Module, nn.Module]]:
    """Pairs of consecutive layers joined only by ReLU/pooling (and a flatten after a conv)."""
    junctions, previous, clean = [], None, False
    for module in model:
        if isinstance(module, PARAMETRISED):
            same_kind = type(previous) is type(module)
            flattened = isinstance(previous, nn.Conv2d) and isinstance(module, nn.Linear)
            if clean and (same_kind or flattened):
                junctions.append((previous, module))
            previous, clean = module, True
        elif not isinstance(module, (*HOMOGENEOUS, nn.Flatten)):
            clean = False
    return junctions


def batchnorm_inputs(model: nn.Sequential) -> list[tuple[nn.Module, nn.Module]]:
    """Pairs of a layer and the batch-norm right after it."""
    return [
        (layer, norm)
        for layer, norm in itertools.pairwise(model)
        if isinstance(layer, PARAMETRISED) and isinstance(norm, BATCHNORM)
    ]


def _divide_columns(outgoing: nn.Module, factors: Tensor) -> None:
    # Conv → flatten → Linear: each channel is a block of consecutive input columns.
    columns = outgoing.weight.view(outgoing.weight.shape[0], factors.numel(), -1)
    columns.div_(factors.reshape(1, -1, 1))


def rescale_neurons(model: nn.Sequential, seed: int) -> nn.Sequential:
    """Per-unit rescaling at every neuron junction of ``model`` (see :func:`neuron_junctions`)."""
    return _rescale_units(
        model,
        seed,
        neuron_junctions,
        _divide_columns,
        "junction of two layers joined by ReLU/pooling",
    )


def rescale_batchnorm_inputs(model: nn.Sequential, seed: int) -> nn.Sequential:
    """Per-unit rescaling of every weight feeding a batch-norm, with its running statistics."""
    return _rescale_units(
        model, seed, batchnorm_inputs, _scale_batchnorm_statistics, "layer feeding a batch-norm"
    )


def _rescale_units(
    model: nn.Sequential,
    seed: int,
    pairs_of: Callable[[nn.Sequential], list[tuple[nn.Module, nn.Module]]],
    compensate: Callable[[nn.Module, Tensor], None],
    what: str,
) -> nn.Sequential:
    """A copy with the output units of each pair's first module scaled by random factors.

    ``pairs_of`` finds ``(layer, partner)`` pairs in the copy; the rows of ``layer`` (and its
    bias) are multiplied by the factors and ``compensate(partner, factors)`` undoes it.
    """
    generator = torch.Generator().manual_seed(seed)
    twin = copy.deepcopy(model)
    pairs = pairs_of(twin)
    if not pairs:
        raise ValueError(f"model has no {what}.")
    with torch.no_grad():
        for layer, partner in pairs:
            factors = _factors(layer.weight.shape[0], generator)
            _scale_rows(layer, factors)
            compensate(partner, factors)
    return _checked(model, twin)


TRANSFORMS: dict[str, Callable[[nn.Sequential, int], nn.Sequential]] = {
    "layer": rescale_layers,
    "neuron": rescale_neurons,
    "batchnorm": rescale_batchnorm_inputs,
}

#: Input shapes of the networks built by :func:`network`, by name.
_INPUTS = {"mlp": (5,), "cnn": (2, 6, 6)}


def network(kind: str, *, batchnorm: bool, seed: int, classes: int = 3) -> nn.Sequential:
    """A float64 eval-mode ReLU network: ``kind`` 'mlp' or 'cnn', with or without batch-norm.

    The batch-norm variants normalise one layer only — the MLP its second (so the bias in
    front of the batch-norm carries an accumulated layer scale), the CNN its first — so the
    rest still forms a chain with layer and neuron symmetries.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    norm: list[nn.Module]
    if kind == "mlp":
        norm = [nn.BatchNorm1d(5, eps=BATCHNORM_EPS)] if batchnorm else []
        modules = [
            nn.Linear(5, 6),
            nn.ReLU(),
            nn.Linear(6, 5),
            *norm,
            nn.ReLU(),
            nn.Linear(5, classes),
        ]
    else:
        norm = [nn.BatchNorm2d(3, eps=BATCHNORM_EPS)] if batchnorm else []
        modules = [
            nn.Conv2d(2, 3, 3, padding=1),
            *norm,
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, classes),
        ]
    model = nn.Sequential(*modules).double().eval()
    with torch.no_grad():
        for module in model:
            if isinstance(module, PARAMETRISED) and module.bias is not None:
                module.bias.normal_(0, 0.5, generator=generator)
            if isinstance(module, BATCHNORM):
                module.running_mean.normal_(0, 0.3, generator=generator)
                module.running_var.uniform_(0.2, 1.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.3, generator=generator)
    return model


def labelled_data(
    kind: str, seed: int, examples: int = 12, classes: int = 3
) -> tuple[Tensor, Tensor]:
    """Seeded float64 inputs for :func:`network` and random labels in ``0..classes−1``."""
    generator = torch.Generator().manual_seed(seed + 1)
    inputs = torch.randn((examples, *_INPUTS[kind]), generator=generator, dtype=torch.float64)
    labels = torch.randint(classes, (examples,), generator=generator)
    return inputs, labels


def check_label_errors(compute: Callable[[Any], object], kind: str, seed: int) -> None:
    """``compute(data)`` refuses inputs without labels and labels beyond the model's classes."""
    inputs, labels = labelled_data(kind, seed)
    with pytest.raises(DataError, match="depends on the labels"):
        compute(inputs)
    with pytest.raises(DataError, match="out of range"):
        compute((inputs, labels + 3))


def _checked(model: nn.Module, twin: nn.Module) -> nn.Sequential:
    """``twin``, after checking it computes the same logits as ``model`` on random inputs."""
    first = next(m for m in model.modules() if isinstance(m, PARAMETRISED))
    kind = "mlp" if isinstance(first, nn.Linear) else "cnn"
    inputs, _ = labelled_data(kind, seed=12345)
    with torch.no_grad():
        expected, got = model(inputs), twin(inputs)
    deviation = ((got - expected).abs().max() / expected.abs().max()).item()
    assert deviation < 1e-12, f"the transform changed the logits by {deviation:.1e}"
    return twin

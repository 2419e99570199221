"""The layer-wise α-scale symmetry of chain networks (theory §2; Ibayashi et al. 2021).

A chain network ``f(x) = W_L φ(… φ(W_1 x + b_1) …) + b_L`` with positively homogeneous ``φ``
(ReLU, LeakyReLU, max/avg pooling, flatten) computes the same function after

    W_l → α_l W_l,    b_l → (Π_{m≤l} α_m) b_l,     α_l > 0,  Π_l α_l = 1.

This module finds the parametrised layers of a model in forward order, applies such a
rescaling to a copy, and verifies on a probe batch that the copy computes the same function.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from minsharp.curvature.engine import run_forward
from minsharp.curvature.layers import model_dtype_device, preserved_buffers
from minsharp.curvature.rules import WEIGHT_LAYERS
from minsharp.errors import MinsharpError, ModelError, NotAChainError
from minsharp.options import nn_module
from minsharp.tensors import check_examples

#: How far the product of the α's may stray from 1, relative.
PRODUCT_TOLERANCE = 1e-6


__all__ = ["chain_layers", "rescale", "rescaled_copy", "verify_same_function"]


def chain_layers(model: nn.Module, inputs: Tensor) -> list[str]:
    """Names of the Linear/Conv modules of ``model`` in the order one forward pass calls them.

    Raises :class:`NotAChainError` if a module is called twice (then it is not a chain),
    :class:`ModelError` if ``model`` is not a module or its forward pass fails, and
    :class:`DataError` for inputs without examples or with non-finite values.
    """
    nn_module("model", model)
    check_examples(inputs)
    return forward_order(model, inputs)[0]


def forward_order(model: nn.Module, inputs: Tensor) -> tuple[list[str], Tensor]:
    """:func:`chain_layers` of a checked model and inputs, with the logits of that one pass."""
    order: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def record(module: nn.Module, args: object, output: object) -> None:
        name = names[module]
        if name in order:
            raise NotAChainError(
                f"module {name or '(root)'} is called twice in one forward pass, so the model "
                "is not a chain of layers and its α-rescaling is undefined."
            )
        order.append(name)

    hooked = [m for m in model.modules() if type(m) in WEIGHT_LAYERS and m.weight is not None]
    handles = [module.register_forward_hook(record) for module in hooked]
    try:
        with preserved_buffers(model), torch.no_grad():
            logits = run_forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise NotAChainError("model has no Linear or Conv layer to rescale.")
    return order, logits


def rescale(
    model: nn.Module, alphas: Sequence[float], inputs: Tensor, *, verify: bool = True
) -> nn.Module:
    """A copy of ``model`` with ``W_l → α_l W_l`` and ``b_l → (Π_{m≤l} α_m) b_l``.

    The layers ``l = 1..L`` are the Linear/Conv modules in the order a forward pass on
    ``inputs`` calls them; ``alphas`` holds one positive factor per layer with product 1
    (theory §2). With ``verify`` (the default) the copy is checked to compute the same logits
    on ``inputs``; if it does not, :class:`NotAChainError` explains why the model is not such
    a chain (:func:`minsharp.minimum_sharpness` still applies: it reads the rescaling group
    from the model's graph). ``model`` itself is never modified.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(
        ...     torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)
        ... ).double()
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> twin = rescale(net, [4.0, 0.25], x)
        >>> torch.allclose(twin[0].weight, 4 * net[0].weight)
        True
        >>> torch.allclose(twin(x), net(x))
        True
    """
    nn_module("model", model)
    check_examples(inputs)
    dtype, device = model_dtype_device(model)
    inputs = inputs.to(device=device, dtype=dtype) if inputs.is_floating_point() else inputs
    order = chain_layers(model, inputs)
    twin = rescaled_copy(model, order, alphas)
    if verify:
        verify_same_function(model, twin, inputs, order)
    return twin


def rescaled_copy(model: nn.Module, order: Sequence[str], alphas: Sequence[float]) -> nn.Module:
    """The rescaled copy of :func:`rescale`, for layers ``order`` already found; unverified.

    Raises :class:`ModelError` unless ``model`` is a module and ``order`` names Linear/Conv
    modules of it with a weight, and :class:`MinsharpError` for ``alphas`` as :func:`rescale`.
    """
    nn_module("model", model)
    layers = dict(model.named_modules())
    if isinstance(order, str) or not isinstance(order, Sequence):
        raise ModelError(f"order must be a sequence of module names; got {order!r}.")
    unknown = [
        name
        for name in order
        if not isinstance(name, str)
        or type(layers.get(name)) not in WEIGHT_LAYERS
        or layers[name].weight is None
    ]
    if unknown:
        listed = ", ".join(
            name or "(root)" for name, m in layers.items() if type(m) in WEIGHT_LAYERS
        )
        raise ModelError(
            f"order names {unknown}, which are not Linear/Conv modules of the model with a "
            f"weight; its layers are: {listed or 'none'}. Take the order from chain_layers."
        )
    return scaled_copy(model, order, _checked_alphas(alphas, len(order)))


def scaled_copy(model: nn.Module, order: Sequence[str], alphas: Sequence[float]) -> nn.Module:
    """:func:`rescaled_copy` for an order and factors already checked."""
    twin = copy.deepcopy(model)
    modules = dict(twin.named_modules())
    cumulative = 1.0
    with torch.no_grad():
        for name, alpha in zip(order, alphas, strict=True):
            cumulative *= alpha
            modules[name].weight.mul_(alpha)
            if modules[name].bias is not None:
                modules[name].bias.mul_(cumulative)
    return twin


def verify_same_function(
    model: nn.Module, rescaled: nn.Module, inputs: Tensor, order: Sequence[str]
) -> float:
    """Raise :class:`NotAChainError` unless both models give the same logits on ``inputs``.

    Returns the largest relative deviation of the logits, ``max |Δz| / max(1, max |z|)``.
    Raises :class:`ModelError` if a model is not a module or its forward pass fails, and
    :class:`DataError` for inputs without examples or with non-finite values.
    """
    nn_module("model", model)
    nn_module("rescaled", rescaled)
    check_examples(inputs)
    with preserved_buffers(model), torch.no_grad():
        expected = run_forward(model, inputs)
    return compare_logits(model, expected, rescaled, inputs, order)


def compare_logits(
    model: nn.Module, expected: Tensor, rescaled: nn.Module, inputs: Tensor, order: Sequence[str]
) -> float:
    """:func:`verify_same_function` given the model's logits ``expected`` on checked inputs."""
    with preserved_buffers(rescaled), torch.no_grad():
        got = run_forward(rescaled, inputs)
    if got.shape != expected.shape:
        raise NotAChainError(
            f"the rescaled model returns logits of shape {tuple(got.shape)}, the model "
            f"{tuple(expected.shape)}: they do not compute the same function."
        )
    tolerance = 1e3 * torch.finfo(expected.dtype).eps
    scale = expected.abs().max().clamp_min(1.0)
    deviation = ((got - expected).abs().max() / scale).item()
    if deviation <= tolerance:
        return deviation
    raise NotAChainError(
        "rescaling the layers "
        + " → ".join(name or "(root)" for name in order)
        + f" changed the model's logits (max relative deviation {deviation:.2e}, tolerance "
        f"{tolerance:.1e}), so the model is not a chain of positively homogeneous layers and "
        "this layer-wise rescaling does not apply to it (minsharp.minimum_sharpness does: it "
        "reads the model's own rescaling group from its graph)." + _suspects(model, order)
    )


def _checked_alphas(alphas: Sequence[float], num_layers: int) -> list[float]:
    try:
        factors = [float(a) for a in alphas]
    except (TypeError, ValueError) as error:
        raise MinsharpError(f"alphas must be a sequence of numbers; got {alphas!r}.") from error
    if len(factors) != num_layers:
        raise MinsharpError(
            f"alphas has {len(factors)} entries but the model has {num_layers} layers "
            "to rescale; give one factor per Linear/Conv layer, in forward order."
        )
    if not all(math.isfinite(a) and a > 0 for a in factors):
        raise MinsharpError(f"alphas must be finite and positive; got {factors}.")
    product = math.prod(factors)
    if abs(product - 1) > PRODUCT_TOLERANCE:
        raise MinsharpError(
            f"the product of alphas must be 1 (otherwise the logits scale by it); got "
            f"{product:.6g}. Divide each factor by the product's L-th root."
        )
    return factors


def _suspects(model: nn.Module, order: Sequence[str]) -> str:
    """Name the modules most likely to break the chain, for the error message."""
    chain = set(order)
    others = [
        f"{name} ({type(m).__name__})"
        for name, m in model.named_modules()
        if name not in chain
        and (any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(False)))
    ]
    hint = (
        "\nLikely causes: residual or parallel branches (their sums mix different scales), "
        "non-homogeneous activations (tanh, sigmoid, GELU, ELU…), or normalisation layers"
    )
    if others:
        hint += f"; modules outside the chain that hold parameters or state: {', '.join(others)}"
    return hint + "."

"""BN-sharpness (Yi, Zhang, Chen, Ma & Liu, IJCAI 2019), as RECONSTRUCTED in theory §5.

The paper's text was not available to us: this module implements theory §5 exactly as written
there, with the choices below made explicit.

A batch-norm makes the incoming weight vector ``w_k`` of each normalised unit ``k``
scale-free, so a perturbation ball of fixed radius measures different things on equivalent
networks. BN-sharpness ties the radius of each block to the block's own scale,

    S_δ(θ) = E_{ε: ‖ε_k‖ ≤ δ‖w_k‖ ∀k}[L(θ + ε)] − L(θ),

and approximates it by a one-dimensional integral along the sharpest direction:

    v_k = ‖w_k‖ g_k / ‖g_k‖   (g = ∇L(θ), per block; v_k = 0 where g_k = 0),
    S = (1/δ) ∫_0^δ [L(θ + t v) − L(θ)] dt,

evaluated by Gauss–Legendre quadrature.

**Blocks** (our choice, theory §5 leaves it open): each row (output unit) of the weight of a
Linear or Conv layer whose output feeds a batch-norm is one block, and so is each entry of
that layer's bias; every other trainable parameter tensor is one block. (A row and its bias
entry are separate blocks because the layer symmetry scales them by different factors, α_l
and Π_{m≤l} α_m.) Each block thus moves by
``t‖w_k‖``, a radius proportional to its own scale, which makes ``θ + t v`` follow every
rescaling that acts as a positive scalar on each block — the per-unit rescaling in front of
a batch-norm and the layer-wise α-scaling — so S is invariant to both.

The model is measured in eval mode (running statistics). :func:`bn_sharpness_direction`
works from parameter dictionaries, so a training loop (``L + λ·S`` with ``t ~ U(0, δ)``
drawn each step) can reuse it with live parameters and their gradients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from minsharp.curvature.engine import DEFAULT_BATCH_SIZE, autograd_enabled, run_forward
from minsharp.curvature.layers import BATCHNORM, preserved_buffers
from minsharp.curvature.rules import WEIGHT_LAYERS
from minsharp.measures.result import Evaluation
from minsharp.objective import DatasetObjective
from minsharp.options import integer, number

#: Default integration radius, relative to each block's norm (see :func:`bn_sharpness`).
DEFAULT_DELTA = 0.05
#: Default number of Gauss–Legendre nodes.
DEFAULT_NODES = 8
#: Largest number of quadrature nodes accepted.
MAX_NODES = 64


def bn_sharpness(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    delta: float = DEFAULT_DELTA,
    nodes: int = DEFAULT_NODES,
) -> Evaluation:
    """BN-sharpness ``S = (1/δ) ∫_0^δ [L(θ + t v) − L(θ)] dt``, ``v_k = ‖w_k‖ g_k / ‖g_k‖``.

    Yi, Zhang, Chen, Ma & Liu 2019, "BN-invariant sharpness regularizes the training model to
    better generalization" (IJCAI). **Reconstructed** (theory §5): the paper's text was not
    available, so this implements our reading of it. ``L`` is the mean cross-entropy over
    all of ``data`` with the model in eval mode (batch-norm uses its running statistics),
    ``g = ∇L(θ)``, and the blocks ``k`` are: each row of a Linear/Conv weight feeding a
    batch-norm, each entry of that layer's bias, and every other trainable tensor as a whole
    (see :func:`bn_sharpness_direction`). The integral is evaluated by ``nodes``-point
    Gauss–Legendre quadrature on ``[0, δ]``, exact for polynomials of degree ``2·nodes − 1``.

    Invariant to the per-unit rescaling of weights feeding a batch-norm and to the layer-wise
    α-scaling; not to per-neuron rescaling between two layers (a whole tensor is one block).
    At a point where the gradient vanishes the direction is zero and so is ``S``.

    Args:
        model: a network in eval mode, normally with batch-norm layers.
        data: ``(X, y)`` or an iterable/DataLoader of ``(X, y)`` batches.
        batch_size: examples per forward pass.
        progress: show a progress bar over the quadrature nodes.
        delta: integration radius ``δ`` relative to each block's norm, in ``(0, 1]``: along
            the segment every block moves by at most ``δ‖w_k‖``. Being relative, one default
            serves networks of any scale; 0.05 (at most 5% of each block's norm) keeps the
            probe local. The increases must stand clear of the rounding of ``L`` (about
            ``1e-7 · L`` in float32): ``details["loss_increases"]`` shows them. Training
            with ``t ~ U(0, δ)`` would use the same δ.
        nodes: Gauss–Legendre nodes, 1 to 64; exact for polynomials of degree
            ``2·nodes − 1``. Where ReLU kinks cross the segment the loss is only piecewise
            smooth and the quadrature error is of the order of their effect, shrinking as
            nodes are added (``details`` lists the values at the nodes).

    Returns:
        ``value`` S; ``details``: the loss ``L(θ)``, the nodes ``t_i``, the weights ``w_i``
        (summing to 1) and loss increases ``L(θ + t_i v) − L(θ)`` with ``S = Σ_i w_i ΔL_i``,
        the gradient norm and the names of the row-blocked weights.
    """
    number(
        "delta",
        delta,
        above=0,
        at_most=1,
        why="the integration radius relative to each block's norm",
    )
    integer("nodes", nodes, minimum=1, maximum=MAX_NODES, why="Gauss–Legendre nodes")
    # Outside torch.inference_mode(), whose tensors autograd refuses (the gradient step).
    with autograd_enabled():
        return _bn_sharpness(model, data, batch_size, progress, delta, nodes)


def _bn_sharpness(
    model: nn.Module, data: Any, batch_size: int, progress: bool, delta: float, nodes: int
) -> Evaluation:
    objective = DatasetObjective(model, data, batch_size=batch_size)
    probe = objective.probe_inputs
    rows = batchnorm_rows(model, probe)
    loss, gradient = objective.gradient()
    direction = bn_sharpness_direction(objective.parameters, gradient, rows)
    points, weights = gauss_legendre(nodes)
    times = [delta * (1 + x) / 2 for x in points]
    weights = [w / 2 for w in weights]  # the mean over [0, δ]: weights sum to 1
    increases = [
        objective.loss(objective.perturbed(direction, t)) - loss
        for t in tqdm(times, disable=not progress, desc="bn-sharpness", unit="node")
    ]
    value = math.fsum(w * increase for w, increase in zip(weights, increases, strict=True))
    gradient_norm = math.sqrt(sum(float(g.double().square().sum()) for g in gradient.values()))
    return Evaluation(
        value=value,
        num_examples=objective.num_examples,
        details={
            "loss": loss,
            "delta": delta,
            "nodes": times,
            "weights": weights,
            "loss_increases": increases,
            "gradient_norm": gradient_norm,
            "row_blocks": sorted(rows),
        },
    )


def batchnorm_rows(model: nn.Module, probe: Tensor) -> dict[str, str | None]:
    """Weights whose rows are blocks: those of Linear/Conv layers feeding a batch-norm.

    One forward pass on ``probe`` (a few inputs; in training mode at least two) finds the
    ``nn.Linear``/``nn.Conv1d/2d/3d`` modules whose output tensor is the input of an
    ``nn.BatchNorm*`` module, with one output unit per normalised channel (a Linear layer
    must produce (N, C)). Buffers are restored afterwards, so running statistics are not
    disturbed.

    Returns:
        Full weight name → full bias name (None for a layer without bias), as in
        ``model.named_parameters()``.
    """
    names = {module: name for name, module in model.named_modules()}
    outputs: list[tuple[Tensor, nn.Module]] = []
    found: dict[str, str | None] = {}

    def record_output(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if isinstance(output, Tensor):
            outputs.append((output, module))

    def check_input(norm: nn.Module, args: tuple[Any, ...]) -> None:
        source = next((m for out, m in outputs if args and args[0] is out), None)
        if source is None or source.weight is None:
            return
        output = args[0]
        units = output.shape[1] if output.dim() >= 2 else None
        if isinstance(source, nn.Linear) and output.dim() != 2:
            return
        if units != norm.num_features or source.weight.shape[0] != units:
            return
        prefix = f"{names[source]}." if names[source] else ""
        found[prefix + "weight"] = prefix + "bias" if source.bias is not None else None

    handles = [
        m.register_forward_hook(record_output) for m in model.modules() if type(m) in WEIGHT_LAYERS
    ]
    handles += [
        m.register_forward_pre_hook(check_input)
        for m in model.modules()
        if isinstance(m, BATCHNORM)
    ]
    try:
        with preserved_buffers(model), torch.no_grad():
            run_forward(model, probe)
    finally:
        for handle in handles:
            handle.remove()
    return found


def bn_sharpness_direction(
    parameters: Mapping[str, Tensor],
    gradient: Mapping[str, Tensor | None],
    rows: Mapping[str, str | None],
) -> dict[str, Tensor]:
    """The sharpest scale-aware direction ``v_k = ‖w_k‖ g_k / ‖g_k‖`` of BN-sharpness.

    Blocks ``k``: for each weight named in ``rows`` (from :func:`batchnorm_rows`), each row
    ``W[i]``, and each entry ``b[i]`` of the bias named there (when it is in
    ``parameters``); every other tensor of ``parameters`` as a whole. A block whose
    gradient is zero (or missing) gets ``v_k = 0``. Works on any parameter dictionary, e.g.
    ``dict(model.named_parameters())`` with ``{name: p.grad}`` during training; the result
    is detached, shaped and typed like the parameters.

    Example:
        >>> import torch
        >>> W = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
        >>> G = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
        >>> bn_sharpness_direction({"w": W}, {"w": G}, {"w": None})["w"]
        tensor([[5., 0.],
                [0., 0.]])
    """
    direction: dict[str, Tensor] = {}
    with torch.no_grad():
        for weight_name, bias_name in rows.items():
            if weight_name not in parameters:
                continue
            bias_name = bias_name if bias_name in parameters else None
            weight = parameters[weight_name].detach()
            grad = _gradient_of(gradient, weight_name, weight)
            weight_sq = weight.double().flatten(1).square().sum(1)
            grad_sq = grad.double().flatten(1).square().sum(1)
            scale = _ratio(weight_sq.sqrt(), grad_sq.sqrt())
            direction[weight_name] = (
                grad.double() * scale.reshape(-1, *[1] * (weight.dim() - 1))
            ).to(weight.dtype)
            if bias_name is not None:
                bias = parameters[bias_name].detach()
                bias_grad = _gradient_of(gradient, bias_name, bias)
                bias_scale = _ratio(bias.double().abs(), bias_grad.double().abs())
                direction[bias_name] = (bias_grad.double() * bias_scale).to(bias.dtype)
        for name, tensor in parameters.items():
            if name in direction:
                continue
            tensor = tensor.detach()
            grad = _gradient_of(gradient, name, tensor)
            scale = _ratio(tensor.double().norm(), grad.double().norm())
            direction[name] = (grad.double() * scale).to(tensor.dtype)
    return {name: direction[name] for name in parameters}


def gauss_legendre(nodes: int) -> tuple[list[float], list[float]]:
    """Gauss–Legendre nodes and weights on ``[−1, 1]`` (Golub–Welsch eigenvalue method).

    Example:
        >>> points, weights = gauss_legendre(2)
        >>> [round(x * 3**0.5, 12) for x in points], [round(w, 12) for w in weights]
        ([-1.0, 1.0], [1.0, 1.0])
    """
    integer("nodes", nodes, minimum=1)
    k = np.arange(1, nodes)
    off_diagonal = k / np.sqrt(4.0 * k**2 - 1)
    jacobi = np.diag(off_diagonal, 1) + np.diag(off_diagonal, -1)
    points, vectors = np.linalg.eigh(jacobi)
    weights = 2 * vectors[0] ** 2
    points = (points - points[::-1]) / 2  # symmetric about 0 to the last bit
    weights = (weights + weights[::-1]) / 2
    return points.tolist(), weights.tolist()


def _gradient_of(gradient: Mapping[str, Tensor | None], name: str, like: Tensor) -> Tensor:
    value = gradient.get(name)
    return torch.zeros_like(like) if value is None else value.detach()


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, 0 where the denominator is 0."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1.0), 0.0)

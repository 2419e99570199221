"""Minimum Sharpness (Ibayashi, Hamaguchi & Imaizumi 2021), theory §2.

``MS(θ) = min_α Tr H(T_α θ)`` over the α-scale transformations ``T_α`` of a chain network,
which leave its function unchanged. The per-layer traces transform as
``T^W_l → T^W_l / α_l²`` and ``T^b_l → T^b_l / (Π_{m≤l} α_m)²``, so with cumulative
log-scales ``v_l = Σ_{m≤l} log α_m`` (``v_0 = v_L = 0``)

    MS = min_v Σ_l T^W_l e^{−2(v_l − v_{l−1})} + Σ_l T^b_l e^{−2 v_l},

a convex sum of exponentials solved by :func:`minsharp.solvers.exp_sum.minimize_exp_sum` (in closed
form ``L (Π_l T^W_l)^{1/L}`` when no bias contributes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from minsharp.curvature.engine import DEFAULT_BATCH_SIZE, hessian_trace
from minsharp.curvature.guard import PROBE_EXAMPLES
from minsharp.curvature.layers import model_dtype_device
from minsharp.data.batches import input_batches
from minsharp.errors import MinsharpError, ModelError
from minsharp.measures.result import Evaluation
from minsharp.options import integer
from minsharp.solvers.exp_sum import minimize_exp_sum
from minsharp.symmetry.layerwise import compare_logits, forward_order, scaled_copy

#: Spread of the random log-scales used to check that the model is a chain.
CHECK_LOG_SCALE = 0.5


@dataclass(frozen=True)
class Certificate:
    """How the minimisation over α was solved, and how well."""

    method: Literal["closed form", "newton"]
    relative_gradient_norm: float
    """``‖∇_v F‖ / F`` at the returned point (0 up to rounding at the optimum)."""
    iterations: int


def minimum_sharpness_evaluation(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    seed: int = 0,
) -> Evaluation:
    """Minimum Sharpness ``MS(θ) = min_α Tr H(T_α θ)`` (Ibayashi, Hamaguchi & Imaizumi 2021).

    The minimum of the Hessian trace of the mean cross-entropy over all layer-wise
    rescalings ``W_l → α_l W_l, b_l → (Π_{m≤l} α_m) b_l`` (``Π α_l = 1``) that leave a chain
    ReLU network's function unchanged; invariant to those rescalings by construction. Without
    biases ``MS = L (Π_l T^W_l)^{1/L}``; with biases the convex problem over log-scales is
    solved by Newton's method to a relative gradient at rounding level (theory §2).

    Before the trace is computed, the first examples of ``data`` check that a random
    rescaling leaves the logits unchanged (:class:`~minsharp.errors.NotAChainError`
    otherwise): the measure's ``chain`` requirement. Arguments as for
    :func:`minsharp.hessian_trace`; ``seed`` fixes the random rescaling of that check.

    ``per_layer`` holds each layer's trace ``T^W_l/α_l² + T^b_l/(Π_{m≤l}α_m)²`` at the optimal
    rescaling (absent when the infimum is not attained); ``certificate`` how the minimisation
    over α ended (``method``, ``relative_gradient_norm``, ``iterations``, ``attained``);
    ``details`` the optimal ``alphas`` per layer (None when not attained), the
    ``weight_traces`` ``T^W_l`` and ``bias_traces`` ``T^b_l`` as given and their sum ``trace``.
    """
    integer("seed", seed)
    dtype, device = model_dtype_device(model)
    batches = input_batches(data, batch_size, device, dtype)
    first = next(batches)
    order = _checked_chain(model, first[:PROBE_EXAMPLES], seed)
    traces = hessian_trace(
        model, itertools.chain([first], batches), batch_size=batch_size, progress=progress
    )
    layers = traces.by_layer()
    weight = {name: layers[name]["weight"] for name in order}
    bias = {name: layers[name].get("bias", 0.0) for name in order}
    solution = solve_scales(list(weight.values()), list(bias.values()))
    alphas = dict(zip(order, solution.alphas, strict=True)) if solution.alphas else None
    return Evaluation(
        value=solution.value,
        num_examples=traces.num_examples,
        per_layer=_optimal_traces(alphas, weight, bias) if alphas else None,
        certificate={
            "method": solution.certificate.method,
            "relative_gradient_norm": solution.certificate.relative_gradient_norm,
            "iterations": solution.certificate.iterations,
            "attained": alphas is not None,
        },
        details={
            "alphas": alphas,
            "weight_traces": weight,
            "bias_traces": bias,
            "trace": sum(weight.values()) + sum(bias.values()),
        },
    )


def _checked_chain(model: nn.Module, probe: Tensor, seed: int) -> list[str]:
    """The chain's layers in forward order, after a random rescaling kept the logits."""
    order, logits = forward_order(model, probe)
    modules = dict(model.named_modules())
    frozen = [name or "(root)" for name in order if not modules[name].weight.requires_grad]
    if frozen:
        raise ModelError(
            f"layers with frozen weights: {', '.join(frozen)}. Minimum Sharpness rescales "
            "every layer of the chain, so all their weights must require grad."
        )
    twin = scaled_copy(model, order, _random_alphas(len(order), seed))
    compare_logits(model, logits, twin, probe, order)
    return order


def _optimal_traces(
    alphas: dict[str, float], weight: dict[str, float], bias: dict[str, float]
) -> dict[str, float]:
    """Per layer ``T^W_l / α_l² + T^b_l / (Π_{m≤l} α_m)²`` at the optimal rescaling."""
    traces, cumulative = {}, 1.0
    for name, alpha in alphas.items():
        cumulative *= alpha
        traces[name] = weight[name] / alpha**2 + bias[name] / cumulative**2
    return traces


@dataclass(frozen=True)
class ScaleSolution:
    """Result of :func:`solve_scales`."""

    value: float
    """``min_α Σ_l T^W_l/α_l² + T^b_l/(Π_{m≤l}α_m)²``, or its infimum."""
    alphas: list[float] | None
    """The minimising α_l, or None when the infimum is not attained."""
    certificate: Certificate


def solve_scales(weight: Sequence[float], bias: Sequence[float]) -> ScaleSolution:
    """Minimise the rescaled trace over α from per-layer traces (theory §2).

    ``min_{α>0, Πα=1} Σ_l T^W_l / α_l² + T^b_l / (Π_{m≤l} α_m)²`` for traces ``weight =
    [T^W_1..T^W_L]`` and ``bias = [T^b_1..T^b_L]`` (zeros for layers without bias). Closed
    form ``L (Π T^W_l)^{1/L}`` when every bias trace is zero and every weight trace positive;
    Newton in log-space otherwise. Zero traces may leave the infimum unattained: then
    ``alphas`` is None and ``value`` the infimum.

    Example:
        >>> solution = solve_scales([1.0, 4.0], [0.0, 0.0])
        >>> solution.value, [round(alpha**2, 12) for alpha in solution.alphas]
        (4.0, [0.5, 2.0])
    """
    try:
        weight, bias = [float(t) for t in weight], [float(t) for t in bias]
    except (TypeError, ValueError):
        raise MinsharpError(
            f"weight and bias must be sequences of traces (numbers); got {weight!r}, {bias!r}."
        ) from None
    if len(weight) != len(bias) or not weight:
        raise MinsharpError("weight and bias need one trace per layer, at least one layer.")
    if not all(math.isfinite(t) and t >= 0 for t in [*weight, *bias]):
        raise MinsharpError(f"traces must be finite and non-negative; got {weight}, {bias}.")
    L = len(weight)
    if not any(bias) and all(t > 0 for t in weight):
        log_mean = sum(math.log(t) for t in weight) / L
        alphas = [math.exp(0.5 * (math.log(t) - log_mean)) for t in weight]
        value = L * math.exp(log_mean)
        rescaled = np.array([t / a**2 for t, a in zip(weight, alphas, strict=True)])
        # ∂F/∂v_l = −2 (rescaled_l − rescaled_{l+1}) for the closed-form point.
        gradient = -2 * (rescaled[:-1] - rescaled[1:])
        certificate = Certificate("closed form", float(np.linalg.norm(gradient)) / value, 0)
        return ScaleSolution(value, alphas, certificate)
    term_weights, exponents = _exp_sum_terms(weight, bias)
    result = minimize_exp_sum(term_weights, exponents)
    certificate = Certificate("newton", result.relative_gradient_norm, result.iterations)
    if not result.attained:
        return ScaleSolution(result.value, None, certificate)
    cumulative = np.concatenate([[0.0], result.x, [0.0]])
    return ScaleSolution(result.value, np.exp(np.diff(cumulative)).tolist(), certificate)


def _exp_sum_terms(weight: Sequence[float], bias: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Terms of F over cumulative log-scales ``v_1..v_{L−1}`` (``v_0 = v_L = 0``)."""
    L = len(weight)
    weights, exponents = [], []
    for layer in range(1, L + 1):
        row = np.zeros(L + 1)  # coefficients of v_0..v_L; v_0 and v_L are fixed at 0
        row[layer], row[layer - 1] = -2.0, 2.0
        weights.append(weight[layer - 1])
        exponents.append(row[1:L])
        row = np.zeros(L + 1)
        row[layer] = -2.0
        weights.append(bias[layer - 1])
        exponents.append(row[1:L])
    return np.array(weights), np.array(exponents).reshape(2 * L, L - 1)


def _random_alphas(num_layers: int, seed: int) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    logs = torch.randn(num_layers, generator=generator, dtype=torch.float64) * CHECK_LOG_SCALE
    logs -= logs.mean()
    return logs.exp().tolist()

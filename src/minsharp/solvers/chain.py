"""Minimum Sharpness's problem on a chain of layers (theory §2), from per-layer traces.

With cumulative log-scales ``v_l = Σ_{m≤l} log α_m`` (``v_0 = v_L = 0``) the rescaled trace of a
chain is ``Σ_l T^W_l e^{−2(v_l − v_{l−1})} + Σ_l T^b_l e^{−2 v_l}``: in closed form
``L (Π_l T^W_l)^{1/L}`` when no bias contributes, otherwise a convex sum of exponentials for
:func:`minsharp.solvers.exp_sum.minimize_exp_sum`. The measure itself works on any graph
(:mod:`minsharp.measures.minimum_sharpness`); this is the paper's form, kept as an
independent check and for users who hold per-layer traces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from minsharp.errors import MinsharpError
from minsharp.solvers.exp_sum import minimize_exp_sum


@dataclass(frozen=True)
class Certificate:
    """How the minimisation over α was solved, and how well."""

    method: Literal["closed form", "newton"]
    relative_gradient_norm: float
    """``‖∇_v F‖ / F`` at the returned point (0 up to rounding at the optimum)."""
    iterations: int


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

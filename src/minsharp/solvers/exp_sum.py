"""Minimum Sharpness's convex problem: minimise a sum of exponentials over log-scales.

Minimum Sharpness (theory §2) minimises, over log-scales ``x``, a sum of exponentials of linear
functions with non-negative weights,

    F(x) = Σ_j a_j exp(c_jᵀ x),    a_j ≥ 0,

which is convex and smooth. We run Newton's method on ``log F`` (a log-sum-exp, whose
gradient is dimensionless, so the optimality certificate ``‖∇F‖ / F`` does not depend on the
scale of the traces) with a backtracking line search, to a relative gradient at rounding
level (``tests/test_solvers.py`` requires below 1e-12 in fewer than 50 steps).

When some weights are zero the infimum may be approached only as ``x → ∞`` (a layer whose
trace vanishes). We detect this exactly: a term can be driven to zero without increasing any
other iff some direction ``d`` has ``c_jᵀ d < 0`` for it and ``c_iᵀ d ≤ 0`` for every active
term, a linear programme. Such terms are dropped (their limit is 0) and the search repeats on
the rest, whose minimum is then attained; its value is the infimum of ``F``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

#: Newton stops once the squared Newton decrement of log F falls below this.
DECREMENT_TOLERANCE = 1e-30
#: Below this decrement Newton converges quadratically and a line search would only judge
#: rounding noise in log F: take full steps, at most ``FULL_STEPS`` of them.
FULL_STEP_DECREMENT = 1e-8
FULL_STEPS = 3
MAX_NEWTON_STEPS = 200


@dataclass(frozen=True)
class ExpSumMinimum:
    """Result of :func:`minimize_exp_sum`."""

    value: float
    """The minimum of F, or its infimum when not attained."""
    x: np.ndarray
    """A minimiser; when the infimum is not attained, a minimiser of the surviving terms."""
    attained: bool
    """False when the infimum is only reached as some coordinates go to ±∞."""
    relative_gradient_norm: float
    """``‖∇F(x)‖ / F(x)`` over the surviving terms: the optimality certificate."""
    iterations: int
    """Newton steps taken."""


def minimize_exp_sum(weights: np.ndarray, exponents: np.ndarray) -> ExpSumMinimum:
    """Minimise ``F(x) = Σ_j weights[j] · exp(exponents[j] @ x)`` over ``x ∈ R^m``.

    Args:
        weights: (J,) non-negative term weights ``a_j``.
        exponents: (J, m) rows ``c_j``.

    Example:
        ``e^{x} + 4 e^{-x}`` has minimum 4 at ``x = log 2``:

        >>> result = minimize_exp_sum(np.array([1.0, 4.0]), np.array([[1.0], [-1.0]]))
        >>> round(result.value, 12), round(float(np.exp(result.x[0])), 12), result.attained
        (4.0, 2.0, True)
    """
    weights = np.asarray(weights, dtype=np.float64)
    exponents = np.asarray(exponents, dtype=np.float64).reshape(len(weights), -1)
    if np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise ValueError(f"weights must be finite and non-negative; got {weights}.")
    active = weights > 0
    attained = True
    while active.any():
        vanishing = _vanishing_terms(exponents[active])
        if not vanishing.any():
            break
        attained = False
        active[np.flatnonzero(active)[vanishing]] = False
    dimension = exponents.shape[1]
    if not active.any():
        return ExpSumMinimum(0.0, np.zeros(dimension), attained, 0.0, 0)
    x, iterations, gradient = _newton_log_sum_exp(
        np.log(weights[active]), exponents[active], dimension
    )
    value = float(np.sum(weights[active] * np.exp(exponents[active] @ x)))
    return ExpSumMinimum(value, x, attained, float(np.linalg.norm(gradient)), iterations)


def _vanishing_terms(exponents: np.ndarray) -> np.ndarray:
    """Terms some direction ``d`` with ``exponents @ d ≤ 0`` drives strictly to zero.

    LP: maximise Σ_j s_j subject to ``c_jᵀ d + s_j ≤ 0``, ``0 ≤ s_j ≤ 1``, ``d`` free. The
    feasible directions form a convex cone, so one optimum makes every such s_j equal 1.
    """
    terms, dimension = exponents.shape
    if dimension == 0:
        return np.zeros(terms, dtype=bool)
    cost = np.concatenate([np.zeros(dimension), -np.ones(terms)])
    constraints = np.hstack([exponents, np.eye(terms)])
    bounds = [(None, None)] * dimension + [(0.0, 1.0)] * terms
    solution = linprog(cost, A_ub=constraints, b_ub=np.zeros(terms), bounds=bounds)
    if not solution.success:  # the LP is always feasible (d = 0, s = 0) and bounded
        raise RuntimeError(f"attainment LP failed: {solution.message}")
    return solution.x[dimension:] > 0.5


def _newton_log_sum_exp(
    log_weights: np.ndarray, exponents: np.ndarray, dimension: int
) -> tuple[np.ndarray, int, np.ndarray]:
    """Damped Newton on ``f(x) = log Σ_j exp(log_weights[j] + c_jᵀ x)`` from ``x = 0``.

    The least-squares Newton step copes with flat directions (a singular Hessian).
    """

    def objective(x: np.ndarray) -> float:
        logits = log_weights + exponents @ x
        top = logits.max()
        return float(top + np.log(np.exp(logits - top).sum()))

    x = np.zeros(dimension)
    full_steps = 0
    for iteration in range(MAX_NEWTON_STEPS + 1):
        logits = log_weights + exponents @ x
        shares = np.exp(logits - logits.max())
        shares /= shares.sum()
        gradient = exponents.T @ shares
        if iteration == MAX_NEWTON_STEPS or dimension == 0 or full_steps == FULL_STEPS:
            break
        hessian = (exponents.T * shares) @ exponents - np.outer(gradient, gradient)
        step = -np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        decrement = -float(gradient @ step)
        if decrement <= DECREMENT_TOLERANCE:
            break
        if decrement < FULL_STEP_DECREMENT:
            full_steps += 1
            x = x + step
            continue
        current, length = objective(x), 1.0
        while objective(x + length * step) > current - 0.25 * length * decrement:
            length *= 0.5
            if length < 1e-12:
                return x, iteration, gradient
        x = x + length * step
    return x, iteration, gradient


#: Default stopping tolerance of :func:`largest_eigenvalue` on ``‖A v − λ v‖ / |λ|``.

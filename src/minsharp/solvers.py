"""Convex minimisations over log-scales.

Minimum Sharpness (MATH §2) minimises, over log-scales ``x``, a sum of exponentials of linear
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

The full-Hessian measures (top eigenvalue, quotient-manifold flatness, MATH §4) need the
largest eigenvalue of a symmetric operator known only through products with vectors:
:func:`largest_eigenvalue` runs Lanczos with full reorthogonalisation and certifies its answer
by a measured residual.

Normalized sharpness (MATH §3) minimises, per layer, over column log-scales ``b``, the convex
``Σ_i φ(A_i B_i)`` with ``A_i = Σ_j h_ij e^{b_j}``, ``B_i = Σ_j W_ij² e^{−b_j}``:
:func:`minimize_normalized_sharpness` prunes the entries whose contribution only vanishes in a
limit (exactly, by strongly connected components of the support), then runs Newton's method
with conjugate-gradient steps (Hessian–vector products in O(m·n)) to a relative KKT residual
of 1e-12.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.optimize import linprog
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from minsharp.errors import MinsharpError, ModelError
from minsharp.options import choice, integer, number
from minsharp.tensors import all_finite

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
EIGEN_TOLERANCE = 1e-6
#: Default largest number of Lanczos steps (matrix-vector products) of :func:`largest_eigenvalue`.
EIGEN_MAX_ITERATIONS = 100
#: A Lanczos step whose new direction has norm below this (relative to ‖T‖) found an invariant
#: subspace: the Ritz values are then exact eigenvalues up to rounding.
_BREAKDOWN = 1e-12


@dataclass(frozen=True)
class Eigenpair:
    """Result of :func:`largest_eigenvalue`."""

    value: float
    """The Rayleigh quotient ``vᵀ A v`` of ``vector``: the largest eigenvalue when converged,
    and never above it in any case (a lower bound on ``λ_max`` when not converged)."""
    vector: Tensor
    """The unit Ritz vector, float64, on the device of the operator."""
    residual: float
    """``‖A v − value · v‖``, measured with one extra product, not estimated."""
    matvecs: int
    """Products with ``A`` computed, the final check included."""
    converged: bool
    """Whether ``residual ≤ tolerance · |value|`` (or the Krylov space became invariant)."""


def largest_eigenvalue(
    matvec: Callable[[Tensor], Tensor],
    dimension: int,
    *,
    tolerance: float = EIGEN_TOLERANCE,
    max_iterations: int = EIGEN_MAX_ITERATIONS,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Eigenpair:
    """Largest algebraic eigenvalue of a symmetric operator, by Lanczos.

    Lanczos with full reorthogonalisation (classical Gram–Schmidt applied twice against every
    stored basis vector) from a seeded Gaussian start vector. After step ``k`` the tridiagonal
    ``T_k = V_kᵀ A V_k`` gives the Ritz pair ``(θ, y = V_k s)`` of its largest eigenvalue and
    the residual estimate ``‖A y − θ y‖ = β_k |s_k|``. Once the estimate passes, one more
    product measures the true residual of the Rayleigh quotient ``ρ = yᵀ A y``, and the
    iteration stops when

        ``‖A y − ρ y‖ ≤ tolerance · |ρ|``.

    Then some eigenvalue lies within the residual of ``ρ`` (within ``residual² / gap`` given a
    spectral gap). That it is the *largest* one rests on Lanczos finding the extreme
    eigenvalues first from a random start, which has a component along every eigenvector; the
    residual alone cannot rule out a larger eigenvalue whose eigenvector the start barely
    touches (a second ``seed`` confirms). This is the largest *algebraic* eigenvalue: for an
    indefinite operator (a Hessian away from a minimum) a more negative eigenvalue of larger
    magnitude is ignored. ``ρ ≤ λ_max`` always (up to rounding), so a non-converged answer is a
    lower bound. Memory: ``(steps + 1) · dimension`` float64 numbers for the basis.

    Args:
        matvec: ``v ↦ A v`` on float64 vectors of length ``dimension``; ``A`` must be symmetric.
        dimension: length of the vectors.
        tolerance: relative residual to reach, in (0, 1).
        max_iterations: largest number of Lanczos steps, at least 1. If the tolerance is not
            reached by then, the best Ritz pair is returned with ``converged=False`` (no error:
            the caller decides; the measures warn).
        seed: seed of the start vector.
        device: where the vectors live (default: CPU).

    Returns:
        The Ritz pair with its measured residual and the number of products used.

    Example:
        A diagonal operator whose eigenvalue of largest magnitude is negative:

        >>> diagonal = torch.tensor([-5.0, 1.0, 2.0, 3.0], dtype=torch.float64)
        >>> pair = largest_eigenvalue(lambda v: diagonal * v, 4)
        >>> round(pair.value, 12), pair.converged, pair.matvecs <= 5
        (3.0, True, True)
    """
    _check_eigen_options(dimension, tolerance, max_iterations, seed)
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(dimension, generator=generator, dtype=torch.float64).to(device)
    basis = _Basis(start / start.norm(), max_iterations + 1)
    diagonal: list[float] = []
    off_diagonal: list[float] = []
    matvecs, failed_checks, next_check = 0, 0, 0
    best: Eigenpair | None = None
    for step in range(max_iterations):
        current = basis.last()
        product = _checked_product(matvec, current, dimension)
        matvecs += 1
        alpha = float(current @ product)
        residual_vector = product - alpha * current
        if off_diagonal:
            residual_vector -= off_diagonal[-1] * basis.vector(step - 1)
        residual_vector = basis.orthogonalise(residual_vector)
        diagonal.append(alpha)
        beta = float(residual_vector.norm())
        theta, ritz = _top_ritz_pair(diagonal, off_diagonal)
        scale = max(abs(t) for t in (*diagonal, *off_diagonal, beta)) or 1.0
        invariant = beta <= _BREAKDOWN * scale or step + 1 == dimension
        estimate = beta * abs(ritz[-1])
        last = step + 1 == max_iterations
        passed = estimate <= tolerance * abs(theta) and step >= next_check
        if invariant or last or passed:
            pair = _verified_pair(matvec, basis.combine(ritz), dimension)
            matvecs += 1
            converged = invariant or pair[2] <= tolerance * abs(pair[0])
            best = Eigenpair(*pair, matvecs=matvecs, converged=converged)
            if converged or last:
                break
            # The true residual sits on a rounding floor (float32 products) that the estimate
            # does not see: space the next checks out geometrically, 2, 4, 8… steps apart.
            failed_checks += 1
            next_check = step + 2**failed_checks
        off_diagonal.append(beta)
        basis.append(residual_vector / beta)
    assert best is not None
    return best


def _check_eigen_options(dimension: int, tolerance: float, max_iterations: int, seed: int) -> None:
    integer("dimension", dimension, minimum=1)
    number("tolerance", tolerance, above=0, below=1, why="the relative residual ‖Av − λv‖/|λ|")
    integer("max_iterations", max_iterations, minimum=1, why="Lanczos steps")
    integer("seed", seed)


def _checked_product(matvec: Callable[[Tensor], Tensor], vector: Tensor, dimension: int) -> Tensor:
    product = matvec(vector)
    if product.shape != (dimension,):
        raise ValueError(f"matvec returned shape {tuple(product.shape)}; expected ({dimension},).")
    product = product.to(torch.float64)
    if not bool(torch.isfinite(product).all()):
        raise ModelError(
            "a matrix-vector product came out non-finite (NaN or inf): the loss overflows "
            "at these parameters. Check the weights and the data scale."
        )
    return product


def _top_ritz_pair(diagonal: list[float], off_diagonal: list[float]) -> tuple[float, np.ndarray]:
    """Largest eigenvalue of the symmetric tridiagonal ``T`` and its unit eigenvector."""
    k = len(diagonal)
    values, vectors = eigh_tridiagonal(
        np.array(diagonal), np.array(off_diagonal[: k - 1]), select="i", select_range=(k - 1, k - 1)
    )
    return float(values[0]), vectors[:, 0]


def _verified_pair(
    matvec: Callable[[Tensor], Tensor], vector: Tensor, dimension: int
) -> tuple[float, Tensor, float]:
    """``(ρ, v, ‖A v − ρ v‖)`` for the unit vector along ``vector``, ``ρ = vᵀ A v``."""
    vector = vector / vector.norm()
    product = _checked_product(matvec, vector, dimension)
    value = float(vector @ product)
    return value, vector, float((product - value * vector).norm())


class _Basis:
    """The orthonormal Lanczos vectors, as rows of a buffer that doubles when full."""

    def __init__(self, first: Tensor, capacity: int) -> None:
        self._capacity = capacity
        self._rows = first.new_empty((min(capacity, 8), first.numel()))
        self._rows[0] = first
        self._size = 1

    def last(self) -> Tensor:
        return self._rows[self._size - 1]

    def vector(self, index: int) -> Tensor:
        return self._rows[index]

    def append(self, vector: Tensor) -> None:
        if self._size == self._rows.shape[0]:
            grown = self._rows.new_empty((min(2 * self._size, self._capacity), vector.numel()))
            grown[: self._size] = self._rows
            self._rows = grown
        self._rows[self._size] = vector
        self._size += 1

    def orthogonalise(self, vector: Tensor) -> Tensor:
        """``vector`` minus its projection on the basis, Gram–Schmidt applied twice."""
        rows = self._rows[: self._size]
        for _ in range(2):
            vector = vector - rows.T @ (rows @ vector)
        return vector

    def combine(self, coefficients: np.ndarray) -> Tensor:
        """``Σ_j coefficients[j] · basis[j]``."""
        rows = self._rows[: len(coefficients)]
        return torch.as_tensor(coefficients, dtype=rows.dtype, device=rows.device) @ rows


# ---------------------------------------------------------------------------------------------
# Normalized sharpness (Tsuzuku, Sato & Sugiyama 2020), MATH §3
# ---------------------------------------------------------------------------------------------

NormalizedObjective = Literal["arxiv", "icml"]
#: The two objectives :func:`minimize_normalized_sharpness` knows.
NORMALIZED_OBJECTIVES: tuple[NormalizedObjective, ...] = ("arxiv", "icml")
#: Default stopping tolerance on the relative KKT residual ``‖∇_b F‖₂ / F``.
NORMALIZED_TOLERANCE = 1e-12
#: Default largest number of Newton steps per connected block.
NORMALIZED_MAX_ITERATIONS = 100
#: Alternating closed-form sweeps (arXiv) or balancing sweeps (ICML) before Newton.
WARM_START_SWEEPS = 5
#: Below this predicted decrease (relative to F) Newton is in its quadratic phase and the
#: Armijo test would judge rounding noise of F: full steps are taken.
_FULL_STEP_DECREASE = 1e-11
_ARMIJO = 0.25
_SMALLEST_STEP = 2.0**-40
#: Most conjugate-gradient steps (Hessian–vector products) per Newton step.
_CG_MAX_STEPS = 500


@dataclass(frozen=True)
class NormalizedSharpnessSolution:
    """Result of :func:`minimize_normalized_sharpness` for one layer."""

    value: float
    """The layer's normalized sharpness ``NS_l``: the minimum, or the infimum if not attained."""
    objective: NormalizedObjective
    """``"arxiv"`` or ``"icml"``."""
    attained: bool
    """False when some positive terms of the objective can only be driven to zero in a limit
    (a scale going to 0 or ∞): ``value`` is then the infimum, approached but not reached.
    arXiv: a term per positive entry of ``h`` or ``W²``. ICML: a term ``h_ij W_ik² s_j / s_k``
    per pair of positive entries in one row, so a row with ``h_i = 0`` (a dead unit) adds
    exactly 0 at every ``s`` and does not count."""
    relative_kkt: float
    """``‖∇_b F(b)‖₂ / F(b)`` at the returned log-scales, over the variables of the attained
    part: the optimality certificate (0 when nothing is left to optimise)."""
    converged: bool
    """Whether ``relative_kkt ≤ tolerance``."""
    iterations: int
    """Newton steps taken, summed over the blocks (warm-start sweeps not included)."""
    hessian_products: int
    """Hessian–vector products made by the conjugate-gradient solves, summed over blocks."""
    warm_start_sweeps: int
    """Closed-form sweeps made before Newton, per block."""
    blocks: int
    """Independent sub-problems (strongly connected blocks) solved; usually 1."""
    pruned_rows: int
    """Rows outside every block: their contribution is 0 in the limit (or always)."""
    pruned_columns: int
    """Columns outside every block."""
    row_log_scales: np.ndarray | None
    """arXiv: ``log σ_i²`` per row at the optimum (NaN for pruned rows); None for ICML, whose
    objective does not depend on ``σ``."""
    column_log_scales: np.ndarray
    """``log s_j = log σ'_j²`` per column (NaN for pruned columns), with mean 0 per block."""
    method: str = "newton-cg"
    """Newton's method in log-scales, steps by preconditioned conjugate gradients."""


def minimize_normalized_sharpness(
    diag_hessian: Tensor | np.ndarray,
    weight_squared: Tensor | np.ndarray,
    *,
    objective: NormalizedObjective = "arxiv",
    tolerance: float = NORMALIZED_TOLERANCE,
    max_iterations: int = NORMALIZED_MAX_ITERATIONS,
) -> NormalizedSharpnessSolution:
    """One layer's normalized sharpness from ``h = diag H`` and ``W²`` (m × n, non-negative).

    Tsuzuku, Sato & Sugiyama, "Normalized flat minima: exploring scale invariant definition of
    flat minima for neural networks using PAC-Bayesian analysis" (ICML 2020), MATH §3:

    * ``objective="arxiv"`` (arXiv version):
      ``min_{σ>0, σ'>0} Σ_ij h_ij σ_i² σ'_j² + W_ij² / (σ_i² σ'_j²)
      = min_{s>0} 2 Σ_i √(A_i(s) B_i(s))``;
    * ``objective="icml"`` (ICML version): ``min_{s>0} √(Σ_i A_i(s) B_i(s))``;

    with ``A_i(s) = Σ_j h_ij s_j`` and ``B_i(s) = Σ_j W_ij² / s_j``. Both are invariant to
    ``h_ij → h_ij / (r_i c_j)²``, ``W_ij² → W_ij² (r_i c_j)²``.

    Method. In log-scales ``b = log s`` the reduced objective ``F(b) = Σ_i φ(A_i B_i)``
    (``φ(u) = 2√u`` arXiv; ``φ(u) = u`` ICML, value ``√min F``) is convex, with one flat
    direction ``b + c·1`` per block. With ``P = h diag(e^b)`` and ``Q = W² diag(e^{−b})``:

    * arXiv, ``α_i = √(B_i/A_i)`` (the optimal ``σ_i²``), ``M = diag(α) P + diag(1/α) Q``,
      ``t_i = √(A_i B_i)``: ``∇F = Pᵀα − Qᵀ(1/α)``, ``∇²F = diag(Mᵀ1) − ½ Mᵀ diag(1/t) M``;
    * ICML: ``∇F = PᵀB − QᵀA``, ``∇²F = diag(PᵀB + QᵀA) − PᵀQ − QᵀP`` (the Laplacian of the
      graph with weights ``C_jk e^{b_j − b_k}``, ``C = hᵀ W²``).

    Each Hessian–vector product costs four products with ``h`` or ``W²``, O(m·n); nothing
    m × n is formed per iteration. After :data:`WARM_START_SWEEPS` closed-form sweeps
    (alternating ``σ_i² = √(B_i/A_i)`` and the same for ``s_j``; damped balancing for ICML),
    Newton's method runs on ``b``: each step solves ``∇²F d = −∇F`` by conjugate gradients
    preconditioned with the Hessian's dominating diagonal ``PᵀB + QᵀA`` (resp. ``Mᵀ1``), to
    the relative residual ``min(0.1, ‖∇F‖/F)`` (the system is singular only along ``1``, to
    which ``∇F`` is orthogonal), then a backtracking (Armijo) line search keeps F decreasing.
    It stops once the dimensionless relative KKT residual ``‖∇_b F‖₂ / F ≤ tolerance``
    (``∇_b F`` is in units of F; the ratio is unchanged by rescaling ``h``, ``W²``, their
    rows or their columns; for ICML it refers to ``F = Σ A_i B_i``, before the root, and for
    arXiv the σ-part of the joint gradient vanishes by construction).

    Zero entries. Rows and columns form a bipartite graph with an edge ``row i → column j``
    where ``h_ij > 0`` and ``column j → row i`` where ``W_ij > 0``. A term is bounded away
    from zero iff its edges lie in one strongly connected component; terms between
    components can be driven to zero together (scales going to 0 or ∞ along the order of the
    components) without changing the rest. They are pruned exactly, the value is the
    infimum (``attained`` False if a positive term was pruned), and each component is an
    independent problem whose minimum is attained. This covers all-zero rows and columns of
    ``h`` (dead ReLU units, always-zero inputs), pruned iteratively. The arXiv values of the
    blocks add up; ICML adds ``F`` before the root.

    Args:
        diag_hessian: ``h``, (m, n), finite and non-negative.
        weight_squared: ``W²``, same shape, finite and non-negative.
        objective: ``"arxiv"`` or ``"icml"``.
        tolerance: relative KKT residual to reach, in (0, 1).
        max_iterations: most Newton steps per block (≥ 0); if the tolerance is not reached,
            the last iterate is returned with ``converged=False``.

    Returns:
        The value, its certificate and the optimal log-scales.

    Raises:
        ValueError: bad shapes, negative or non-finite entries, unknown objective, or bad
            tolerance or iteration count.

    Example:
        One row: ``min_s 2√((Σ h_j s_j)(Σ w_j / s_j)) = 2 Σ_j √(h_j w_j)`` (Cauchy–Schwarz):

        >>> solution = minimize_normalized_sharpness(np.array([[1.0, 4.0]]), np.array([[9.0, 1.0]]))
        >>> round(solution.value, 12), solution.attained, solution.relative_kkt < 1e-12
        (10.0, True, True)
    """
    h, w2 = _validated_layer(diag_hessian, weight_squared, objective, tolerance, max_iterations)
    m, n = h.shape
    row_logs = torch.full((m,), math.nan, dtype=torch.float64)
    column_logs = torch.full((n,), math.nan, dtype=torch.float64)
    blocks = _support_blocks(h, w2)
    attained = _terms(h, w2, objective) == sum(_terms(b.h, b.w2, objective) for b in blocks)
    # Global scale: NS(c_h h, c_w W²) = √(c_h c_w) NS(h, W²) for both objectives.
    h_scale = float(h.max()) if h.numel() else 1.0
    w_scale = float(w2.max()) if w2.numel() else 1.0
    total, squared_gradient, iterations, products = 0.0, 0.0, 0, 0
    for block in blocks:
        block_h, block_w = block.h / h_scale, block.w2 / w_scale
        if objective == "arxiv":
            result = _solve_arxiv_block(block_h, block_w, tolerance, max_iterations)
            # σ_i² s_j of the unscaled problem is √(c_w / c_h) times that of the scaled one.
            row_logs[block.rows] = result.row_logs + 0.5 * math.log(w_scale / h_scale)
        else:
            result = _solve_icml_block(block_h, block_w, tolerance, max_iterations)
        column_logs[block.columns] = result.column_logs
        total += result.value
        squared_gradient += result.gradient_norm**2
        iterations += result.newton_steps
        products += result.hessian_products
    relative_kkt = math.sqrt(squared_gradient) / total if total > 0 else 0.0
    scale = math.sqrt(h_scale * w_scale)
    value = total * scale if objective == "arxiv" else math.sqrt(total) * scale
    rows_in_blocks = sum(len(block.rows) for block in blocks)
    columns_in_blocks = sum(len(block.columns) for block in blocks)
    return NormalizedSharpnessSolution(
        value=value,
        objective=objective,
        attained=attained,
        relative_kkt=relative_kkt,
        converged=relative_kkt <= tolerance,
        iterations=iterations,
        hessian_products=products,
        warm_start_sweeps=WARM_START_SWEEPS,
        blocks=len(blocks),
        pruned_rows=m - rows_in_blocks,
        pruned_columns=n - columns_in_blocks,
        row_log_scales=row_logs.numpy() if objective == "arxiv" else None,
        column_log_scales=column_logs.numpy(),
    )


def check_normalized_options(objective: str, tolerance: float, max_iterations: int) -> None:
    """Raise :class:`MinsharpError` unless the normalized-sharpness solver options are valid."""
    choice("objective", objective, NORMALIZED_OBJECTIVES)
    number("tolerance", tolerance, above=0, below=1, why="the relative KKT residual")
    integer("max_iterations", max_iterations, minimum=0, why="Newton steps per block")


def _validated_layer(
    diag_hessian: Tensor | np.ndarray,
    weight_squared: Tensor | np.ndarray,
    objective: str,
    tolerance: float,
    max_iterations: int,
) -> tuple[Tensor, Tensor]:
    """Both matrices as float64 CPU tensors, after checking every argument."""
    check_normalized_options(objective, tolerance, max_iterations)
    matrices = []
    for name, value in (("diag_hessian", diag_hessian), ("weight_squared", weight_squared)):
        if isinstance(value, Tensor):
            value = value.detach()
        try:
            matrix = torch.as_tensor(value, dtype=torch.float64, device="cpu")
        except (TypeError, ValueError, RuntimeError) as error:
            raise MinsharpError(
                f"{name} must be a real matrix (tensor or array); got {type(value).__name__}."
            ) from error
        if matrix.dim() != 2:
            raise MinsharpError(
                f"{name} must be a 2-D matrix (rows = output units, columns = inputs); got "
                f"shape {tuple(matrix.shape)}. Reshape conv weights to (C_out, C_in) first."
            )
        if not all_finite(matrix):
            raise MinsharpError(f"{name} holds non-finite entries (NaN or inf).")
        if matrix.numel() and float(matrix.min()) < 0:
            raise MinsharpError(
                f"{name} must be non-negative (a Hessian diagonal of a piecewise-linear network, "
                f"or squared weights); its smallest entry is {float(matrix.min()):.3g}."
            )
        matrices.append(matrix)
    h, w2 = matrices
    if h.shape != w2.shape:
        raise MinsharpError(
            f"diag_hessian and weight_squared must have the same shape; got "
            f"{tuple(h.shape)} and {tuple(w2.shape)}."
        )
    return h, w2


@dataclass(frozen=True)
class _Block:
    """One independent sub-problem: its row and column indices and its two matrices."""

    rows: Tensor
    columns: Tensor
    h: Tensor
    w2: Tensor


def _support_blocks(h: Tensor, w2: Tensor) -> list[_Block]:
    """The strongly connected blocks of the support graph (with at least one edge).

    Graph: ``row i → column j`` where ``h_ij > 0``, ``column j → row i`` where ``W_ij² > 0``.
    Rows and columns with no positive ``h`` or no positive ``W²`` entry are pruned first,
    iteratively; what remains is one block whenever ``h`` or ``W²`` has no zero left in it
    (then every node reaches every other). Otherwise scipy's strongly connected components
    split it.
    """
    rows = torch.arange(h.shape[0])
    columns = torch.arange(h.shape[1])
    sub_h, sub_w = h, w2
    while True:  # entries are ≥ 0: a sum is positive iff some entry is
        keep_rows = (sub_h.sum(1) > 0) & (sub_w.sum(1) > 0)
        keep_columns = (sub_h.sum(0) > 0) & (sub_w.sum(0) > 0)
        if bool(keep_rows.all()) and bool(keep_columns.all()):
            break
        rows, columns = rows[keep_rows], columns[keep_columns]
        sub_h = sub_h[keep_rows][:, keep_columns]
        sub_w = sub_w[keep_rows][:, keep_columns]
    if sub_h.numel() == 0:
        blocks = []
    elif bool(sub_h.min() > 0) or bool(sub_w.min() > 0):
        blocks = [_Block(rows, columns, sub_h, sub_w)]
    else:
        blocks = _strong_components(sub_h, sub_w, rows, columns)
    return blocks


def _terms(h: Tensor, w2: Tensor, objective: NormalizedObjective) -> int:
    """Number of positive terms: entries (arXiv) or same-row pairs ``h_ij W_ik²`` (ICML)."""
    if objective == "arxiv":
        return int(torch.count_nonzero(h)) + int(torch.count_nonzero(w2))
    return int(((h > 0).sum(1) * (w2 > 0).sum(1)).sum())


def _strong_components(h: Tensor, w2: Tensor, rows: Tensor, columns: Tensor) -> list[_Block]:
    """The blocks of the bipartite support graph with at least one edge inside."""
    m = len(rows)
    h_rows, h_columns = (index.numpy() for index in (h > 0).nonzero(as_tuple=True))
    w_rows, w_columns = (index.numpy() for index in (w2 > 0).nonzero(as_tuple=True))
    sources = np.concatenate([h_rows, m + w_columns])
    targets = np.concatenate([m + h_columns, w_rows])
    size = m + len(columns)
    graph = coo_matrix((np.ones(len(sources)), (sources, targets)), shape=(size, size))
    _, labels = connected_components(graph.tocsr(), directed=True, connection="strong")
    labels = torch.from_numpy(labels)
    blocks = []
    for label in torch.unique(labels):
        members = labels == label
        in_rows, in_columns = members[:m], members[m:]
        if bool(in_rows.any()) and bool(in_columns.any()):
            blocks.append(
                _Block(
                    rows[in_rows],
                    columns[in_columns],
                    h[in_rows][:, in_columns],
                    w2[in_rows][:, in_columns],
                )
            )
    return blocks


@dataclass(frozen=True)
class _BlockResult:
    value: float
    """F at the returned point: 2 Σ_i √(A_i B_i) (arXiv) or Σ_i A_i B_i (ICML)."""
    gradient_norm: float
    newton_steps: int
    hessian_products: int
    column_logs: Tensor
    row_logs: Tensor | None = None


@dataclass
class _Point:
    """F, its gradient and the Hessian (as products with vectors) at one ``b``."""

    value: float
    gradient: Tensor
    hessian_product: Callable[[Tensor], Tensor]
    degrees: Tensor
    """Positive diagonal dominating the Hessian's: the Jacobi preconditioner."""


class _ArxivProblem:
    """``F(b) = 2 Σ_i √(A_i B_i)`` over the column log-scales ``b`` of one block.

    At the optimal ``σ_i² = α_i = √(B_i/A_i)`` the terms of the joint objective are
    ``M = diag(α) h diag(s) + diag(1/α) W² diag(1/s)``, with row sums ``2 t_i = 2√(A_i B_i)``:
    ``∇F = s ⊙ hᵀα − (W²)ᵀ(1/α) / s`` and ``∇²F = diag(Mᵀ1) − ½ Mᵀ diag(1/t) M`` (the Schur
    complement of the joint Hessian), applied with four matrix–vector products.
    """

    def __init__(self, h: Tensor, w2: Tensor) -> None:
        self.h, self.w2 = h, w2

    def value(self, b: Tensor) -> float:
        s = b.exp()
        return float(2 * ((self.h @ s) * (self.w2 @ (1 / s))).sqrt().sum())

    def point(self, b: Tensor) -> _Point:
        h, w2 = self.h, self.w2
        s = b.exp()
        A, B = h @ s, w2 @ (1 / s)
        alpha, t = (B / A).sqrt(), (A * B).sqrt()
        up, down = s * (h.T @ alpha), (w2.T @ (1 / alpha)) / s

        def hessian_product(v: Tensor) -> Tensor:
            mv = alpha * (h @ (s * v)) + (w2 @ (v / s)) / alpha
            mv /= t
            return (up + down) * v - 0.5 * (s * (h.T @ (alpha * mv)) + (w2.T @ (mv / alpha)) / s)

        return _Point(float(2 * t.sum()), up - down, hessian_product, up + down)

    def warm_start(self, sweeps: int) -> Tensor:
        """Alternating exact minimisation: ``σ_i² = √(B_i/A_i)``, then each ``s_j`` likewise."""
        b = 0.5 * (self.w2.sum(0).log() - self.h.sum(0).log())
        for _ in range(sweeps):
            s = b.exp()
            alpha = ((self.w2 @ (1 / s)) / (self.h @ s)).sqrt()
            b = 0.5 * ((self.w2.T @ (1 / alpha)).log() - (self.h.T @ alpha).log())
        return b

    def row_logs(self, b: Tensor) -> Tensor:
        """``log σ_i² = ½ (log B_i − log A_i)``, the optimal row scales for ``b``."""
        s = b.exp()
        return 0.5 * ((self.w2 @ (1 / s)).log() - (self.h @ s).log())


class _IcmlProblem:
    """``F(b) = Σ_i A_i B_i = Σ_jk C_jk e^{b_j − b_k}`` (``C = hᵀ W²``) over one block.

    With ``P = h diag(s)``, ``Q = W² diag(1/s)``: ``∇F = Pᵀ B − Qᵀ A`` and
    ``∇²F = diag(Pᵀ B + Qᵀ A) − PᵀQ − QᵀP``, a graph Laplacian, applied with four
    matrix–vector products (C is never formed).
    """

    def __init__(self, h: Tensor, w2: Tensor) -> None:
        self.h, self.w2 = h, w2
        self.self_coupling = (h * w2).sum(0)  # C_jj, untouched by the scales

    def value(self, b: Tensor) -> float:
        s = b.exp()
        return float((self.h @ s) @ (self.w2 @ (1 / s)))

    def point(self, b: Tensor) -> _Point:
        h, w2 = self.h, self.w2
        s = b.exp()
        A, B = h @ s, w2 @ (1 / s)
        out, into = s * (h.T @ B), (w2.T @ A) / s

        def hessian_product(v: Tensor) -> Tensor:
            pv, qv = h @ (s * v), w2 @ (v / s)
            return (out + into) * v - s * (h.T @ qv) - (w2.T @ pv) / s

        return _Point(float(A @ B), out - into, hessian_product, out + into)

    def warm_start(self, sweeps: int) -> Tensor:
        """Damped balancing sweeps: each ``s_j`` moved halfway to its minimiser given the rest."""
        b = 0.5 * (self.w2.sum(0).log() - self.h.sum(0).log())
        for _ in range(sweeps):
            s = b.exp()
            into = self.w2.T @ (self.h @ s) - self.self_coupling * s
            out = self.h.T @ (self.w2 @ (1 / s)) - self.self_coupling / s
            if not (bool((into > 0).all()) and bool((out > 0).all())):
                break
            b = 0.5 * b + 0.25 * (into.log() - out.log())
        return b


def _solve_arxiv_block(
    h: Tensor, w2: Tensor, tolerance: float, max_iterations: int
) -> _BlockResult:
    problem = _ArxivProblem(h, w2)
    b, value, gradient_norm, steps, products = _newton_cg(problem, tolerance, max_iterations)
    shift = b.mean()  # the flat direction: s · c with σ² / c
    return _BlockResult(
        value, gradient_norm, steps, products, b - shift, problem.row_logs(b) + shift
    )


def _solve_icml_block(h: Tensor, w2: Tensor, tolerance: float, max_iterations: int) -> _BlockResult:
    b, value, gradient_norm, steps, products = _newton_cg(
        _IcmlProblem(h, w2), tolerance, max_iterations
    )
    return _BlockResult(value, gradient_norm, steps, products, b - b.mean())


def _newton_cg(
    problem: _ArxivProblem | _IcmlProblem, tolerance: float, max_iterations: int
) -> tuple[Tensor, float, float, int, int]:
    """Newton–CG with backtracking from the warm start: ``(b, F, ‖∇F‖₂, steps, products)``."""
    b = problem.warm_start(WARM_START_SWEEPS)
    steps = products = 0
    while True:
        point = problem.point(b)
        value, gradient_norm = point.value, float(point.gradient.norm())
        if not (math.isfinite(value) and math.isfinite(gradient_norm)):
            raise MinsharpError(
                "normalized sharpness: the objective overflowed in float64 (entries of h or "
                "W² spanning more than ~600 orders of magnitude within one layer)."
            )
        relative = gradient_norm / value
        if b.numel() <= 1 or relative <= tolerance or steps >= max_iterations:
            return b, value, gradient_norm, steps, products
        # Forcing term min(0.1, relative residual): superlinear, then quadratic convergence.
        direction, used = _conjugate_gradients(point, min(0.1, relative))
        products += used
        decrease = -float(point.gradient @ direction)
        if not decrease > 0:  # rounding has taken over: no descent direction left
            return b, value, gradient_norm, steps, products
        step = 1.0
        if decrease > _FULL_STEP_DECREASE * value:
            while problem.value(b + step * direction) > value - _ARMIJO * step * decrease:
                step /= 2
                if step < _SMALLEST_STEP:
                    return b, value, gradient_norm, steps, products
        b = b + step * direction
        steps += 1


def _conjugate_gradients(point: _Point, relative_tolerance: float) -> tuple[Tensor, int]:
    """Jacobi-preconditioned CG on ``∇²F d = −∇F`` from ``d = 0``; ``(d, products used)``.

    ``∇²F`` is singular along ``1`` and ``∇F ⊥ 1``: the system is consistent and CG stays on
    the complement (the residual is re-projected on it against rounding). Any CG iterate is
    a descent direction, so an early stop still gives a usable step.
    """
    gradient = point.gradient
    direction = torch.zeros_like(gradient)
    residual = -gradient
    target = relative_tolerance * float(gradient.norm())
    preconditioned = residual / point.degrees
    search = preconditioned.clone()
    alignment = float(residual @ preconditioned)
    for used in range(_CG_MAX_STEPS):
        if float(residual.norm()) <= target:
            return direction, used
        product = point.hessian_product(search)
        curvature = float(search @ product)
        if not curvature > 0:
            return direction, used + 1
        length = alignment / curvature
        direction += length * search
        residual -= length * product
        residual -= residual.mean()
        preconditioned = residual / point.degrees
        previous, alignment = alignment, float(residual @ preconditioned)
        search = preconditioned + (alignment / previous) * search
    return direction, _CG_MAX_STEPS

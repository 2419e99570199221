"""Normalized sharpness's per-layer convex problem (Tsuzuku, Sato & Sugiyama 2020), theory §3.

Normalized sharpness minimises, per layer, over column log-scales ``b``, the convex
``Σ_i φ(A_i B_i)`` with ``A_i = Σ_j h_ij e^{b_j}``, ``B_i = Σ_j W_ij² e^{−b_j}``:
:func:`minimize_normalized_sharpness` prunes the entries whose contribution only vanishes in a
limit (exactly, by strongly connected components of the support), then runs Newton's method
with conjugate-gradient steps (Hessian–vector products in O(m·n)) to a relative KKT residual
of 1e-12.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from minsharp.errors import MinsharpError
from minsharp.options import choice, integer, number
from minsharp.tensors import all_finite

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
    flat minima for neural networks using PAC-Bayesian analysis" (ICML 2020), theory §3:

    * ``objective="arxiv"`` (arXiv version):
      ``min_{σ>0, σ'>0} Σ_ij h_ij σ_i² σ'_j² + W_ij² / (σ_i² σ'_j²)
      = min_{s>0} 2 Σ_i √(A_i(s) B_i(s))``;
    * ``objective="icml"`` (ICML version): ``min_{s>0} √(Σ_i A_i(s) B_i(s))``;

    with ``A_i(s) = Σ_j h_ij s_j`` and ``B_i(s) = Σ_j W_ij² / s_j``. Both are invariant to
    ``h_ij → h_ij / (r_i c_j)²``, ``W_ij² → W_ij² (r_i c_j)²``.

    The method and the pruning of zero entries are described in the module docstring.

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
    blocks = _support_blocks(h, w2)
    attained = _terms(h, w2, objective) == sum(_terms(b.h, b.w2, objective) for b in blocks)
    # Global scale: NS(c_h h, c_w W²) = √(c_h c_w) NS(h, W²) for both objectives.
    h_scale = float(h.max()) if h.numel() else 1.0
    w_scale = float(w2.max()) if w2.numel() else 1.0
    solved = _solve_blocks(h.shape, blocks, objective, h_scale, w_scale, tolerance, max_iterations)
    relative_kkt = math.sqrt(solved.squared_gradient) / solved.total if solved.total > 0 else 0.0
    scale = math.sqrt(h_scale * w_scale)
    total = solved.total
    return NormalizedSharpnessSolution(
        value=total * scale if objective == "arxiv" else math.sqrt(total) * scale,
        objective=objective,
        attained=attained,
        relative_kkt=relative_kkt,
        converged=relative_kkt <= tolerance,
        iterations=solved.iterations,
        hessian_products=solved.products,
        warm_start_sweeps=WARM_START_SWEEPS,
        blocks=len(blocks),
        pruned_rows=h.shape[0] - sum(len(block.rows) for block in blocks),
        pruned_columns=h.shape[1] - sum(len(block.columns) for block in blocks),
        row_log_scales=solved.row_logs.numpy() if objective == "arxiv" else None,
        column_log_scales=solved.column_logs.numpy(),
    )


@dataclass(frozen=True)
class _SolvedBlocks:
    """The blocks' solutions combined: ``F``'s sum and the log-scales of the unscaled layer."""

    total: float
    squared_gradient: float
    iterations: int
    products: int
    row_logs: Tensor
    column_logs: Tensor


def _solve_blocks(
    shape: tuple[int, ...],
    blocks: list[_Block],
    objective: NormalizedObjective,
    h_scale: float,
    w_scale: float,
    tolerance: float,
    max_iterations: int,
) -> _SolvedBlocks:
    """Solve each block of ``h / h_scale``, ``W² / w_scale``; sum F, ‖∇F‖², steps, products."""
    m, n = shape
    row_logs = torch.full((m,), math.nan, dtype=torch.float64)
    column_logs = torch.full((n,), math.nan, dtype=torch.float64)
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
    return _SolvedBlocks(total, squared_gradient, iterations, products, row_logs, column_logs)


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

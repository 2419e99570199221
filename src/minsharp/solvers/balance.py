"""Balancing solver for the full rescaling group's objective (theory §7).

Nodes are units (node 0 is the ground: the pinned units, log-scale fixed at 0); an edge e
from node j to node i with weight a_e ≥ 0 contributes ``a_e e^{−2(u_i − u_j)}``:

    F(u) = Σ_e a_e e^{−2(u_dst(e) − u_src(e))} = dᵀ A w,   d = e^{−2u}, w = e^{2u},

with A the sparse matrix of the a_e at (dst, src) (parallel edges summed). So every
evaluation is two sparse products with the fixed A and Aᵀ, not an exponential per edge.
``∂F/∂u_v = −2 (In_v − Out_v)`` with ``In = d ⊙ (A w)`` and ``Out = w ⊙ (Aᵀ d)`` the
rescaled weight entering and leaving each node, so the optimum is balance. Osborne's steps
``u_v += ¼ log(In_v / Out_v)`` (each the exact minimiser in u_v), taken at all nodes at
once under a line search, bring the imbalance down; then inexact Newton on the graph
Laplacian ∇²F (applied matrix-free, by conjugate gradients) with a backtracking line search
finishes to ``max_v |In_v − Out_v| / (In_v + Out_v) ≤ tolerance``.
Edges between strongly connected components (ground included) lie on no directed cycle and
can be driven to 0: the infimum is F over the edges inside components, not attained.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from minsharp.errors import MinsharpError

#: Default certificate to reach: the largest relative imbalance |In − Out| / (In + Out).
TOLERANCE: float = 1e-10
#: Osborne steps before Newton (they stop early once the imbalance is below 1e-2).
MAX_OSBORNE: int = 4
MAX_NEWTON: int = 100


@dataclass(frozen=True)
class Balance:
    """Result of :func:`balance`."""

    value: float
    """``inf_u F(u)`` (F over the edges inside strongly connected components)."""
    max_relative_imbalance: float
    osborne_steps: int
    newton_steps: int
    attained: bool
    """False when some edge with a_e > 0 lies on no directed cycle."""
    cut_edges: np.ndarray
    """Indices of the edges that can be driven to 0 (empty when attained)."""
    log_scales: np.ndarray
    """u per node (u_0 = 0), a minimiser of the restricted objective."""


def balance(
    num_nodes: int,
    dst: np.ndarray,
    src: np.ndarray,
    weight: np.ndarray,
    *,
    tolerance: float = TOLERANCE,
) -> Balance:
    """``inf_u Σ_e a_e e^{−2(u_dst − u_src)}`` with u_0 = 0, by Osborne steps then Newton.

    Balancing of a non-negative matrix (Osborne 1960; Kalantari, Khachiyan & Shokoufandeh
    1997), applied to the rescaled-trace objective of theory §7. ``dst``/``src`` are node
    indices (no self-loops; parallel edges are summed), ``weight`` the a_e ≥ 0.

    Example:
        >>> import numpy as np
        >>> # ground → 1 (weight 1), 1 → ground (weight 4): min 1·e^{−2u} + 4·e^{2u} = 4
        >>> result = balance(2, np.array([1, 0]), np.array([0, 1]), np.array([1.0, 4.0]))
        >>> round(result.value, 12), result.attained
        (4.0, True)
    """
    positive = weight > 0
    kept = None if positive.all() else np.flatnonzero(positive)
    if kept is not None:
        dst, src, weight = dst[kept], src[kept], weight[kept]
    edges = _Edges.of(num_nodes, dst, src, weight)
    labels = _strong_components(edges)
    cut = np.zeros(0, dtype=np.int64)
    if labels is not None:
        inside = labels[dst] == labels[src]
        cut = np.flatnonzero(~inside) if kept is None else kept[~inside]
        if cut.size:
            edges = _Edges.of(num_nodes, dst[inside], src[inside], weight[inside])
    free = _free_nodes(edges, labels)
    u = np.zeros(num_nodes)
    osborne_steps = _osborne(u, free, edges)
    steps = _newton(u, free, edges, tolerance)
    incoming, outgoing = edges.in_out(u)
    value = float(incoming.sum())
    if not np.isfinite(value):
        raise MinsharpError(
            "minsharp.solvers.balance: the balancing scales overflowed float64 (log-scales "
            f"up to {np.abs(u).max():.3g}); the edge weights span more than float64's range."
        )
    return Balance(
        value=value,
        log_scales=u,
        attained=cut.size == 0,
        cut_edges=cut,
        max_relative_imbalance=_imbalance(incoming, outgoing, free),
        osborne_steps=osborne_steps,
        newton_steps=steps,
    )


@dataclass(frozen=True)
class _Edges:
    """The kept edges, and A (a_e at (dst, src), CSR) with Aᵀ (its CSC view, no copy)."""

    dst: np.ndarray
    src: np.ndarray
    matrix: sp.csr_matrix
    transpose: sp.csc_matrix

    @classmethod
    def of(cls, num_nodes: int, dst: np.ndarray, src: np.ndarray, weight: np.ndarray) -> _Edges:
        """The edges ``src → dst`` with weights ``weight`` (parallel edges add up in A)."""
        matrix = _csr(num_nodes, dst, src, weight)
        return cls(dst, src, matrix, matrix.T)

    @functools.cached_property
    def touched(self) -> np.ndarray:
        """Whether each node has a kept edge, either direction."""
        num_nodes = self.matrix.shape[0]
        return (np.diff(self.matrix.indptr) > 0) | (np.bincount(self.src, minlength=num_nodes) > 0)

    def in_out(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rescaled weight entering and leaving each node: ``d ⊙ (A w)``, ``w ⊙ (Aᵀ d)``."""
        down, up = _factors(u)
        with np.errstate(over="ignore", invalid="ignore"):
            return down * (self.matrix @ up), up * (self.transpose @ down)

    def value(self, u: np.ndarray) -> float:
        """``F(u) = dᵀ A w`` (inf or nan when the scales overflow)."""
        down, up = _factors(u)
        with np.errstate(over="ignore", invalid="ignore"):
            return float(down @ (self.matrix @ up))


def _csr(num_nodes: int, row: np.ndarray, column: np.ndarray, weight: np.ndarray) -> sp.csr_matrix:
    """CSR of ``weight`` at (row, column), entries in each row kept in input order.

    A stable sort on the row alone is enough for products and graph searches (repeated or
    unsorted columns within a row are allowed there); scipy's canonical form would also
    sort every row's columns, several times the cost for the ~10⁵ edges of a hidden layer
    (the edges arrive parameter by parameter, row-major, so the stable sort is nearly free).
    """
    order = np.argsort(row, kind="stable")
    pointers = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=num_nodes), out=pointers[1:])
    return sp.csr_matrix((weight[order], column[order], pointers), shape=(num_nodes, num_nodes))


def _factors(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``e^{−2u}`` and ``e^{2u}``, one exponential per node."""
    with np.errstate(over="ignore"):
        down = np.exp(-2.0 * u)
    return down, 1.0 / down


def _strong_components(edges: _Edges) -> np.ndarray | None:
    """Strongly connected component of every node, or None when there is one (with ground).

    The common case, every touched node on a cycle through the ground, is settled by two
    breadth-first searches done as sparse products; otherwise scipy's search runs on a
    copy of A with parallel edges merged (it mislabels graphs with repeated entries).
    """
    touched = edges.touched.copy()
    touched[0] = True
    if np.array_equal(_reached_from_ground(edges.matrix), touched) and np.array_equal(
        _reached_from_ground(edges.transpose), touched
    ):
        return None
    merged = edges.matrix.copy()
    merged.sum_duplicates()
    return connected_components(merged, directed=True, connection="strong")[1]


def _reached_from_ground(matrix: sp.spmatrix) -> np.ndarray:
    """Nodes reached from node 0 along the edges of ``matrix`` (an edge j → i at (i, j))."""
    reached = np.zeros(matrix.shape[0], dtype=bool)
    reached[0] = True
    frontier = reached.astype(float)
    while True:
        new = (matrix @ frontier > 0) & ~reached
        if not new.any():
            return reached
        reached |= new
        frontier = new.astype(float)


def _free_nodes(edges: _Edges, labels: np.ndarray | None) -> np.ndarray:
    """Nodes that are variables: not ground, not alone, not their component's anchor.

    ``labels`` None: one strongly connected component, ground included.
    """
    touched = np.flatnonzero(edges.touched)
    if labels is None:
        return touched[touched != 0]
    # The first touched node of each component without ground anchors it at u = 0.
    _, first = np.unique(labels[touched], return_index=True)
    anchors = touched[first]
    fixed = np.concatenate([[0], anchors[labels[anchors] != labels[0]]])
    return np.setdiff1d(touched, fixed, assume_unique=True)


def _imbalance(incoming: np.ndarray, outgoing: np.ndarray, free: np.ndarray) -> float:
    """``max_free |in − out| / (in + out)``, 0 without free nodes."""
    if free.size == 0:
        return 0.0
    total = (incoming + outgoing)[free]
    return float(np.max(np.abs(incoming - outgoing)[free] / np.where(total > 0, total, 1.0)))


def _osborne(u: np.ndarray, free: np.ndarray, edges: _Edges) -> int:
    """Osborne steps at every free node at once, each damped by a backtracking line search.

    ``δ_v = ¼ log(In_v / Out_v)`` minimises F exactly in u_v alone; taken together they
    need not, but δ has the sign of −∇F, so a line search makes every step a descent. Far
    from balance these log-space steps fix the scales' orders of magnitude that Newton's
    quadratic model gets wrong.
    """
    for taken in range(MAX_OSBORNE):
        incoming, outgoing = edges.in_out(u)
        if free.size == 0 or _imbalance(incoming, outgoing, free) < 1e-2:
            return taken
        step = 0.25 * np.log(incoming[free] / outgoing[free])
        _line_search(
            u, free, edges, step, float(incoming.sum()), -2.0 * (incoming - outgoing)[free]
        )
    return MAX_OSBORNE


def _line_search(
    u: np.ndarray,
    free: np.ndarray,
    edges: _Edges,
    direction: np.ndarray,
    value: float,
    gradient: np.ndarray,
) -> None:
    """``u[free] += t · direction`` with the first t = 1, ½, ¼, … that decreases F enough."""
    # Near the optimum F's decrease falls below its rounding: allow a few ulps of F.
    slack = 8 * np.finfo(float).eps * value
    slope = 1e-4 * float(gradient @ direction)
    t = 1.0
    trial = u.copy()
    while t > 1e-12:
        trial[free] = u[free] + t * direction
        if edges.value(trial) <= value + t * slope + slack:
            break
        t *= 0.5
    u[free] = trial[free]


def _newton(u: np.ndarray, free: np.ndarray, edges: _Edges, tolerance: float) -> int:
    for step in range(MAX_NEWTON):
        incoming, outgoing = edges.in_out(u)
        imbalance = _imbalance(incoming, outgoing, free)
        if free.size == 0 or imbalance <= tolerance:
            return step
        gradient = (-2.0 * (incoming - outgoing))[free]
        # Inexact Newton: a residual ≤ min(0.1, imbalance) × ‖∇F‖ keeps the convergence
        # superlinear (Eisenstat & Walker 1996) with far fewer CG products early on.
        direction = _newton_direction(
            u, free, edges, incoming + outgoing, -gradient, min(0.1, imbalance)
        )
        _line_search(u, free, edges, direction, float(incoming.sum()), gradient)
    return MAX_NEWTON


def _newton_direction(
    u: np.ndarray,
    free: np.ndarray,
    edges: _Edges,
    touching: np.ndarray,
    right: np.ndarray,
    rtol: float,
) -> np.ndarray:
    """``(∇²F)⁻¹ right`` on the free nodes, by Jacobi-preconditioned conjugate gradients.

    ``∇²F = 4 (diag(In + Out) − R − Rᵀ)`` with ``R = diag(d) A diag(w)`` the rescaled
    weights, applied as products with A and Aᵀ (the non-free nodes held at 0). CG stops at
    a residual of ``rtol ‖right‖`` (or after 10 × free-node count products).
    """
    down, up = _factors(u)
    diagonal = 4.0 * touching[free]
    full = np.zeros(u.size)

    def hessian_times(x: np.ndarray) -> np.ndarray:
        full[free] = x
        pulled = down * (edges.matrix @ (up * full)) + up * (edges.transpose @ (down * full))
        return diagonal * x - 4.0 * pulled[free]

    solution = np.zeros(free.size)
    residual = right.copy()
    preconditioned = residual / diagonal
    direction = preconditioned.copy()
    product = residual @ preconditioned
    stop = rtol * np.linalg.norm(right)
    for _ in range(10 * free.size):
        if np.linalg.norm(residual) <= stop:
            break
        curved = hessian_times(direction)
        step = product / (direction @ curved)
        solution += step * direction
        residual -= step * curved
        preconditioned = residual / diagonal
        product, previous = residual @ preconditioned, product
        direction = preconditioned + (product / previous) * direction
    return solution

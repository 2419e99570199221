"""Balancing solver for the full rescaling group's objective (theory §7).

Nodes are units (node 0 is the ground: the pinned units, log-scale fixed at 0); an edge e
from node j to node i with weight a_e ≥ 0 contributes ``a_e e^{−2(u_i − u_j)}``:

    F(u) = Σ_e a_e e^{−2(u_dst(e) − u_src(e))} = dᵀ A w,   d = e^{−2u}, w = e^{2u},

with A the sparse matrix of the a_e at (dst, src) (parallel edges summed). So every
evaluation is two sparse products with the fixed A and Aᵀ, not an exponential per edge.
``∂F/∂u_v = −2 (In_v − Out_v)`` with ``In = d ⊙ (A w)`` and ``Out = w ⊙ (Aᵀ d)`` the
rescaled weight entering and leaving each node, so the optimum is balance. Osborne sweeps
``u_v += ¼ log(In_v / Out_v)`` (exact coordinate minimisation; units of one colour class
share no edge, so a class is updated at once) bring the imbalance down, then Newton's method
on the graph Laplacian ∇²F (applied matrix-free, by conjugate gradients) with a
backtracking line search finishes to ``max_v |In_v − Out_v| / (In_v + Out_v) ≤ tolerance``.
Edges between strongly connected components (ground included) lie on no directed cycle and
can be driven to 0: the infimum is F over the edges inside components, not attained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, connected_components
from scipy.sparse.linalg import LinearOperator, cg

from minsharp.errors import MinsharpError

#: Default certificate to reach: the largest relative imbalance |In − Out| / (In + Out).
TOLERANCE: float = 1e-10
#: Osborne sweeps before Newton (they stop early once the imbalance is below 1e-2).
MAX_SWEEPS: int = 5
MAX_NEWTON: int = 100


@dataclass(frozen=True)
class Balance:
    """Result of :func:`balance`."""

    value: float
    """``inf_u F(u)`` (F over the edges inside strongly connected components)."""
    max_relative_imbalance: float
    sweeps: int
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
    """``inf_u Σ_e a_e e^{−2(u_dst − u_src)}`` with u_0 = 0, by Osborne sweeps then Newton.

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
    kept = np.flatnonzero(weight > 0)
    edges = _Edges.of(num_nodes, dst[kept], src[kept], weight[kept])
    labels = connected_components(edges.matrix, directed=True, connection="strong")[1]
    inside = labels[dst[kept]] == labels[src[kept]]
    cut = kept[~inside]
    if cut.size:
        kept = kept[inside]
        edges = _Edges.of(num_nodes, dst[kept], src[kept], weight[kept])
    free = _free_nodes(edges.matrix, labels)
    u = np.zeros(num_nodes)
    sweeps = _osborne(u, free, edges)
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
        sweeps=sweeps,
        newton_steps=steps,
    )


@dataclass(frozen=True)
class _Edges:
    """The kept edges as the matrix A (a_e at (dst, src)) and its transpose, both CSR."""

    matrix: sp.csr_matrix
    transpose: sp.csr_matrix

    @classmethod
    def of(cls, num_nodes: int, dst: np.ndarray, src: np.ndarray, weight: np.ndarray) -> _Edges:
        """The matrix of edges ``src → dst`` with weights ``weight``, parallel edges summed."""
        matrix = sp.csr_matrix((weight, (dst, src)), shape=(num_nodes, num_nodes))
        return cls(matrix, matrix.T.tocsr())

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


def _factors(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``e^{−2u}`` and ``e^{2u}``, one exponential per node."""
    with np.errstate(over="ignore"):
        down = np.exp(-2.0 * u)
    return down, 1.0 / down


def _free_nodes(matrix: sp.csr_matrix, labels: np.ndarray) -> np.ndarray:
    """Nodes that are variables: not ground, not alone, not their component's anchor."""
    touched = (np.diff(matrix.indptr) > 0) | (
        np.bincount(matrix.indices, minlength=matrix.shape[0]) > 0
    )
    free = touched.copy()
    free[0] = False
    anchored = {int(labels[0])}
    for node in np.flatnonzero(touched):  # one anchor per component without ground
        if labels[node] not in anchored:
            anchored.add(int(labels[node]))
            free[node] = False
    return np.flatnonzero(free)


def _imbalance(incoming: np.ndarray, outgoing: np.ndarray, free: np.ndarray) -> float:
    """``max_free |in − out| / (in + out)``, 0 without free nodes."""
    if free.size == 0:
        return 0.0
    total = (incoming + outgoing)[free]
    return float(np.max(np.abs(incoming - outgoing)[free] / np.where(total > 0, total, 1.0)))


def _colour_classes(free: np.ndarray, edges: _Edges) -> list[np.ndarray]:
    """Classes of free nodes sharing no edge, so that their Osborne steps commute.

    Two classes by breadth-first parity when the free nodes' graph is bipartite (a chain's
    layers alternate), else a greedy colouring.
    """
    graph = (edges.matrix + edges.transpose)[free][:, free].tocsr()
    parity = _bipartite_parity(graph)
    if parity is not None:
        return [free[parity == side] for side in (0, 1) if np.any(parity == side)]
    colour = np.full(free.size, -1)
    for node in range(free.size):
        used = set(colour[graph.indices[graph.indptr[node] : graph.indptr[node + 1]]].tolist())
        colour[node] = next(c for c in range(len(used) + 1) if c not in used)
    return [free[colour == c] for c in range(colour.max() + 1)]


def _bipartite_parity(graph: sp.csr_matrix) -> np.ndarray | None:
    """Breadth-first depth parity per node of an undirected graph; None if it is not bipartite."""
    parity = np.full(graph.shape[0], -1)
    for root in range(graph.shape[0]):
        if parity[root] >= 0:
            continue
        order, parents = breadth_first_order(graph, root, directed=False)
        parity[root] = 0
        for node in order[1:].tolist():
            parity[node] = 1 - parity[parents[node]]
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    if np.any(parity[rows] == parity[graph.indices]):
        return None
    return parity


def _osborne(u: np.ndarray, free: np.ndarray, edges: _Edges) -> int:
    if free.size == 0:
        return 0
    classes = _colour_classes(free, edges)
    for sweep in range(1, MAX_SWEEPS + 1):
        for nodes in classes:
            incoming, outgoing = edges.in_out(u)
            u[nodes] += 0.25 * np.log(incoming[nodes] / outgoing[nodes])
        if _imbalance(*edges.in_out(u), free) < 1e-2:
            return sweep
    return MAX_SWEEPS


def _newton(u: np.ndarray, free: np.ndarray, edges: _Edges, tolerance: float) -> int:
    for step in range(MAX_NEWTON):
        incoming, outgoing = edges.in_out(u)
        if free.size == 0 or _imbalance(incoming, outgoing, free) <= tolerance:
            return step
        gradient = (-2.0 * (incoming - outgoing))[free]
        direction = _newton_direction(u, free, edges, incoming + outgoing, -gradient)
        value, t = float(incoming.sum()), 1.0
        # Near the optimum F's decrease falls below its rounding: allow a few ulps of F.
        slack = 8 * np.finfo(float).eps * value
        while t > 1e-12:
            trial = u.copy()
            trial[free] += t * direction
            if edges.value(trial) <= value + 1e-4 * t * gradient @ direction + slack:
                break
            t *= 0.5
        u[free] = trial[free]
    return MAX_NEWTON


def _newton_direction(
    u: np.ndarray, free: np.ndarray, edges: _Edges, touching: np.ndarray, right: np.ndarray
) -> np.ndarray:
    """``(∇²F)⁻¹ right`` on the free nodes, by Jacobi-preconditioned conjugate gradients.

    ``∇²F = 4 (diag(In + Out) − R − Rᵀ)`` with ``R = diag(d) A diag(w)`` the rescaled
    weights, applied as products with A and Aᵀ (the non-free nodes held at 0).
    """
    down, up = _factors(u)
    diagonal = 4.0 * touching[free]
    full = np.zeros(u.size)

    def times(x: np.ndarray) -> np.ndarray:
        full[free] = x
        pulled = down * (edges.matrix @ (up * full)) + up * (edges.transpose @ (down * full))
        return diagonal * x - 4.0 * pulled[free]

    size = (free.size,) * 2
    operator = LinearOperator(size, matvec=times)
    preconditioner = LinearOperator(size, matvec=lambda x: x / diagonal)
    solution, _ = cg(
        operator, right, rtol=1e-13, atol=0.0, M=preconditioner, maxiter=10 * free.size
    )
    return solution

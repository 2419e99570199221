"""Balancing solver for the full rescaling group's objective (theory §7).

Nodes are units (node 0 is the ground: the pinned units, log-scale fixed at 0); an edge e
from node j to node i with weight a_e ≥ 0 contributes ``a_e e^{−2(u_i − u_j)}``:

    F(u) = Σ_e a_e e^{−2(u_dst(e) − u_src(e))}.

``∂F/∂u_v = −2 (In_v − Out_v)`` with In_v (Out_v) the rescaled weight on the edges into (out
of) v, so the optimum is balance. Osborne sweeps ``u_v += ¼ log(In_v / Out_v)`` (exact
coordinate minimisation; units of one colour class share no edge, so a class is updated at
once) bring the imbalance down, then Newton's method on the sparse graph Laplacian ∇²F with a
backtracking line search finishes to ``max_v |In_v − Out_v| / (In_v + Out_v) ≤ tolerance``.
Edges between strongly connected components (ground included) lie on no directed cycle and
can be driven to 0: the infimum is F over the edges inside components, not attained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import LinearOperator, cg

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
    indices (no self-loops), ``weight`` the a_e ≥ 0.

    Example:
        >>> import numpy as np
        >>> # ground → 1 (weight 1), 1 → ground (weight 4): min 1·e^{−2u} + 4·e^{2u} = 4
        >>> result = balance(2, np.array([1, 0]), np.array([0, 1]), np.array([1.0, 4.0]))
        >>> round(result.value, 12), result.attained
        (4.0, True)
    """
    keep = weight > 0
    dst, src, weight = dst[keep], src[keep], weight[keep]
    labels = _strong_components(num_nodes, dst, src)
    inside = labels[dst] == labels[src]
    cut = np.flatnonzero(keep)[~inside]
    dst, src, weight = dst[inside], src[inside], weight[inside]
    free = _free_nodes(num_nodes, labels, dst, src)
    edges = _Edges(num_nodes, dst, src, weight)
    u = np.zeros(num_nodes)
    sweeps = _osborne(u, free, edges)
    steps = _newton(u, free, edges, tolerance)
    rescaled = edges.rescaled(u)
    return Balance(
        value=float(rescaled.sum()),
        log_scales=u,
        attained=cut.size == 0,
        cut_edges=cut,
        max_relative_imbalance=_imbalance(*edges.in_out(rescaled), free),
        sweeps=sweeps,
        newton_steps=steps,
    )


def _strong_components(num_nodes: int, dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    graph = sp.coo_matrix((np.ones(dst.size), (src, dst)), shape=(num_nodes, num_nodes))
    return connected_components(graph.tocsr(), directed=True, connection="strong")[1]


def _free_nodes(num_nodes: int, labels: np.ndarray, dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Nodes that are variables: not ground, not alone, not their component's anchor."""
    touched = np.zeros(num_nodes, dtype=bool)
    touched[dst] = touched[src] = True
    free = touched.copy()
    free[0] = False
    anchored = {int(labels[0])}
    for node in np.flatnonzero(touched):  # one anchor per component without ground
        if labels[node] not in anchored:
            anchored.add(int(labels[node]))
            free[node] = False
    return np.flatnonzero(free)


@dataclass(frozen=True)
class _Edges:
    """The kept edges ``src → dst`` with weights ``a_e`` on ``num_nodes`` nodes."""

    num_nodes: int
    dst: np.ndarray
    src: np.ndarray
    weight: np.ndarray

    def rescaled(self, u: np.ndarray) -> np.ndarray:
        """``a_e e^{−2(u_dst − u_src)}`` per edge."""
        with np.errstate(over="ignore"):
            return self.weight * np.exp(-2.0 * (u[self.dst] - u[self.src]))

    def in_out(self, rescaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rescaled weight entering and leaving each node, from :meth:`rescaled`."""
        return (
            np.bincount(self.dst, rescaled, minlength=self.num_nodes),
            np.bincount(self.src, rescaled, minlength=self.num_nodes),
        )


def _imbalance(incoming: np.ndarray, outgoing: np.ndarray, free: np.ndarray) -> float:
    """``max_free |in − out| / (in + out)``, 0 without free nodes."""
    if free.size == 0:
        return 0.0
    total = (incoming + outgoing)[free]
    return float(np.max(np.abs(incoming - outgoing)[free] / np.where(total > 0, total, 1.0)))


def _colour_classes(
    free: np.ndarray, dst: np.ndarray, src: np.ndarray, num_nodes: int
) -> list[np.ndarray]:
    """Greedy colouring: nodes of one class share no edge, so their Osborne steps commute."""
    graph = sp.coo_matrix((np.ones(dst.size), (dst, src)), shape=(num_nodes, num_nodes))
    graph = (graph + graph.T).tocsr()
    colour = np.full(num_nodes, -1)
    for node in free:
        used = set(colour[graph.indices[graph.indptr[node] : graph.indptr[node + 1]]].tolist())
        colour[node] = next(c for c in range(len(used) + 1) if c not in used)
    return [np.flatnonzero(colour == c) for c in range(colour.max() + 1)]


def _osborne(u: np.ndarray, free: np.ndarray, edges: _Edges) -> int:
    if free.size == 0:
        return 0
    classes = _colour_classes(free, edges.dst, edges.src, edges.num_nodes)
    incoming, outgoing = edges.in_out(edges.rescaled(u))
    for sweep in range(1, MAX_SWEEPS + 1):
        for nodes in classes:
            u[nodes] += 0.25 * np.log(incoming[nodes] / outgoing[nodes])
            incoming, outgoing = edges.in_out(edges.rescaled(u))
        if _imbalance(incoming, outgoing, free) < 1e-2:
            return sweep
    return MAX_SWEEPS


def _newton(u: np.ndarray, free: np.ndarray, edges: _Edges, tolerance: float) -> int:
    position = np.full(edges.num_nodes, -1)
    position[free] = np.arange(free.size)
    laplacian = _Laplacian.of(position[edges.dst], position[edges.src], free.size)
    rescaled = edges.rescaled(u)
    for step in range(MAX_NEWTON):
        incoming, outgoing = edges.in_out(rescaled)
        if free.size == 0 or _imbalance(incoming, outgoing, free) <= tolerance:
            return step
        gradient = (-2.0 * (incoming - outgoing))[free]
        direction = laplacian.solve(4.0 * rescaled, -gradient)
        value, t = rescaled.sum(), 1.0
        # Near the optimum F's decrease falls below its rounding: allow a few ulps of F.
        slack = 8 * np.finfo(float).eps * value
        while t > 1e-12:
            trial = u.copy()
            trial[free] += t * direction
            rescaled = edges.rescaled(trial)
            if rescaled.sum() <= value + 1e-4 * t * gradient @ direction + slack:
                break
            t *= 0.5
        u[free] = trial[free]
    return MAX_NEWTON


@dataclass(frozen=True)
class _Laplacian:
    """∇²F on the free nodes, ``diag(d) − A − Aᵀ``, its sparsity fixed once.

    An edge of weight w adds ``w`` to ``d`` at each free endpoint and ``w`` to ``A`` at
    (dst, src) when both ends are free. ``A`` keeps its CSR structure across Newton steps;
    each step only gathers the new weights into it, and conjugate gradients use ``A`` and
    its transpose (a view) without forming ``A + Aᵀ``.
    """

    size: int
    dst_edges: np.ndarray
    """Edges whose dst is free, and the free position of that dst."""
    dst_position: np.ndarray
    src_edges: np.ndarray
    src_position: np.ndarray
    inner_edges: np.ndarray
    """Edges with both ends free, in the row-major order of ``A``'s entries."""
    columns: np.ndarray
    row_starts: np.ndarray

    @classmethod
    def of(cls, i: np.ndarray, j: np.ndarray, size: int) -> _Laplacian:
        """The operator's structure for edges from free position ``j`` to ``i`` (−1: not free)."""
        dst_edges, src_edges = np.flatnonzero(i >= 0), np.flatnonzero(j >= 0)
        inner = np.flatnonzero((i >= 0) & (j >= 0))
        inner = inner[np.argsort(i[inner], kind="stable")]
        counts = np.bincount(i[inner], minlength=size)
        return cls(
            size=size,
            dst_edges=dst_edges,
            dst_position=i[dst_edges],
            src_edges=src_edges,
            src_position=j[src_edges],
            inner_edges=inner,
            columns=j[inner],
            row_starts=np.concatenate([[0], np.cumsum(counts)]),
        )

    def solve(self, weight: np.ndarray, right: np.ndarray) -> np.ndarray:
        """``(∇²F)⁻¹ right`` for edge weights ``weight``, by Jacobi-preconditioned CG."""
        diagonal = np.bincount(
            self.dst_position, weight[self.dst_edges], minlength=self.size
        ) + np.bincount(self.src_position, weight[self.src_edges], minlength=self.size)
        adjacency = sp.csr_matrix(
            (weight[self.inner_edges], self.columns, self.row_starts), shape=(self.size,) * 2
        )
        transpose = adjacency.T

        def times(v: np.ndarray) -> np.ndarray:
            return diagonal * v - adjacency @ v - transpose @ v

        operator = LinearOperator((self.size,) * 2, matvec=times)
        preconditioner = LinearOperator((self.size,) * 2, matvec=lambda v: v / diagonal)
        solution, _ = cg(
            operator, right, rtol=1e-13, atol=0.0, M=preconditioner, maxiter=10 * self.size
        )
        return solution


#: Largest key range grouped with a dense table (32 MiB of int64); beyond it, by sorting.
DENSE_KEYS = 1 << 22


def unique_keys(keys: np.ndarray, key_range: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``keys`` (in ``[0, key_range)``), sorted, and each key's index among them.

    ``np.unique(keys, return_inverse=True)``, without sorting when the range is small.
    """
    if key_range > DENSE_KEYS:
        return np.unique(keys, return_inverse=True)
    present = np.zeros(key_range, dtype=bool)
    present[keys] = True
    rank = np.cumsum(present) - 1
    return np.flatnonzero(present), rank[keys]

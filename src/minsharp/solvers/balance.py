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
    return Balance(
        value=float(edges.rescaled(u).sum()),
        log_scales=u,
        attained=cut.size == 0,
        cut_edges=cut,
        max_relative_imbalance=edges.imbalance(u, free),
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

    def in_out(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rescaled weight entering and leaving each node."""
        rescaled = self.rescaled(u)
        return (
            np.bincount(self.dst, rescaled, minlength=self.num_nodes),
            np.bincount(self.src, rescaled, minlength=self.num_nodes),
        )

    def imbalance(self, u: np.ndarray, free: np.ndarray) -> float:
        """``max_free |in − out| / (in + out)``, 0 without free nodes."""
        incoming, outgoing = self.in_out(u)
        total = (incoming + outgoing)[free]
        if free.size == 0:
            return 0.0
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
    for sweep in range(1, MAX_SWEEPS + 1):
        for nodes in classes:
            incoming, outgoing = edges.in_out(u)
            u[nodes] += 0.25 * np.log(incoming[nodes] / outgoing[nodes])
        if edges.imbalance(u, free) < 1e-2:
            return sweep
    return MAX_SWEEPS


def _newton(u: np.ndarray, free: np.ndarray, edges: _Edges, tolerance: float) -> int:
    position = np.full(edges.num_nodes, -1)
    position[free] = np.arange(free.size)
    for step in range(MAX_NEWTON):
        if free.size == 0 or edges.imbalance(u, free) <= tolerance:
            return step
        rescaled = edges.rescaled(u)
        incoming, outgoing = edges.in_out(u)
        gradient = (-2.0 * (incoming - outgoing))[free]
        hessian = _laplacian(position, edges.dst, edges.src, 4.0 * rescaled, free.size)
        direction = _newton_direction(hessian, gradient)
        value, t = rescaled.sum(), 1.0
        while t > 1e-12:
            trial = u.copy()
            trial[free] += t * direction
            if edges.rescaled(trial).sum() <= value + 1e-4 * t * gradient @ direction:
                break
            t *= 0.5
        u[free] = trial[free]
    return MAX_NEWTON


def _laplacian(
    position: np.ndarray, dst: np.ndarray, src: np.ndarray, weight: np.ndarray, size: int
) -> sp.csc_matrix:
    """∇²F restricted to the free nodes: the weighted graph Laplacian of the edges."""
    i, j = position[dst], position[src]
    rows = [i, j, i, j]
    cols = [i, j, j, i]
    values = [weight, weight, -weight, -weight]
    mask = [(i >= 0), (j >= 0), (i >= 0) & (j >= 0), (i >= 0) & (j >= 0)]
    r = np.concatenate([a[m] for a, m in zip(rows, mask, strict=True)])
    c = np.concatenate([a[m] for a, m in zip(cols, mask, strict=True)])
    v = np.concatenate([a[m] for a, m in zip(values, mask, strict=True)])
    return sp.csc_matrix((v, (r, c)), shape=(size, size))


def _newton_direction(hessian: sp.csc_matrix, gradient: np.ndarray) -> np.ndarray:
    """``−∇²F⁻¹ ∇F`` by Jacobi-preconditioned conjugate gradients (sparse, no fill-in)."""
    inverse_diagonal = 1.0 / hessian.diagonal()
    preconditioner = LinearOperator(hessian.shape, matvec=lambda v: inverse_diagonal * v)
    direction, _ = cg(
        hessian.tocsr(),
        -gradient,
        rtol=1e-13,
        atol=0.0,
        M=preconditioner,
        maxiter=10 * gradient.size,
    )
    return direction

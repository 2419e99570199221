"""Acting with the full rescaling group (theory §7): on parameters, and on their curvature.

A group element with log-scales u multiplies each parameter entry by ``e^{c_p(u)}``,
``c_p(u) = u_dst − u_src``; its exact Hessian (or GGN) diagonal entry moves as
``h_p → h_p e^{−2 c_p(u)}``. So the rescaled trace is
``Σ_edges a_e e^{−2(u_dst − u_src)} + constant`` with a_e the diagonal summed over the
parameter entries on edge e (:func:`edge_weights`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from minsharp.errors import NotAChainError
from minsharp.symmetry.graph import SymmetryGroup


@dataclass(frozen=True)
class EdgeWeights:
    """The objective's edges between tie classes (node 0: ground), and what never moves."""

    num_nodes: int
    dst: np.ndarray
    src: np.ndarray
    weight: np.ndarray
    owner: np.ndarray
    """Index into ``parameters`` of the parameter each edge's entries belong to."""
    parameters: tuple[str, ...]
    fixed: dict[str, float]
    """Per parameter, the diagonal mass on no edge (between units of one tie class, or a
    parameter outside the group)."""
    node_of: np.ndarray
    """Unit id → node index."""

    @property
    def constant(self) -> float:
        """Diagonal mass no group element moves."""
        return sum(self.fixed.values())

    def traces_at(self, node_scales: np.ndarray) -> dict[str, float]:
        """Each parameter's trace at log-scales u per node (fixed mass + moved edges).

        The moved part is ``Σ_e a_e e^{−2(u_dst − u_src)}`` over the parameter's edges.
        """
        down = np.exp(-2.0 * node_scales)
        moved = self.weight * down[self.dst] / down[self.src]
        sums = np.bincount(self.owner, moved, minlength=len(self.parameters))
        traces = dict(self.fixed)
        for name, total in zip(self.parameters, sums.tolist(), strict=True):
            traces[name] = traces.get(name, 0.0) + total
        return traces


def edge_weights(group: SymmetryGroup, diagonal: Mapping[str, Tensor]) -> EdgeWeights:
    """``a_e = Σ_{p on e} h_p`` per edge between tie classes, from a per-parameter diagonal.

    Entries along an axis on which both ends stay in one tie class (a first layer's inputs,
    all ground; a kernel's positions) are summed before the edges are listed; the edges that
    remain may repeat a (dst, src) pair, which the solver sums.
    """
    representatives = group.representatives()
    classes, node_of = np.unique(representatives, return_inverse=True)  # ground (0) first
    parameters = tuple(name for name in diagonal if name in group.edges)
    fixed = {
        name: float(entries.detach().double().sum())
        for name, entries in diagonal.items()
        if name not in group.edges
    }
    dsts, srcs, masses, owners = [], [], [], []
    for index, name in enumerate(parameters):
        dst, src, mass = _parameter_edges(diagonal[name].detach(), *group.edges[name], node_of)
        loop = dst == src
        fixed[name] = 0.0
        if loop.any():
            fixed[name] = float(mass[loop].sum())
            dst, src, mass = dst[~loop], src[~loop], mass[~loop]
        dsts.append(dst)
        srcs.append(src)
        masses.append(mass)
        owners.append(np.full(dst.size, index))
    empty = np.zeros(0, dtype=np.int64)
    return EdgeWeights(
        num_nodes=classes.size,
        dst=np.concatenate([empty, *dsts]),
        src=np.concatenate([empty, *srcs]),
        weight=np.concatenate([np.zeros(0), *masses]),
        owner=np.concatenate([empty, *owners]),
        parameters=parameters,
        fixed=fixed,
        node_of=node_of,
    )


def _parameter_edges(
    h: Tensor, dst_units: np.ndarray, src_units: np.ndarray, node_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dst node, src node, mass) for each entry of ``h``, after summing constant axes."""
    # Unit arrays broadcast against h as numpy does; padded to h's rank to walk its axes.
    dst, src = (
        np.reshape(node_of[units], (1,) * (h.ndim - units.ndim) + units.shape)
        for units in (dst_units, src_units)
    )
    summed = [
        axis for axis in range(h.ndim) if _constant_along(dst, axis) and _constant_along(src, axis)
    ]
    if summed:
        h = h.sum(dim=summed, keepdim=True, dtype=torch.float64)
        dst, src = (_first_along(nodes, summed) for nodes in (dst, src))
    return (
        np.broadcast_to(dst, h.shape).ravel(),
        np.broadcast_to(src, h.shape).ravel(),
        h.to("cpu", torch.float64).numpy().ravel(),
    )


def _constant_along(nodes: np.ndarray, axis: int) -> bool:
    """Whether ``nodes`` holds one value along ``axis`` (trivially so when broadcast there)."""
    return nodes.shape[axis] == 1 or bool(np.all(nodes == nodes.take([0], axis=axis)))


def _first_along(nodes: np.ndarray, axes: list[int]) -> np.ndarray:
    """``nodes`` with each of ``axes`` cut to its first index (kept as length 1)."""
    for axis in axes:
        nodes = nodes.take([0], axis=axis)
    return nodes


def rescaled_copy(model: nn.Module, group: SymmetryGroup, log_scales: np.ndarray) -> nn.Module:
    """A deep copy of ``model`` with each edge parameter times ``e^{u[dst] − u[src]}``.

    ``log_scales`` holds one u per unit id (ground and pinned units 0; tied units equal).
    """
    twin = copy.deepcopy(model)
    parameters = dict(twin.named_parameters())
    with torch.no_grad():
        for name, (dst, src) in group.edges.items():
            parameter = parameters[name]
            # e^{u_dst − u_src} as two broadcast factors: no exponential per entry.
            for units, sign in ((dst, 1.0), (src, -1.0)):
                factor = torch.from_numpy(np.exp(sign * log_scales[units]))
                parameter.mul_(factor.to(parameter.device, parameter.dtype))
    return twin


def verify_same_function(original: nn.Module, twin: nn.Module, probe: Tensor) -> float:
    """Relative logit gap ``max|f_twin − f| / max|f|`` on ``probe``; raises when it is large.

    The tolerance is 1e-10 in float64 and 1e-4 in lower precision (rounding of the scales).
    """
    with torch.no_grad():
        expected, got = original(probe), twin(probe)
    gap = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-300))
    tolerance = 1e-10 if expected.dtype == torch.float64 else 1e-4
    if not gap <= tolerance:
        raise NotAChainError(
            f"rescaling the discovered units changed the logits (relative gap {gap:.2e} > "
            f"{tolerance:g}): some operation in the forward does not commute with positive "
            "per-unit scales and is not recognised as such. Report the model's forward to "
            "minsharp; wrapping that operation in a submodule of its own pins its inputs."
        )
    return gap


def random_log_scales(group: SymmetryGroup, seed: int, spread: float = 0.5) -> np.ndarray:
    """Random u per unit id, equal within tie classes and 0 on the ground."""
    representatives = group.representatives()
    generator = np.random.default_rng(seed)
    by_class = generator.normal(0.0, spread, len(group.parent))
    by_class[0] = 0.0
    return by_class[representatives]

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
    constant: float
    """Diagonal mass on no edge (pinned-to-pinned entries, parameters outside the group)."""
    node_of: np.ndarray
    """Unit id → node index."""


def edge_weights(group: SymmetryGroup, diagonal: Mapping[str, Tensor]) -> EdgeWeights:
    """``a_e = Σ_{p on e} h_p`` per edge between tie classes, from a per-parameter diagonal.

    Entries along an axis on which both ends stay in one tie class (a first layer's inputs,
    all ground; a kernel's positions) are summed before the edges are listed; the edges that
    remain may repeat a (dst, src) pair, which the solver sums.
    """
    representatives = group.representatives()
    classes, node_of = np.unique(representatives, return_inverse=True)  # ground (0) first
    num_nodes = classes.size
    dsts, srcs, masses, constant = [], [], [], 0.0
    for name, entries in diagonal.items():
        if name not in group.edges:
            constant += float(entries.detach().double().sum())
            continue
        dst, src = (node_of[units] for units in group.edges[name])
        # The unit arrays index the leading axes; trailing ones (a kernel's) are broadcast.
        dst, src = (np.reshape(n, n.shape + (1,) * (entries.ndim - n.ndim)) for n in (dst, src))
        summed = [
            axis
            for axis in range(entries.ndim)
            if _constant_along(dst, axis) and _constant_along(src, axis)
        ]
        h = entries.detach()
        if summed:
            h = h.sum(dim=summed, keepdim=True, dtype=torch.float64)
            dst, src = (_first_along(n, summed) for n in (dst, src))
        reduced = h.shape
        dsts.append(np.broadcast_to(dst, reduced).ravel())
        srcs.append(np.broadcast_to(src, reduced).ravel())
        masses.append(h.to("cpu", torch.float64).numpy().ravel())
    if not dsts:
        return EdgeWeights(
            num_nodes, *(np.zeros(0, dtype=np.int64),) * 2, np.zeros(0), constant, node_of
        )
    dst, src, weight = np.concatenate(dsts), np.concatenate(srcs), np.concatenate(masses)
    loop = dst == src
    constant += float(weight[loop].sum())
    return EdgeWeights(num_nodes, dst[~loop], src[~loop], weight[~loop], constant, node_of)


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
            exponent = log_scales[dst] - log_scales[src]
            factor = torch.from_numpy(np.exp(exponent)).to(parameter.dtype)
            parameter.mul_(factor.to(parameter.device))
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

"""Minimum Sharpness over the full rescaling group of any traced network (theory §7).

``MS_G(θ) = inf_u Tr H(g_u θ) = inf_u Σ_edges a_e e^{−2(u_dst − u_src)} + constant`` over the
group elements g_u found by :func:`minsharp.symmetry.graph.discover`, with a_e sums of the
exact Hessian (or GGN) diagonal (:func:`minsharp.symmetry.group.edge_weights`) and the
infimum found by balancing (:func:`minsharp.solvers.balance.balance`).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from minsharp.curvature.engine import DEFAULT_BATCH_SIZE, hessian_diagonal
from minsharp.curvature.guard import PROBE_EXAMPLES
from minsharp.curvature.layers import check_measurable, model_dtype_device
from minsharp.curvature.results import Curvature, CurvatureDiagonal
from minsharp.data.batches import input_batches
from minsharp.options import choice
from minsharp.solvers.balance import Balance, balance
from minsharp.symmetry.graph import SymmetryGroup, discover
from minsharp.symmetry.group import (
    EdgeWeights,
    edge_weights,
    random_log_scales,
    rescaled_copy,
    verify_same_function,
)

Symmetry = Literal["layer", "neuron"]
SYMMETRIES: tuple[Symmetry, ...] = ("layer", "neuron")


@dataclass(frozen=True)
class GroupCertificate:
    """How the infimum over the group was found, and how well."""

    attained: bool
    max_relative_imbalance: float
    """``max_v |In_v − Out_v| / (In_v + Out_v)`` at the returned scales (0 at the optimum)."""
    iterations: int
    """Osborne sweeps plus Newton steps."""
    method: str = "osborne+newton"


@dataclass(frozen=True)
class GroupMinimumSharpness:
    """Result of :func:`group_minimum_sharpness`."""

    value: float
    """``inf_u Tr H(g_u θ)`` (minimum GGN trace when ``curvature == "ggn"``)."""
    trace: float
    """``Tr H`` at the given parameters (over the parameters the engine measures)."""
    symmetry: Symmetry
    curvature: Curvature
    certificate: GroupCertificate
    scales: dict[str, Tensor] | None
    """Module name → optimal factor e^{u} per output unit; None when not attained."""
    runaway: dict[str, str]
    """When not attained: unit (``"module[i]"``) → why its scale runs off to 0 or ∞."""
    num_units: int
    """Free scales (tie classes not pinned)."""
    num_examples: int
    seconds: float
    solver_seconds: float
    _group: SymmetryGroup = field(repr=False)
    _log_scales: np.ndarray = field(repr=False)
    _probe: Tensor = field(repr=False)

    def rescaled(self, model: nn.Module) -> nn.Module:
        """The function-equivalent copy of ``model`` at the optimum; its trace is ``value``.

        Checked on the probe batch (same logits to 1e-10 relative in float64).
        """
        if not self.certificate.attained:
            raise ValueError(
                f"the infimum is not attained ({', '.join(self.runaway)} run off), so there is "
                "no optimal rescaling."
            )
        twin = rescaled_copy(model, self._group, self._log_scales)
        verify_same_function(model, twin, self._probe)
        return twin


def group_minimum_sharpness(
    model: nn.Module,
    data: Any,
    *,
    symmetry: Symmetry = "neuron",
    curvature: Curvature = "hessian",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    seed: int = 0,
) -> GroupMinimumSharpness:
    """``inf_u Tr H(g_u θ)`` over the rescaling group found in the model's graph (theory §7).

    Extends Minimum Sharpness (Ibayashi, Hamaguchi & Imaizumi 2021, theory §2) from one scale
    per layer of a chain to any network torch.fx traces: ``symmetry="neuron"`` gives every
    unit (Linear output feature, Conv output channel, eval batch-norm channel) its own scale,
    ``"layer"`` one scale per module output (on a chain exactly the paper's value). Units
    added in a residual sum share a scale; units feeding an operation that is not positively
    homogeneous, and the logits, are pinned. The objective
    ``Σ_e a_e e^{−2(u_dst − u_src)}`` is balanced by Osborne sweeps and Newton's method.

    Args:
        model: the network in eval mode, returning logits (N, K).
        data: as for :func:`minsharp.hessian_diagonal`.
        symmetry: ``"neuron"`` (per-unit scales) or ``"layer"``.
        curvature: ``"hessian"`` (refuses networks not piecewise linear) or ``"ggn"``.
        batch_size: examples per pass of the diagonal; memory grows linearly with it.
        progress: show a progress bar over batches.
        seed: the random group element that checks the discovered group on a probe batch.
    """
    start = time.perf_counter()
    check_measurable(model)
    choice("symmetry", symmetry, SYMMETRIES)
    dtype, device = model_dtype_device(model)
    batches = input_batches(data, batch_size, device, dtype)
    first = next(batches)
    probe = first[:PROBE_EXAMPLES]
    group = discover(model, probe)
    if symmetry == "layer":
        group.tie_layers()
    check = rescaled_copy(model, group, random_log_scales(group, seed))
    verify_same_function(model, check, probe)
    diagonal = hessian_diagonal(
        model,
        itertools.chain([first], batches),
        curvature=curvature,
        batch_size=batch_size,
        progress=progress,
    )
    return _solved(group, diagonal, probe, symmetry, start)


def _solved(
    group: SymmetryGroup,
    diagonal: CurvatureDiagonal,
    probe: Tensor,
    symmetry: Symmetry,
    start: float,
) -> GroupMinimumSharpness:
    """Balance the edge weights of ``diagonal`` and package the result."""
    solve_start = time.perf_counter()
    edges = edge_weights(group, diagonal)
    solution = balance(edges.num_nodes, edges.dst, edges.src, edges.weight)
    log_scales = solution.log_scales[edges.node_of]
    solver_seconds = time.perf_counter() - solve_start
    return GroupMinimumSharpness(
        value=solution.value + edges.constant,
        trace=diagonal.total,
        symmetry=symmetry,
        curvature=diagonal.curvature,
        certificate=GroupCertificate(
            solution.attained,
            solution.max_relative_imbalance,
            solution.sweeps + solution.newton_steps,
        ),
        scales=_scales(group, log_scales) if solution.attained else None,
        runaway=_runaway(group, edges, solution),
        num_units=edges.num_nodes - 1,
        num_examples=diagonal.num_examples,
        seconds=time.perf_counter() - start,
        solver_seconds=solver_seconds,
        _group=group,
        _log_scales=log_scales,
        _probe=probe,
    )


def _scales(group: SymmetryGroup, log_scales: np.ndarray) -> dict[str, Tensor]:
    return {
        name: torch.from_numpy(np.exp(log_scales[first : first + count]))
        for name, (first, count) in group.units.items()
    }


def _unit_names(group: SymmetryGroup, edges: EdgeWeights) -> dict[int, str]:
    """Node → the name of its first unit, ``"module[i]"``."""
    names: dict[int, str] = {}
    for module, (first, count) in group.units.items():
        for index in range(count):
            names.setdefault(int(edges.node_of[first + index]), f"{module}[{index}]")
    return names


def _runaway(group: SymmetryGroup, edges: EdgeWeights, solution: Balance) -> dict[str, str]:
    """The units on edges that lie on no directed cycle, and which side lacks curvature."""
    if solution.attained:
        return {}
    incoming = np.bincount(edges.dst, edges.weight, minlength=edges.num_nodes)
    outgoing = np.bincount(edges.src, edges.weight, minlength=edges.num_nodes)
    names = _unit_names(group, edges)
    runaway = {}
    for edge in solution.cut_edges:
        for node in (int(edges.dst[edge]), int(edges.src[edge])):
            if node == 0:
                continue
            if incoming[node] == 0:
                why = "its incoming parameters carry no curvature"
            elif outgoing[node] == 0:
                why = "its outgoing parameters carry no curvature"
            else:
                why = "it lies on no directed cycle of curvature-carrying edges"
            runaway[names[node]] = why
    return runaway

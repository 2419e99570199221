"""Minimum Sharpness over the rescaling group of any traced network (theory §2, §7).

``MS_G(θ) = inf_u Tr H(g_u θ) = inf_u Σ_edges a_e e^{−2(u_dst − u_src)} + constant`` over the
group elements g_u found in the model's graph (:func:`minsharp.symmetry.graph.discover`), with
a_e sums of the exact Hessian (or GGN) diagonal (:func:`minsharp.symmetry.group.edge_weights`)
and the infimum found by balancing (:func:`minsharp.solvers.balance.balance`).
``symmetry="layer"`` ties all units of a module output, which on a chain is the paper's
Minimum Sharpness (Ibayashi, Hamaguchi & Imaizumi 2021); ``"neuron"`` frees every unit.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from torch import Tensor, nn

from minsharp.curvature.engine import CURVATURES, hessian_diagonal, run_forward
from minsharp.curvature.guard import PROBE_EXAMPLES
from minsharp.curvature.layers import model_dtype_device
from minsharp.curvature.results import Curvature, CurvatureDiagonal
from minsharp.data.batches import input_batches
from minsharp.measures.result import Evaluation
from minsharp.options import choice, integer
from minsharp.solvers.balance import Balance, balance
from minsharp.symmetry.graph import SymmetryGroup, discover
from minsharp.symmetry.group import (
    EdgeWeights,
    edge_weights,
    random_log_scales,
    rescaled_copy,
    verify_same_function,
)

#: The subgroups Minimum Sharpness minimises over (not the registry's invariance names,
#: :data:`minsharp.measures.SYMMETRIES`): one scale per module output, or one per unit.
Group = Literal["layer", "neuron"]
GROUPS: tuple[Group, ...] = ("layer", "neuron")
#: Examples the model's graph runs on to find the group (more than one, so that the batch
#: axis cannot be confused with a feature axis of length 1).
DISCOVERY_EXAMPLES = 4


def minimum_sharpness_evaluation(
    model: nn.Module,
    data: Any,
    *,
    symmetry: Group = "layer",
    curvature: Curvature = "hessian",
    batch_size: int | None = None,
    progress: bool = False,
    seed: int = 0,
) -> Evaluation:
    """Minimum Sharpness ``inf_u Tr H(g_u θ)`` over function-preserving rescalings g_u.

    Ibayashi, Hamaguchi & Imaizumi 2021 define it on a chain with one scale α_l per layer
    (theory §2); here the group is read from the model's graph (theory §7), so residual
    additions, eval-mode batch-norm, concatenation and grouped convolutions are covered. A
    group element multiplies the weight from unit j to unit i by ``e^{u_i − u_j}`` and bias
    i by ``e^{u_i}``; the exact diagonal then moves as ``h_p → h_p e^{−2 c_p(u)}``, so

        MS = inf_u Σ_edges a_e e^{−2(u_dst − u_src)} + constant,

    a convex problem solved by Osborne balancing and Newton's method. Units added in a
    residual sum share a scale; units feeding an operation that is not positively
    homogeneous (tanh, GELU, LayerNorm, an eval batch-norm's input…), the inputs and the
    logits are pinned.

    Args:
        model: the network in eval mode, returning logits (N, K).
        data: as for :func:`minsharp.hessian_trace`.
        symmetry: ``"layer"`` — one scale per module output (on a chain exactly the
            paper's value) — or ``"neuron"``, one per unit (ours; never above ``"layer"``).
        curvature: ``"hessian"`` (refuses networks that are not piecewise linear) or
            ``"ggn"``: the minimum generalized Gauss–Newton trace, for any network.
        batch_size: examples per pass of the diagonal; ``None`` picks it from the memory
            budget as :func:`minsharp.hessian_diagonal` does.
        progress: show a progress bar over batches.
        seed: the random group element that checks the discovered group on a probe batch.

    The result's ``certificate`` holds ``attained``, ``max_relative_imbalance``
    ``max_v |In_v − Out_v| / (In_v + Out_v)`` at the returned scales, ``iterations`` and
    ``method``; ``per_layer`` each module's trace at the optimum; ``details`` the optimal
    ``scales`` per module (e^u per output unit), the units that ``runaway`` when the
    infimum is not attained and why, ``alphas`` (chains with ``symmetry="layer"``: the
    paper's α_l), the ``weight_traces``/``bias_traces`` and ``trace`` as given; and
    ``result.rescaled(model)`` is the function-equivalent copy at the optimum, whose trace
    is the value.
    """
    start = time.perf_counter()
    choice("symmetry", symmetry, GROUPS)
    choice("curvature", curvature, CURVATURES)
    integer("seed", seed)
    dtype, device = model_dtype_device(model)
    # With batch_size=None the engine splits whole batches itself; the first gives the probe.
    batches = input_batches(data, sys.maxsize if batch_size is None else batch_size, device, dtype)
    first = next(batches)
    probe = first[:PROBE_EXAMPLES]
    # The rules read only shapes, so a few examples find the group; the check below, which
    # could catch a rule that is wrong for this model, uses the whole probe.
    examples = probe[:DISCOVERY_EXAMPLES]
    run_forward(model, examples)  # a bad input batch fails here, named, not inside the tracer
    group = discover(model, examples)
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


def neuron_minimum_sharpness(
    model: nn.Module,
    data: Any,
    *,
    curvature: Curvature = "hessian",
    batch_size: int | None = None,
    progress: bool = False,
    seed: int = 0,
) -> Evaluation:
    """Minimum Sharpness over per-unit rescalings, ``inf_u Tr H(g_u θ)`` (theory §7; ours).

    :func:`minimum_sharpness_evaluation` with ``symmetry="neuron"``: every unit (Linear
    output feature, Conv output channel, eval batch-norm channel) has its own scale, so the
    value is invariant to per-unit as well as layer-wise rescalings and never above the
    layer-wise Minimum Sharpness of Ibayashi, Hamaguchi & Imaizumi 2021. Its own registry
    name lets studies and the CLI list it beside the layer-wise value.
    """
    return minimum_sharpness_evaluation(
        model,
        data,
        symmetry="neuron",
        curvature=curvature,
        batch_size=batch_size,
        progress=progress,
        seed=seed,
    )


def _solved(
    group: SymmetryGroup,
    diagonal: CurvatureDiagonal,
    probe: Tensor,
    symmetry: Group,
    start: float,
) -> Evaluation:
    """Balance the edge weights of ``diagonal`` and package the result."""
    solve_start = time.perf_counter()
    edges = edge_weights(group, diagonal)
    solution = balance(edges.num_nodes, edges.dst, edges.src, edges.weight)
    log_scales = solution.log_scales[edges.node_of]
    solver_seconds = time.perf_counter() - solve_start
    traces = diagonal.trace().by_layer()
    attained = solution.attained
    return Evaluation(
        value=solution.value + edges.constant,
        num_examples=diagonal.num_examples,
        per_layer=_traces_at(diagonal, edges, solution.log_scales) if attained else None,
        certificate={
            "attained": attained,
            "max_relative_imbalance": solution.max_relative_imbalance,
            "iterations": solution.osborne_steps + solution.newton_steps,
            "method": "osborne+newton",
        },
        details={
            "symmetry": symmetry,
            "curvature": diagonal.curvature,
            "scales": _scales(group, log_scales) if attained else None,
            "runaway": _runaway(group, edges, solution),
            "alphas": _chain_alphas(group, log_scales) if attained else None,
            "weight_traces": {name: t.get("weight", 0.0) for name, t in traces.items()},
            "bias_traces": {name: t.get("bias", 0.0) for name, t in traces.items()},
            "trace": diagonal.total,
            "num_units": edges.num_nodes - 1,
            "seconds": time.perf_counter() - start,
            "solver_seconds": solver_seconds,
        },
        resolved={"batch_size": diagonal.batch_size},
        invariances=frozenset({"layer", "neuron"} if symmetry == "neuron" else {"layer"}),
        rescale=_twin_maker(group, log_scales, probe) if attained else None,
    )


def _twin_maker(
    group: SymmetryGroup, log_scales: np.ndarray, probe: Tensor
) -> Callable[[nn.Module], nn.Module]:
    def rescaled(model: nn.Module) -> nn.Module:
        """The copy of ``model`` at the optimal scales, checked on the probe batch."""
        twin = rescaled_copy(model, group, log_scales)
        verify_same_function(model, twin, probe)
        return twin

    return rescaled


def _traces_at(
    diagonal: CurvatureDiagonal, edges: EdgeWeights, node_scales: np.ndarray
) -> dict[str, float]:
    """Each module's trace after the rescaling, ``Σ_p h_p e^{−2 c_p(u)}`` over its parameters."""
    by_parameter = edges.traces_at(node_scales)
    traces: dict[str, float] = {}
    for name in diagonal:
        module = name.rpartition(".")[0]
        traces[module] = traces.get(module, 0.0) + by_parameter[name]
    return traces


def _scales(group: SymmetryGroup, log_scales: np.ndarray) -> dict[str, list[float]]:
    """Module name → the optimal factor e^u of each of its output units."""
    return {
        name: np.exp(log_scales[first : first + count]).tolist()
        for name, (first, count) in group.units.items()
    }


def _chain_alphas(group: SymmetryGroup, log_scales: np.ndarray) -> dict[str, float] | None:
    """The paper's α_l = e^{u_l − u_{l−1}} when the weighted modules form a chain, else None.

    A chain here: every module's weight reads exactly the previous module's tie class (the
    first reads the pinned input), and each module's units share one scale.
    """
    representatives = group.representatives()
    previous: set[int] | None = None  # the first module reads the input, raw unit 0
    last = 0.0
    alphas: dict[str, float] = {}
    for name, (first, count) in group.units.items():
        weight = group.edges.get(f"{name}.weight")
        own = log_scales[first : first + count]
        reads = None if weight is None else set(np.unique(weight[1]).tolist())
        expected = {0} if previous is None else previous
        if reads is None or {int(representatives[unit]) for unit in reads} != expected:
            return None
        if (previous is not None and reads == {0}) or np.ptp(own) > 0:
            return None
        alphas[name] = float(np.exp(own[0] - last))
        previous = {int(unit) for unit in representatives[first : first + count]}
        last = float(own[0])
    return alphas


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

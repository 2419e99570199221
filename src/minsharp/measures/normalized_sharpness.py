"""Normalized sharpness (Tsuzuku, Sato & Sugiyama, ICML 2020), theory §3.

For each weight matrix ``W`` (m × n: a Linear layer's ``(out, in)``; a conv layer's
``(C_out, C_in)`` after summing ``diag H`` and ``W²`` over kernel positions) with exact
Hessian diagonal ``h``, the layer's sharpness is minimised over per-row scales ``σ`` and
per-column scales ``σ'``:

* arXiv version: ``NS_l = min_{σ,σ'>0} Σ_ij h_ij σ_i² σ'_j² + W_ij² / (σ_i² σ'_j²)
  = min_{s>0} 2 Σ_i √(A_i(s) B_i(s))``;
* ICML version: ``NS_l = min_{s>0} √(Σ_i A_i(s) B_i(s))``;

with ``A_i(s) = Σ_j h_ij s_j``, ``B_i(s) = Σ_j W_ij² / s_j``, and ``NS = Σ_l NS_l``. Biases
are ignored. Rescaling a unit's incoming row by ``r`` multiplies row ``i`` of ``h`` by
``1/r²`` and of ``W²`` by ``r²``, and a unit's outgoing column likewise, so both versions
are invariant to the layer, neuron and batch-norm rescalings of a ReLU network.

The diagonal comes exactly from the curvature engine (:func:`minsharp.hessian_diagonal`),
where the paper approximated it by finite differences; the minimisation is solved to a
certified relative KKT residual by
:func:`minsharp.solvers.normalized.minimize_normalized_sharpness`.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from minsharp.curvature.conv import grouped_units
from minsharp.curvature.engine import hessian_diagonal
from minsharp.curvature.layers import find_layers
from minsharp.curvature.results import Curvature
from minsharp.curvature.rules import WEIGHT_LAYERS, fast_rule, weight_units
from minsharp.errors import MinsharpError, ModelError
from minsharp.measures.result import Evaluation, options_of
from minsharp.solvers.normalized import (
    NORMALIZED_MAX_ITERATIONS,
    NORMALIZED_TOLERANCE,
    NormalizedObjective,
    NormalizedSharpnessSolution,
    check_normalized_options,
    minimize_normalized_sharpness,
)

__all__ = [
    "layer_matrices",
    "layer_normalized_sharpness",
    "normalized_sharpness",
    "normalized_sharpness_icml",
]

REFERENCE = (
    "Tsuzuku, Sato & Sugiyama 2020, Normalized flat minima: exploring scale invariant "
    "definition of flat minima for neural networks using PAC-Bayesian analysis (ICML)"
)


def layer_matrices(
    diag_hessian: Tensor, weight: Tensor, *, groups: int = 1
) -> tuple[Tensor, Tensor]:
    """The m × n matrices ``(h, W²)`` of one Linear or conv weight, in float64 on the CPU.

    A Linear weight ``(out, in)`` is used as it is. A conv weight
    ``(C_out, C_in / groups, k…)`` gives ``(C_out, C_in)``: ``h`` and ``W²`` summed over the
    kernel positions, and for ``groups > 1`` placed block-diagonally (group ``g``'s outputs
    only see its own inputs), so that column ``j`` is input channel ``j``.

    Args:
        diag_hessian: ``diag H`` of the weight, shaped like it.
        weight: the weight.
        groups: the conv layer's ``groups`` (1 for Linear).

    Example:
        >>> h, w2 = layer_matrices(torch.ones(4, 1, 3), torch.full((4, 1, 3), 2.0), groups=2)
        >>> h.tolist(), w2[0].tolist()
        ([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, 3.0]], [12.0, 0.0])
    """
    if diag_hessian.shape != weight.shape:
        raise MinsharpError(
            f"diag_hessian has shape {tuple(diag_hessian.shape)} but the weight has shape "
            f"{tuple(weight.shape)}; pass the diagonal of this very weight."
        )
    if weight.dim() < 2:
        raise MinsharpError(f"a weight matrix needs at least 2 dimensions; got {weight.dim()}.")
    if groups < 1 or weight.shape[0] % groups:
        raise MinsharpError(
            f"groups={groups} does not divide the {weight.shape[0]} output channels."
        )
    h = grouped_units(diag_hessian.detach().to("cpu", torch.float64), groups).sum(-1)
    w2 = grouped_units(weight.detach().to("cpu", torch.float64).square(), groups).sum(-1)
    return h, w2


def layer_normalized_sharpness(
    diag_hessian: Tensor,
    weight: Tensor,
    *,
    groups: int = 1,
    objective: NormalizedObjective = "arxiv",
    tolerance: float = NORMALIZED_TOLERANCE,
    max_iterations: int = NORMALIZED_MAX_ITERATIONS,
) -> NormalizedSharpnessSolution:
    """One layer's ``NS_l`` from its weight and the weight's exact Hessian diagonal.

    :func:`layer_matrices` then
    :func:`minsharp.solvers.normalized.minimize_normalized_sharpness` (see there
    for the two objectives, the method and the certificate).

    Example:
        A 1 × 2 layer: ``NS = 2 Σ_j √(h_j W_j²) = 2 (√(1·9) + √(4·1)) = 10``:

        >>> h, weight = torch.tensor([[1.0, 4.0]]), torch.tensor([[3.0, 1.0]])
        >>> result = layer_normalized_sharpness(h, weight)
        >>> round(result.value, 12), result.converged
        (10.0, True)
    """
    h, w2 = layer_matrices(diag_hessian, weight, groups=groups)
    return minimize_normalized_sharpness(
        h, w2, objective=objective, tolerance=tolerance, max_iterations=max_iterations
    )


def normalized_sharpness(
    model: nn.Module,
    data: Any,
    *,
    curvature: Curvature = "hessian",
    batch_size: int | None = None,
    progress: bool = False,
    tolerance: float = NORMALIZED_TOLERANCE,
    max_iterations: int = NORMALIZED_MAX_ITERATIONS,
) -> Evaluation:
    """Normalized sharpness, arXiv version: ``NS = Σ_l NS_l`` (Tsuzuku, Sato & Sugiyama 2020).

    ``NS_l = min_{σ,σ'>0} Σ_ij h_ij σ_i² σ'_j² + W_ij² / (σ_i² σ'_j²)`` over every Linear and
    conv weight with ``requires_grad`` (biases ignored), ``h = diag H`` exact for the mean
    cross-entropy over ``data`` (theory §1, §3).

    Args:
        model: the network (eval mode, piecewise linear in its weights).
        data: a tensor X, a tuple (X, y), or an iterable of such batches (labels unused).
        curvature: ``"hessian"`` (refuses networks not piecewise linear) or ``"ggn"``, the
            generalized Gauss–Newton diagonal in place of ``diag H`` (``details`` say which).
        batch_size: examples per pass of the curvature engine; ``None``: from the memory
            budget.
        progress: show a progress bar over batches.
        tolerance: relative KKT residual ``‖∇_b F‖₂ / F`` each layer's solve must reach.
        max_iterations: most Newton steps per layer (a ``RuntimeWarning`` if not converged).

    Returns:
        ``value`` = NS; ``per_layer`` = NS_l by module name; ``certificate`` with the method,
        the largest relative KKT residual, Newton steps per layer and whether every minimum
        is attained (False when dead units or never-active inputs make a term vanish only in
        a limit: the value is then the infimum); ``details`` with timings, Hessian–vector
        products and pruned rows and columns per layer.
    """
    return _evaluate(
        model,
        data,
        "arxiv",
        curvature=curvature,
        batch_size=batch_size,
        progress=progress,
        tolerance=tolerance,
        max_iterations=max_iterations,
    )


@options_of(normalized_sharpness)
def normalized_sharpness_icml(model: nn.Module, data: Any, **options: Any) -> Evaluation:
    """Normalized sharpness, ICML version: ``NS = Σ_l NS_l`` (Tsuzuku, Sato & Sugiyama 2020).

    ``NS_l = min_{s>0} √(Σ_i A_i(s) B_i(s))``, ``A_i = Σ_j h_ij s_j``, ``B_i = Σ_j W_ij²/s_j``
    over every Linear and conv weight with ``requires_grad`` (biases ignored), ``h = diag H``
    exact (theory §1, §3). The certificate's residual refers to ``F = Σ_i A_i B_i``, before the
    square root. Options (the same) and result as for :func:`normalized_sharpness`.
    """
    return _evaluate(model, data, "icml", **options)


def _evaluate(
    model: nn.Module,
    data: Any,
    objective: NormalizedObjective,
    *,
    curvature: Curvature,
    batch_size: int | None,
    progress: bool,
    tolerance: float,
    max_iterations: int,
) -> Evaluation:
    """Exact diagonal once, then one solve per weight matrix."""
    check_normalized_options(objective, tolerance, max_iterations)
    diagonal = hessian_diagonal(
        model, data, curvature=curvature, batch_size=batch_size, progress=progress
    )
    found = find_layers(model)
    for layer in found:  # a weight matrix without a known layout is refused, not misread
        weight = getattr(layer.module, "weight", None)
        if fast_rule(layer.module) is None and isinstance(weight, Tensor) and weight.dim() > 1:
            weight_units(layer.module, weight)
    layers = [
        layer
        for layer in found
        if fast_rule(layer.module) in WEIGHT_LAYERS.values() and layer.weight is not None
    ]
    if not layers:
        raise ModelError(
            "normalized sharpness needs at least one Linear or conv weight with "
            "requires_grad=True; this model has none (batch-norm parameters and biases do not "
            "count)."
        )
    solutions: dict[str, NormalizedSharpnessSolution] = {}
    seconds: dict[str, float] = {}
    for layer in layers:
        name = layer.name or "(root)"
        start = time.perf_counter()
        solutions[name] = layer_normalized_sharpness(
            diagonal[layer.weight],
            layer.module.weight,
            groups=getattr(layer.module, "groups", 1),
            objective=objective,
            tolerance=tolerance,
            max_iterations=max_iterations,
        )
        seconds[name] = time.perf_counter() - start
    worst = max(solution.relative_kkt for solution in solutions.values())
    failed = [name for name, solution in solutions.items() if not solution.converged]
    if failed:
        warnings.warn(
            f"normalized sharpness: the solve of {', '.join(failed)} stopped at "
            f"max_iterations={max_iterations} Newton steps with relative KKT residual "
            f"{worst:.2e} > tolerance={tolerance}; the value is an upper bound. Raise "
            "max_iterations or the tolerance.",
            RuntimeWarning,
            stacklevel=3,
        )
    return Evaluation(
        value=sum(solution.value for solution in solutions.values()),
        num_examples=diagonal.num_examples,
        per_layer={name: solution.value for name, solution in solutions.items()},
        certificate={
            "method": "newton-cg",
            "max_relative_kkt": worst,
            "tolerance": tolerance,
            "converged": not failed,
            "iterations": {name: solution.iterations for name, solution in solutions.items()},
            "attained": all(solution.attained for solution in solutions.values()),
        },
        details={
            "objective": objective,
            "curvature": diagonal.curvature,
            "diagonal_seconds": diagonal.seconds,
            "solve_seconds": seconds,
            "relative_kkt": {name: solution.relative_kkt for name, solution in solutions.items()},
            "hessian_products": {
                name: solution.hessian_products for name, solution in solutions.items()
            },
            "attained": {name: solution.attained for name, solution in solutions.items()},
            "pruned": {
                name: {"rows": solution.pruned_rows, "columns": solution.pruned_columns}
                for name, solution in solutions.items()
            },
        },
        resolved={"batch_size": diagonal.batch_size},
    )

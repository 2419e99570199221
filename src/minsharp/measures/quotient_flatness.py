"""Quotient-manifold flatness (Rangamani et al. 2019), theory §4.

A layer rescaling multiplies every parameter tensor ``P`` by a positive scalar ``t_P``; the
loss is unchanged, so the Hessian at the rescaled point is ``T⁻¹ H T⁻¹`` with
``T = blockdiag(t_P · I)``. Scaling each block by its own norm, ``D = blockdiag(‖P‖_F · I)``,
turns into ``T D``, and since block-scalar matrices commute,

    (T D) (T⁻¹ H T⁻¹) (T D) = D H D:

the spectrum of ``D H D`` is a property of the function's rescaling class, a point of the
quotient manifold, rather than of the chosen parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from minsharp.measures.curvature_baselines import hessian_top_eigenvalue, top_eigenvalue
from minsharp.measures.result import Evaluation, options_of
from minsharp.objective import DatasetObjective


@options_of(top_eigenvalue)
def quotient_flatness(
    model: nn.Module, data: Any, *, batch_size: int | None, **lanczos: Any
) -> Evaluation:
    """``Sharp(θ) = λ_max(D H D)``, ``D = blockdiag(‖P‖_F · I)`` (Rangamani et al. 2019).

    A scale-invariant flatness measure: ``H = ∇²L`` is the full Hessian of the mean
    cross-entropy over all of ``data`` (off-diagonal blocks included, so the labels matter),
    and ``D`` scales each trainable parameter tensor ``P`` — every weight and every bias,
    batch-norm affine parameters too — by its Frobenius norm. The value is invariant to the
    layer (α-scale) symmetry, which multiplies each tensor by a scalar; not to per-neuron
    rescaling, which scales rows and columns separately. A tensor that is exactly zero drops
    out (its block of ``D`` vanishes). ``λ_max`` is the largest *algebraic* eigenvalue (``D H
    D`` may be indefinite away from a minimum).

    Lanczos on products ``v ↦ D H D v`` (:func:`minsharp.solvers.lanczos.largest_eigenvalue`) stops
    when ``‖D H D v − λ v‖ ≤ tolerance · |λ|``; the certificate holds that residual, the number
    of Hessian-vector products (one pass over the data each), the tolerance and
    ``converged``. A run that reaches ``max_iterations`` first warns and returns a lower bound.
    With a float32 model, tolerances much below ``1e-6`` may be out of reach (rounding of the
    products).
    ``details`` gives the block norms ``‖P‖_F`` and each layer's share ``‖v_l‖²`` of the top
    eigenvector.

    The options (``batch_size``, ``progress``, ``tolerance``, ``max_iterations``, ``seed``)
    are those of :func:`~minsharp.measures.curvature_baselines.top_eigenvalue`, with the same
    meaning.
    """
    objective = DatasetObjective(model, data, batch_size)
    norms = {name: float(p.double().norm()) for name, p in objective.parameters.items()}
    scales = torch.cat(
        [
            torch.full((p.numel(),), norms[name], dtype=torch.float64, device=objective.device)
            for name, p in objective.parameters.items()
        ]
    )
    evaluation = hessian_top_eigenvalue(objective, scales=scales, **lanczos)
    return dataclasses.replace(evaluation, details={**evaluation.details, "block_norms": norms})

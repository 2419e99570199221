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

from minsharp.curvature.engine import DEFAULT_BATCH_SIZE
from minsharp.measures.curvature_baselines import hessian_top_eigenvalue
from minsharp.measures.result import Evaluation
from minsharp.objective import DatasetObjective
from minsharp.solvers.lanczos import EIGEN_MAX_ITERATIONS, EIGEN_TOLERANCE


def quotient_flatness(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    tolerance: float = EIGEN_TOLERANCE,
    max_iterations: int = EIGEN_MAX_ITERATIONS,
    seed: int = 0,
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

    Args:
        model: the classifier, in eval mode.
        data: ``(X, y)`` or an iterable of ``(X, y)`` batches.
        batch_size: examples per forward pass.
        progress: show a progress bar over Hessian-vector products.
        tolerance: relative Ritz residual to reach, in (0, 1).
        max_iterations: largest number of Lanczos steps (Hessian-vector products).
        seed: seed of the Lanczos start vector.
    """
    objective = DatasetObjective(model, data, batch_size)
    norms = {name: float(p.double().norm()) for name, p in objective.parameters.items()}
    scales = torch.cat(
        [
            torch.full((p.numel(),), norms[name], dtype=torch.float64, device=objective.device)
            for name, p in objective.parameters.items()
        ]
    )
    evaluation = hessian_top_eigenvalue(
        objective,
        scales=scales,
        tolerance=tolerance,
        max_iterations=max_iterations,
        seed=seed,
        progress=progress,
    )
    return dataclasses.replace(evaluation, details={**evaluation.details, "block_norms": norms})

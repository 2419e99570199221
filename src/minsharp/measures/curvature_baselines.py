"""Plain (not rescaling-invariant) curvature measures, the baselines of every comparison.

All refer to the Hessian ``H = ∇²L`` of the mean cross-entropy over the data (MATH §0).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from minsharp.curvature.engine import DEFAULT_BATCH_SIZE, hessian_trace
from minsharp.measures.registry import Evaluation, register


@register(
    "hessian_trace",
    invariances=set(),
    summary="Tr H, exact: sum of the per-layer traces of the curvature engine",
    reference="Ibayashi, Hamaguchi & Imaizumi 2021 (exact per-layer formula)",
)
def exact_hessian_trace(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> Evaluation:
    """``Tr H = Σ_P Tr H_PP``, exact for piecewise-linear networks (MATH §1).

    The trace of the full Hessian is the sum of the traces of its diagonal blocks, which the
    curvature engine computes exactly in one pass (:func:`minsharp.hessian_trace`).
    """
    traces = hessian_trace(model, data, batch_size=batch_size, progress=progress)
    per_layer = {
        module or "(root)": sum(values.values()) for module, values in traces.by_layer().items()
    }
    return Evaluation(value=traces.total, num_examples=traces.num_examples, per_layer=per_layer)

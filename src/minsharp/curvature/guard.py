"""Checks that the exact engine's formula applies to a model, run on a small probe batch.

Two things can make ``H_PP = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n`` (MATH §1) wrong for a
parameter P:

* P is used outside one call of its module (weight sharing, functional use): found by
  counting the edges into each parameter in the autograd graph of the logits;
* the logits are not piecewise linear in P (tanh, GELU, LayerNorm…). The Hessian block
  differs from the Gauss–Newton block by ``R_PP = Σ_nk r_nk ∂²z_nk/∂P²`` (r: loss gradient
  w.r.t. the logits), which vanishes for every r iff every ``∂²z_nk/∂P²`` does. We take the
  scalar ``s = Σ_nk c_nk z_nk`` with random ``c`` (so the test does not depend on the labels
  or on how well the model fits them) and compare ``‖∂²s/∂P² v‖`` with ``‖∂s/∂P‖`` for a
  random ``v`` as large as P: a dimensionless ratio, structurally zero when the logits are
  piecewise linear in P (autograd's second derivatives of ReLU, pooling and friends are
  exact zeros) and of order one otherwise.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

#: Examples in the probe batch.
PROBE_EXAMPLES = 8


def parameter_uses(logits: Tensor) -> Counter[int]:
    """Number of autograd edges into each leaf tensor (keyed by ``id``) behind ``logits``."""
    uses: Counter[int] = Counter()
    seen: set[torch.autograd.graph.Node] = set()
    stack = [logits.grad_fn] if logits.grad_fn is not None else []
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            variable = getattr(child, "variable", None)
            if variable is not None:
                uses[id(variable)] += 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return uses


def second_order_ratios(
    logits: Tensor, parameters: dict[str, Tensor], seed: int = 0
) -> dict[str, float]:
    """``‖(∂²s/∂P²) v‖ / ‖∂s/∂P‖`` per parameter P, with ``s = Σ c·z`` and ``‖v‖ = ‖P‖``.

    ``logits`` (n, K) must have been computed from ``parameters`` with gradient recording.
    Zero exactly where the logits are piecewise linear in P.
    """
    generator = torch.Generator().manual_seed(seed)

    def random_like(tensor: Tensor) -> Tensor:
        draw = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        return draw.to(tensor.device)

    names = list(parameters)
    tensors = [parameters[name] for name in names]
    weights = random_like(logits)
    gradients = torch.autograd.grad(
        (logits * weights).sum(), tensors, create_graph=True, materialize_grads=True
    )
    ratios = {}
    for name, tensor, gradient in zip(names, tensors, gradients, strict=True):
        if not gradient.requires_grad:  # ∂s/∂P does not depend on P at all
            ratios[name] = 0.0
            continue
        direction = random_like(tensor)
        size = tensor.detach().norm()
        direction *= (size if size > 0 else tensor.numel() ** 0.5) / direction.norm()
        (curvature,) = torch.autograd.grad(
            gradient, tensor, direction, retain_graph=True, materialize_grads=True
        )
        numerator, denominator = curvature.norm().item(), gradient.detach().norm().item()
        if numerator == 0:
            ratios[name] = 0.0
        else:
            ratios[name] = numerator / denominator if denominator > 0 else float("inf")
    return ratios


def ratio_tolerance(dtype: torch.dtype) -> float:
    """Largest ratio put down to rounding: the square root of the dtype's epsilon."""
    return torch.finfo(dtype).eps ** 0.5

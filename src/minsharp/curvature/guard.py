"""Checks that the exact engine's formula applies to a model, run on a small probe batch.

Two things can make ``H_PP = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n`` (MATH §1) wrong for a
parameter P:

* P is used outside one call of its module (weight sharing, functional use): found by
  counting the edges into each parameter in the autograd graph of the logits;
* the logits are not piecewise linear in P (tanh, GELU, LayerNorm…): then the Hessian block
  differs from the Gauss–Newton block by ``Σ_nk r_nk ∂²z_nk/∂P²``. We compare ``H_PP v`` with
  ``G_PP v`` for a random ``v`` on the probe batch, using random labels so that the residuals
  ``r = p − e_y`` are of order one even at a minimum where the true residuals vanish.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def relative_ggn_mismatch(
    forward: Callable[[], Tensor], parameters: dict[str, nn.Parameter], seed: int = 0
) -> dict[str, float]:
    """``‖H_PP v − G_PP v‖ / max(‖H_PP v‖, ‖G_PP v‖)`` per parameter P, on random labels.

    ``forward`` returns the logits (n, K) of the probe batch. Zero for a network piecewise
    linear in P, up to rounding; of order one otherwise.
    """
    generator = torch.Generator().manual_seed(seed)
    logits = forward()
    n, K = logits.shape
    labels = torch.randint(0, K, (n,), generator=generator).to(logits.device)
    loss = F.cross_entropy(logits, labels, reduction="sum")
    names = list(parameters)
    tensors = [parameters[name] for name in names]
    gradients = torch.autograd.grad(loss, tensors, create_graph=True)
    probabilities = logits.detach().softmax(1)
    # A dummy cotangent u turns the vector-Jacobian product into a Jacobian-vector product.
    dummy = torch.zeros_like(logits, requires_grad=True)
    mismatch = {}
    for name, tensor, gradient in zip(names, tensors, gradients, strict=True):
        direction = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        direction = direction.to(tensor.device)
        (hessian_vector,) = torch.autograd.grad(
            gradient, tensor, direction, retain_graph=True, materialize_grads=True
        )
        (transposed,) = torch.autograd.grad(logits, tensor, dummy, create_graph=True)
        (jacobian_vector,) = torch.autograd.grad(
            transposed, dummy, direction, retain_graph=True, materialize_grads=True
        )
        weighted = probabilities * jacobian_vector
        weighted = weighted - probabilities * weighted.sum(1, keepdim=True)
        (ggn_vector,) = torch.autograd.grad(
            logits, tensor, weighted, retain_graph=True, materialize_grads=True
        )
        scale = max(hessian_vector.norm().item(), ggn_vector.norm().item())
        difference = (hessian_vector - ggn_vector).norm().item()
        mismatch[name] = difference / scale if scale > 0 else 0.0
    return mismatch


def mismatch_tolerance(dtype: torch.dtype) -> float:
    """Largest mismatch put down to rounding: the square root of the dtype's epsilon."""
    return torch.finfo(dtype).eps ** 0.5

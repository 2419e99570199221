"""Checks that the exact engine's formula applies to a model, run on a small probe batch.

Two things can make ``H_PP = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n`` (MATH §1) wrong for a
parameter P:

* P is used outside one call of its module (weight sharing, functional use): found by
  counting the edges into each parameter in the autograd graph of the logits;
* the logits are not piecewise linear in P (tanh, GELU, LayerNorm…): then the Hessian block
  differs from the Gauss–Newton block by ``Σ_nk r_nk ∂²z_nk/∂P²``. We compare ``H_PP v`` with
  ``G_PP v`` for a random ``v`` on the probe batch, using random labels so that the residuals
  ``r = p − e_y`` are of order one even at a minimum where the true residuals vanish.

The products for all parameters come out of a handful of vectorised autograd calls: row b of
a batch of directions is non-zero only on parameter b, and we keep block b of answer b.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

#: Examples in the probe batch.
PROBE_EXAMPLES = 8
#: Largest batch of probe directions, in elements; parameters are split into groups below it.
DIRECTION_ELEMENTS = 1 << 22


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
    logits_of: Callable[[dict[str, Tensor]], Tensor],
    parameters: dict[str, Tensor],
    seed: int = 0,
) -> dict[str, float]:
    """``‖H_PP v − G_PP v‖ / max(‖H_PP v‖, ‖G_PP v‖)`` per parameter P, on random labels.

    ``logits_of`` maps leaf tensors (requiring grad) for ``parameters`` to the probe's
    logits (n, K). Zero for a network piecewise linear in P, up to rounding; of order one
    otherwise.
    """
    generator = torch.Generator().manual_seed(seed)
    leaves = {name: p.detach().requires_grad_() for name, p in parameters.items()}
    logits = logits_of(leaves)
    n, K = logits.shape
    labels = torch.randint(0, K, (n,), generator=generator).to(logits.device)
    loss = F.cross_entropy(logits, labels, reduction="sum")
    names = list(leaves)
    gradients = dict(
        zip(names, torch.autograd.grad(loss, list(leaves.values()), create_graph=True), strict=True)
    )
    # A dummy cotangent u turns the vector-Jacobian product Jᵀu into a Jacobian-vector one.
    dummy = torch.zeros_like(logits, requires_grad=True)
    transposed = dict(
        zip(
            names,
            torch.autograd.grad(logits, list(leaves.values()), dummy, create_graph=True),
            strict=True,
        )
    )
    probabilities = logits.detach().softmax(1)
    mismatch = {}
    for group in _groups(leaves):
        tensors = [leaves[name] for name in group]
        directions = [
            torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) for t in tensors
        ]
        batched = _one_block_per_row(directions)
        hessian_vectors = torch.autograd.grad(
            [gradients[name] for name in group],
            tensors,
            batched,
            is_grads_batched=True,
            retain_graph=True,
            materialize_grads=True,
        )
        (jacobian_vectors,) = torch.autograd.grad(
            [transposed[name] for name in group],
            dummy,
            batched,
            is_grads_batched=True,
            retain_graph=True,
            materialize_grads=True,
        )
        weighted = probabilities * jacobian_vectors
        weighted = weighted - probabilities * weighted.sum(-1, keepdim=True)
        ggn_vectors = torch.autograd.grad(
            logits,
            tensors,
            weighted,
            is_grads_batched=True,
            retain_graph=True,
            materialize_grads=True,
        )
        for row, name in enumerate(group):
            hessian_vector, ggn_vector = hessian_vectors[row][row], ggn_vectors[row][row]
            scale = max(hessian_vector.norm().item(), ggn_vector.norm().item())
            difference = (hessian_vector - ggn_vector).norm().item()
            mismatch[name] = difference / scale if scale > 0 else 0.0
    return mismatch


def mismatch_tolerance(dtype: torch.dtype) -> float:
    """Largest mismatch put down to rounding: the square root of the dtype's epsilon."""
    return torch.finfo(dtype).eps ** 0.5


def _groups(leaves: dict[str, Tensor]) -> list[list[str]]:
    """Consecutive parameters whose batch of directions (rows × their size) stays bounded."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, leaf in leaves.items():
        grown = (len(groups[-1]) + 1) * (size + leaf.numel())
        if groups[-1] and grown > DIRECTION_ELEMENTS:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += leaf.numel()
    return groups


def _one_block_per_row(directions: list[Tensor]) -> list[Tensor]:
    """For each tensor b, a (B, *shape_b) batch that is ``directions[b]`` in row b, else 0."""
    batched = []
    for row, direction in enumerate(directions):
        stack = direction.new_zeros((len(directions), *direction.shape))
        stack[row] = direction
        batched.append(stack)
    return batched

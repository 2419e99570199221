"""Slow, obviously-correct references for the engine, for users who want to verify it.

These are the baselines of the Minimum Sharpness paper's speed comparison (their Fig. 1):
one double-backward pass per parameter entry. Use them on small networks only.

Both check their arguments as the engine does (a module in eval mode with finite parameters,
finite inputs with at least one example, logits (N, K), labels that are class indices of
those K outputs) and raise :class:`~minsharp.errors.MinsharpError` otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from minsharp.curvature.engine import run_forward
from minsharp.curvature.generic import math_attention
from minsharp.curvature.layers import check_measurable
from minsharp.data.batches import check_label_range
from minsharp.tensors import check_examples, check_labels


def brute_force_hessian_diagonal(
    model: nn.Module, inputs: Tensor, labels: Tensor
) -> dict[str, Tensor]:
    """``diag ∇²L`` of the mean cross-entropy, one double-backward per parameter entry.

    ``H_jj = ∂/∂θ_j (∂L/∂θ_j)``: differentiate each gradient entry once more. Cost: one
    backward pass per entry of every trainable parameter. Exact for any network (attention
    runs on its math kernel, which has second derivatives).
    """
    with math_attention():
        logits = _checked_logits(model, inputs)
    check_labels(labels, inputs.shape[0], "brute_force_hessian_diagonal")
    check_label_range(int(labels.max()), logits.shape[1])
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    loss = F.cross_entropy(logits, labels)
    gradients = torch.autograd.grad(loss, [p for _, p in named], create_graph=True)
    diagonal = {}
    for (name, parameter), gradient in zip(named, gradients, strict=True):
        flat = gradient.reshape(-1)
        entries = torch.empty(flat.numel(), dtype=parameter.dtype, device=parameter.device)
        for j in range(flat.numel()):
            (row,) = torch.autograd.grad(
                flat[j], parameter, retain_graph=True, materialize_grads=True
            )
            entries[j] = row.reshape(-1)[j]
        diagonal[name] = entries.reshape(parameter.shape).detach()
    return diagonal


def brute_force_ggn_diagonal(model: nn.Module, inputs: Tensor) -> dict[str, Tensor]:
    """``diag G`` with ``G = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n`` from full Jacobians.

    The generalized Gauss–Newton matrix of the mean cross-entropy, formed from per-example
    Jacobians ``J_n = ∂z_n/∂θ`` computed by ``torch.func.jacrev``. Exact for any network.
    """
    with torch.no_grad():
        _checked_logits(model, inputs)
    named = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def logits_of(parameters: dict[str, Tensor], example: Tensor) -> Tensor:
        return functional_call(model, parameters, (example.unsqueeze(0),)).squeeze(0)

    diagonal = {name: torch.zeros_like(p) for name, p in named.items()}
    for example in inputs:
        jacobians = jacrev(logits_of)(named, example)  # name -> (K, *shape)
        p = logits_of(named, example).softmax(0)
        for name, jacobian in jacobians.items():
            flat = jacobian.reshape(jacobian.shape[0], -1)  # (K, |P|)
            mean = p @ flat
            entries = p @ flat.square() - mean.square()
            diagonal[name] += entries.reshape(diagonal[name].shape)
    return {name: d / inputs.shape[0] for name, d in diagonal.items()}


def _checked_logits(model: nn.Module, inputs: Any) -> Tensor:
    """The logits of ``model`` on ``inputs``, after checking both (see the module text)."""
    check_measurable(model)
    return run_forward(model, check_examples(inputs))

"""The K centred cotangents of the logits, and their backward passes to the layers' outputs.

``diag p − p pᵀ = Σ_k c_k c_kᵀ`` with ``c_k = √p_k (e_k − p)`` (theory §1), so every sum of
squares the engine forms is a sum over these K cotangents pulled back to a layer. They are
made a chunk of classes at a time, as one (k, N, …) tensor, and pulled back by one plain
backward pass per class, or one vectorised pass per chunk where one class's cotangents are
small (:data:`CHUNK_ELEMENTS`). Measured on CPU (torch 2.13, 784-100-100-K MLP, N = 1000),
K plain passes beat one vectorised pass of all K by 1.2× at K = 10 and 2.4× at K = 100:
the vectorised pass copies and re-strides every saved tensor, and K cotangents held at once
leave the caches, where one class's cotangents, consumed by the layer rules right after its
pass, stay in them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge

#: Below this many elements (one class's cotangents at the start and at every edge), a
#: backward pass is dominated by its fixed cost, and several classes share one vectorised
#: pass; above it each class gets its own plain pass (SmallMLP, N = 1000, K = 10: plain
#: passes 1.2× faster than vectorised ones of 4 classes, one thread).
CHUNK_ELEMENTS = 1 << 16


def class_cotangents(probabilities: Tensor, classes: slice) -> Tensor:
    """``c_k = √p_k (e_k − p)`` (k, N, K) for the classes ``k`` in ``classes``."""
    roots = probabilities.sqrt().T[classes, :, None]  # (k, N, 1)
    cotangents = probabilities.unsqueeze(0) * -roots
    picked = torch.arange(classes.start, classes.stop, device=probabilities.device)
    cotangents[torch.arange(len(picked)), :, picked] += roots[:, :, 0]
    return cotangents


def head_unit_squares(probabilities: Tensor) -> Tensor:
    """``Σ_k c_k^⊙2 = p ⊙ (1 − p)`` (N, 1, K): the diagonal of ``diag p − p pᵀ``.

    The rows ``δ`` of a head layer (logits = W h + b) are the centred cotangents themselves,
    so its sums need only these squares, not the K × K cotangents.
    """
    return (probabilities * (1 - probabilities)).unsqueeze(1)


def head_cotangents(weight: Tensor, probabilities: Tensor) -> Callable[[slice], Tensor]:
    """``Wᵀ c_k = √p_k (W[k] − Wᵀ p)`` (k, N, H), pulled back through the head, per group.

    The centred cotangents of the logits pulled back through ``logits = W h + b`` at a cost
    of N·H each, instead of N·K·H for ``c_k`` times ``W``: no K × K block is ever formed.
    ``Wᵀ p`` is formed once, by one (N, K) × (K, H) product, for all groups.
    """
    # Contiguous: a transposed view here made every group's (k, N, H) product
    # non-contiguous too (the output follows the first operand's strides).
    roots = probabilities.sqrt().T.contiguous().unsqueeze(2)  # (K, N, 1)
    mean_row = probabilities @ weight  # (N, H): Wᵀ p_n for every example

    def group(classes: slice) -> Tensor:
        return roots[classes] * (weight[classes].unsqueeze(1) - mean_row)

    return group


def pull_back(
    output: Tensor,
    edges: list[GradientEdge],
    cotangents: Callable[[slice], Tensor],
    count: int,
    size: int,
) -> Iterator[tuple[Tensor | None, ...]]:
    """``count`` cotangents of ``output`` back-propagated to every edge, a chunk at a time.

    ``cotangents(classes)`` gives the cotangents (k, *output shape) of a slice of the
    classes. Yields per chunk, for each edge, the cotangents (k, *edge shape) of its k
    classes, or None where the output does not depend on the edge. ``size``: elements one
    class's cotangents occupy at ``output`` and the edges together; classes share a
    vectorised pass while a chunk stays under :data:`CHUNK_ELEMENTS`, and get one plain pass
    each otherwise (convolution and max-pooling have no batching rule: vectorised they
    would run once per class and then be stacked). The graph is kept until the last chunk.
    """
    step = max(1, min(count, CHUNK_ELEMENTS // max(size, 1)))
    for first in range(0, count, step):
        piece = cotangents(slice(first, min(first + step, count)))
        keep = first + piece.shape[0] < count
        if piece.shape[0] == 1:
            results = torch.autograd.grad(
                output, edges, piece[0], retain_graph=keep, allow_unused=True
            )
            yield tuple(None if r is None else r.unsqueeze(0) for r in results)
        else:
            yield torch.autograd.grad(
                output, edges, piece, retain_graph=keep, allow_unused=True, is_grads_batched=True
            )

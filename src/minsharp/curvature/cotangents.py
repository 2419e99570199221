"""The K − 1 cotangents of the logits that factor their Hessian, and their backward passes.

``diag p − p pᵀ = RᵀR`` with the rows ``√p_k (e_k − p)`` of R (theory §1); since ``√pᵀ R = 0``,
the Householder reflection that sends ``√p`` to ``−e_K`` zeroes R's last row and leaves the
other K − 1 rows in the same simple form, ``c_j = √p_j (e_j − q)`` with
``q = (p + √p_K e_K) / (1 + √p_K)``. Every sum of squares the engine forms is therefore a sum
over these K − 1 cotangents pulled back to a layer: one class fewer to push back than the
plain factorisation: a tenth less work at K = 10, half at K = 2. They are made a chunk at
a time, as one (k, N, …) tensor, and pulled back by one plain backward pass per cotangent, or
one vectorised pass per chunk where one cotangent is small (:data:`CHUNK_ELEMENTS`). Measured
on CPU (torch 2.13, 784-100-100-K MLP, N = 1000), plain passes beat one vectorised pass of
all K by 1.2× at K = 10 and 2.4× at K = 100: the vectorised pass copies and re-strides every
saved tensor, and K cotangents held at once leave the caches, where one, consumed by the
layer rules right after its pass, stays in them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge

#: Below this many elements (one class's cotangents at the start and at every edge), a
#: backward pass is dominated by its fixed cost, and several classes share one vectorised
#: pass; above it each class gets its own plain pass (SmallMLP, N = 1000, K = 10: plain
#: passes 1.2× faster than vectorised ones of 4 classes, one thread).
CHUNK_ELEMENTS = 1 << 16


#: Class counts whose softmax the engine writes out on CPU: torch's kernel takes a scalar path
#: over rows shorter than one vector (16 float32 values here), slower from 3 classes on than
#: max-shift, exp and normalise (``benchmarks/results/engine_choices.md``: 1.9× at 10
#: classes; torch's own is 2.4–3.3× faster at 16 and 100 classes, and faster at 2).
WRITTEN_OUT_SOFTMAX_CLASSES = range(3, 16)


def class_probabilities(logits: Tensor) -> Tensor:
    """The softmax ``p_nk = exp(z_nk − m_n) / Σ_j exp(z_nj − m_n)``, ``m_n = max_j z_nj``.

    Written out for the class counts torch's CPU kernel handles slowly
    (:data:`WRITTEN_OUT_SOFTMAX_CLASSES`); ``torch.softmax`` otherwise.
    """
    if logits.device.type != "cpu" or logits.shape[1] not in WRITTEN_OUT_SOFTMAX_CLASSES:
        return logits.softmax(1)
    exponentials = (logits - logits.amax(1, keepdim=True)).exp_()
    return exponentials.div_(exponentials.sum(1, keepdim=True))


def cotangent_count(classes: int) -> int:
    """How many cotangents factor the logits' Hessian over ``classes`` classes: K − 1.

    The engine sees K ≥ 2 only (``recording.check_logits`` refuses fewer classes).
    """
    return classes - 1


def _shifted_mean(probabilities: Tensor) -> tuple[Tensor, Tensor]:
    """``√p`` (N, K) and ``q = (p + √p_K e_K) / (1 + √p_K)`` (N, K), with K the last class.

    ``1 + √p_K ≥ 1``: the reflection that sends ``√p`` to ``−e_K`` (not to ``+e_K``, whose
    denominator ``1 − √p_K`` vanishes for confident predictions of class K) is always stable.
    """
    roots = probabilities.sqrt()
    last = roots[:, -1:]
    shifted = probabilities.clone()
    shifted[:, -1:] += last
    return roots, shifted.div_(1 + last)


def class_cotangents(probabilities: Tensor, classes: slice) -> Tensor:
    """``c_j = √p_j (e_j − q)`` (k, N, K) for the cotangents ``j`` in ``classes`` (j < K − 1).

    ``Σ_j c_j c_jᵀ = diag p − p pᵀ`` over the :func:`cotangent_count` cotangents.
    """
    roots, mean = _shifted_mean(probabilities)
    picked = torch.arange(classes.start, classes.stop, device=probabilities.device)
    chosen = roots.T[classes, :, None]  # (k, N, 1)
    cotangents = mean.unsqueeze(0) * -chosen
    cotangents[torch.arange(len(picked)), :, picked] += chosen[:, :, 0]
    return cotangents


def head_unit_squares(probabilities: Tensor) -> Tensor:
    """``Σ_j c_j^⊙2 = p ⊙ (1 − p)`` (N, 1, K): the diagonal of ``diag p − p pᵀ``.

    The rows ``δ`` of a head layer (logits = W h + b) are the cotangents ``c_j`` themselves,
    so its sums need only these squares, not the (K − 1) × K cotangents.
    """
    return (probabilities * (1 - probabilities)).unsqueeze(1)


class HeadCotangents(Protocol):
    """The cotangents (k, N, H) at a head's input for a slice of them, into ``out`` if given."""

    def __call__(self, classes: slice, out: Tensor | None = None) -> Tensor:
        """``Wᵀ c_j`` for ``j`` in ``classes``, written into ``out`` (k, N, H) if given."""


def head_cotangents(weight: Tensor, probabilities: Tensor) -> HeadCotangents:
    """``Wᵀ c_j = √p_j (W[j] − Wᵀ q)`` (k, N, H), pulled back through the head, per group.

    The cotangents of :func:`class_cotangents` pulled back through ``logits = W h + b`` at a
    cost of N·H each, instead of N·K·H for ``c_j`` times ``W``: no K × K block is ever formed.
    ``Wᵀ q`` is formed once, by one (N, K) × (K, H) product, for all groups.
    """
    roots, mean = _shifted_mean(probabilities)
    # Contiguous: a transposed view here made every group's (k, N, H) product
    # non-contiguous too (the output follows the first operand's strides).
    roots = roots.T.contiguous().unsqueeze(2)  # (K, N, 1)
    mean_row = mean @ weight  # (N, H): Wᵀ q_n for every example

    def group(classes: slice, out: Tensor | None = None) -> Tensor:
        difference = torch.sub(weight[classes].unsqueeze(1), mean_row, out=out)
        return difference.mul_(roots[classes])

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

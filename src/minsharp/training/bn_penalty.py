"""Training with a BN-sharpness penalty (Yi, Zhang, Chen, Ma & Liu, IJCAI 2019; theory §5).

Source: "BN-invariant sharpness regularizes the training model to better generalization".

**Reconstructed** (theory §5): the paper's text was not available to us. The objective is

    J(w) = L(w) + λ·S(w),     S(w) ≈ E_{t ~ U(0, δ)} [L(w + t v) − L(w)],

with ``L`` the minibatch cross-entropy (batch-norm in training mode, batch statistics) and
``v`` the BN-sharpness direction of :func:`minsharp.measures.bn_sharpness.
bn_sharpness_direction`: per block ``k`` (a row of a weight feeding a batch-norm, one entry of
its bias, or any other parameter tensor as a whole), ``v_k = ‖w_k‖ g_k / ‖g_k‖`` with
``g = ∇L(w)``. Collecting the terms in ``L(w)``,

    J(w) = (1 − λ)·L(w) + λ·E_t[L(w + t v)].

**The combined gradient.** As theory §5 prescribes, ``v`` is held fixed (no derivative through
``v``'s dependence on ``w``, as in SAM's first-order step). Then

    ∇J(w) = (1 − λ)·∇L(w) + λ·E_t[∇L(w + t v)],

and one draw ``t ~ U(0, δ)`` per step gives the estimate used here,

    ĝ = (1 − λ)·∇L(w) + λ·∇L(w + t v),

unbiased for that gradient given the minibatch. The neglected term is
``λ·E_t[t·(∂v/∂w)ᵀ ∇L(w + t v)]``, of order ``λ·δ``. For ``0 ≤ λ ≤ 1``, ``ĝ`` is a convex
combination of the two gradients; ``λ > 1`` is allowed (the weight of ``∇L(w)`` turns
negative, still the gradient of ``L + λ·S``). Weight decay and momentum then act on ``ĝ``
exactly as on a plain gradient (:func:`minsharp.training.sgd.train_classifier`).

**One step** (:meth:`BNSharpnessPenalty.gradient`): forward and backward on the minibatch at
``w`` (this pass, and only this one, updates the batch-norm running statistics); the
direction ``v`` from the gradients; a forward and backward on the same minibatch at
``w + t v`` (training mode again, so batch statistics of the perturbed network, with the
running statistics left untouched); then ``p.grad ← ĝ`` for every trainable parameter. About
twice the cost of a plain SGD step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from minsharp.errors import ModelError
from minsharp.measures.bn_sharpness import batchnorm_rows, bn_sharpness_direction
from minsharp.measures.registry import has_batchnorm

#: Examples of the first minibatch used to find the weights that feed a batch-norm.
PROBE_EXAMPLES = 8

#: Added to the run's seed to seed the generator of the radii t (kept apart from the
#: minibatch order, which is then the same with and without the penalty).
RADIUS_SEED_OFFSET = 0x5BD1E995


@dataclass(frozen=True)
class PenaltyStep:
    """What one step of :meth:`BNSharpnessPenalty.gradient` computed.

    Attributes:
        loss: the minibatch loss ``L(w)`` (detached).
        logits: the logits at ``w`` (detached), for the training accuracy.
        perturbed_loss: ``L(w + t v)`` (detached).
        radius: the ``t`` drawn for the step.
    """

    loss: Tensor
    logits: Tensor
    perturbed_loss: Tensor
    radius: float


class BNSharpnessPenalty:
    """The gradient of ``L + λ·S_BN`` for SGD, one minibatch at a time (see the module).

    Args:
        model: the network being trained, with batch-norm layers.
        probe: a few training inputs (at least two), to find the weights feeding a batch-norm
            (:func:`~minsharp.measures.bn_sharpness.batchnorm_rows`); running statistics are
            not disturbed.
        weight: ``λ ≥ 0``.
        delta: ``δ ∈ (0, 1]``, the largest radius relative to each block's norm.
        seed: seeds the generator of the radii ``t ~ U(0, δ)``.

    Raises:
        ModelError: the model has no batch-norm layer (BN-sharpness is undefined there).
    """

    def __init__(
        self, model: nn.Module, probe: Tensor, *, weight: float, delta: float, seed: int
    ) -> None:
        if not has_batchnorm(model):
            raise ModelError(
                "training with bn_sharpness_weight > 0 needs a network with batch-norm layers "
                "(BN-sharpness scales each block by the weights feeding a normalised unit); "
                "use e.g. the zoo's small_cnn or mlp with batchnorm=True, or set "
                "bn_sharpness_weight to 0."
            )
        if len(probe) < 2:
            raise ModelError("BN-sharpness training needs at least two training examples.")
        self.weight = float(weight)
        self.delta = float(delta)
        self.rows = batchnorm_rows(model, probe[:PROBE_EXAMPLES])
        self.generator = torch.Generator().manual_seed((seed + RADIUS_SEED_OFFSET) % 2**63)

    def draw_radius(self) -> float:
        """The next ``t ~ U(0, δ)`` from the penalty's own generator."""
        return self.delta * float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def gradient(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> PenaltyStep:
        """Set ``p.grad = (1 − λ)∇L(w) + λ∇L(w + t v)`` for every trainable ``p``.

        ``t`` is the next draw of :meth:`draw_radius`; see :func:`combined_gradient`.
        """
        return combined_gradient(
            model, inputs, targets, rows=self.rows, weight=self.weight, radius=self.draw_radius()
        )


def combined_gradient(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    rows: dict[str, str | None],
    weight: float,
    radius: float,
) -> PenaltyStep:
    """Set ``p.grad = (1 − λ)·∇L(w) + λ·∇L(w + t v)``, ``v`` held fixed (theory §5).

    ``L`` is the mean cross-entropy of ``model`` (in its current mode, normally training) on
    ``(inputs, targets)``; ``v`` is :func:`~minsharp.measures.bn_sharpness.
    bn_sharpness_direction` of ``∇L(w)`` with the row blocks ``rows``. The pass at ``w``
    runs on the model itself and updates its batch-norm running statistics as a plain step
    would; the pass at ``w + t v`` runs functionally on copies of the buffers, so the model's
    parameters and buffers are untouched by it. Parameters that do not reach the loss get
    ``grad = None``.

    Args:
        model: the network.
        inputs: the minibatch inputs.
        targets: the minibatch labels.
        rows: weight name → bias name of the layers feeding a batch-norm.
        weight: ``λ``.
        radius: ``t``.

    Returns:
        The losses at both points, the logits at ``w`` and ``t``.
    """
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    names = list(parameters)
    logits = model(inputs)
    loss = F.cross_entropy(logits, targets)
    first = torch.autograd.grad(loss, list(parameters.values()), allow_unused=True)
    gradient = dict(zip(names, first, strict=True))
    direction = bn_sharpness_direction(
        {name: p.detach() for name, p in parameters.items()}, gradient, rows
    )
    point = {
        name: (p.detach() + radius * direction[name]).requires_grad_()
        for name, p in parameters.items()
    }
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    perturbed_logits = functional_call(model, {**point, **buffers}, (inputs,))
    perturbed_loss = F.cross_entropy(perturbed_logits, targets)
    second = torch.autograd.grad(perturbed_loss, list(point.values()), allow_unused=True)
    for p, at_w, at_shifted in zip(parameters.values(), first, second, strict=True):
        p.grad = _combine(at_w, at_shifted, weight)
    return PenaltyStep(loss.detach(), logits.detach(), perturbed_loss.detach(), radius)


def _combine(at_w: Tensor | None, at_shifted: Tensor | None, weight: float) -> Tensor | None:
    """``(1 − λ)·a + λ·b``, a missing gradient counting as zero (``None`` if both are)."""
    if at_w is None and at_shifted is None:
        return None
    if at_w is None:
        assert at_shifted is not None
        return weight * at_shifted
    if at_shifted is None:
        return (1.0 - weight) * at_w
    return (1.0 - weight) * at_w + weight * at_shifted


def check_penalty_settings(weight: object, delta: object) -> list[str]:
    """Problems with a penalty weight ``λ`` and radius ``δ`` (empty when they are valid)."""
    problems = []
    if (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not math.isfinite(weight)
        or weight < 0
    ):
        problems.append(f"bn_sharpness_weight must be a non-negative number, got {weight!r}")
    if (
        isinstance(delta, bool)
        or not isinstance(delta, (int, float))
        or not math.isfinite(delta)
        or not 0 < delta <= 1
    ):
        problems.append(
            f"bn_sharpness_delta must be a number in (0, 1] (the radius relative to each "
            f"block's norm), got {delta!r}"
        )
    return problems

"""The mean cross-entropy of a model over a whole data set, as a function of its parameters.

Loss-based measures (ε-sharpness, adaptive sharpness, PAC-Bayes flatness, BN-sharpness) and
the full-Hessian ones (top eigenvalue, Hutchinson's trace, quotient-manifold flatness)
evaluate ``L(θ) = (1/N) Σ_n ℓ_n(θ)`` (MATH §0) at perturbed parameters, its gradient, and
Hessian-vector products, many times over the same data. :class:`DatasetObjective` holds the
batches once, evaluates the model functionally (the model itself is never modified) and sums
over batches in float64.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from minsharp.curvature.engine import DEFAULT_BATCH_SIZE, autograd_enabled, run_forward
from minsharp.curvature.layers import check_measurable, model_dtype_device, preserved_buffers
from minsharp.data.batches import check_label_range, labelled_batches
from minsharp.errors import MinsharpError

Parameters = dict[str, Tensor]


class DatasetObjective:
    """``L(θ)`` = mean softmax cross-entropy of ``model`` over all of ``data``.

    Args:
        model: a classifier in eval mode; its trainable parameters are the variables θ.
        data: ``(X, y)`` or an iterable/DataLoader of ``(X, y)`` batches (read once).
        batch_size: examples per forward pass.
    """

    def __init__(self, model: nn.Module, data: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        check_measurable(model)
        self.model = model
        self.dtype, self.device = model_dtype_device(model)
        self.parameters: Parameters = {
            name: p.detach() for name, p in model.named_parameters() if p.requires_grad
        }
        if not self.parameters:
            raise MinsharpError("model has no trainable parameters to measure.")
        self._frozen = {
            name: p.detach() for name, p in model.named_parameters() if not p.requires_grad
        }
        self._buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        self.batches = list(labelled_batches(data, batch_size, self.device, self.dtype))
        self.num_examples = sum(x.shape[0] for x, _ in self.batches)
        self.num_classes = self._check_labels()

    def _check_labels(self) -> int:
        inputs, _ = self.batches[0]
        with preserved_buffers(self.model), torch.no_grad():
            num_classes = run_forward(self.model, inputs[:1]).shape[1]
        check_label_range(max(int(y.max()) for _, y in self.batches), num_classes)
        return num_classes

    def logits(self, inputs: Tensor, parameters: Mapping[str, Tensor] | None = None) -> Tensor:
        """The model's logits on ``inputs`` at ``parameters`` (default: the model's own)."""
        values = {**self._frozen, **(parameters or self.parameters), **self._buffers}
        return functional_call(self.model, values, (inputs,), strict=True)

    def _weighted_losses(self, parameters: Mapping[str, Tensor] | None) -> Iterator[Tensor]:
        """Each batch's loss, weighted by its share of the examples (their sum is ``L``)."""
        for inputs, labels in self.batches:
            losses = nn.functional.cross_entropy(
                self.logits(inputs, parameters), labels, reduction="sum"
            )
            yield losses / self.num_examples

    def loss(self, parameters: Mapping[str, Tensor] | None = None) -> float:
        """``L(θ)`` at ``parameters`` (default: the model's own)."""
        with torch.no_grad():
            return float(sum(loss.double() for loss in self._weighted_losses(parameters)))

    def error_rate(self, parameters: Mapping[str, Tensor] | None = None) -> float:
        """Fraction of misclassified examples at ``parameters``."""
        wrong = 0
        with torch.no_grad():
            for inputs, labels in self.batches:
                wrong += int((self.logits(inputs, parameters).argmax(1) != labels).sum())
        return wrong / self.num_examples

    def gradient(self, parameters: Mapping[str, Tensor] | None = None) -> tuple[float, Parameters]:
        """``(L(θ), ∇L(θ))`` at ``parameters`` (default: the model's own)."""
        point = {
            name: t.detach().requires_grad_() for name, t in (parameters or self.parameters).items()
        }
        total = 0.0
        gradient = {name: torch.zeros_like(t, dtype=torch.float64) for name, t in point.items()}
        with autograd_enabled():
            for loss in self._weighted_losses(point):
                parts = torch.autograd.grad(loss, list(point.values()), allow_unused=True)
                total += float(loss.detach())
                for name, part in zip(point, parts, strict=True):
                    if part is not None:
                        gradient[name] += part
        return total, {name: g.to(self.dtype) for name, g in gradient.items()}

    def hessian_vector_product(self, vector: Mapping[str, Tensor]) -> Parameters:
        """``H v`` at the model's parameters, ``H = ∇²L`` the full Hessian (all blocks)."""
        point = {name: t.detach().requires_grad_() for name, t in self.parameters.items()}
        product = {name: torch.zeros_like(t, dtype=torch.float64) for name, t in point.items()}
        with autograd_enabled():
            for loss in self._weighted_losses(point):
                gradient = torch.autograd.grad(
                    loss, list(point.values()), create_graph=True, allow_unused=True
                )
                terms = [
                    (g * vector[name]).sum()
                    for name, g in zip(point, gradient, strict=True)
                    if g is not None
                ]
                directional = sum(terms)
                if not isinstance(directional, Tensor) or not directional.requires_grad:
                    continue  # no parameter reaches this batch's loss, or only linearly
                parts = torch.autograd.grad(directional, list(point.values()), allow_unused=True)
                for name, part in zip(point, parts, strict=True):
                    if part is not None:
                        product[name] += part
        return {name: p.to(self.dtype) for name, p in product.items()}

    def perturbed(self, direction: Mapping[str, Tensor], scale: float = 1.0) -> Parameters:
        """``θ + scale · direction`` (parameters missing from ``direction`` unperturbed)."""
        return {
            name: p + scale * direction[name] if name in direction else p
            for name, p in self.parameters.items()
        }


def flatten(tensors: Mapping[str, Tensor]) -> Tensor:
    """Concatenate the tensors of a parameter dictionary into one float64 vector."""
    return torch.cat([t.reshape(-1).double() for t in tensors.values()])


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> Parameters:
    """Split a flat vector into tensors shaped (and typed) like ``like``."""
    pieces, offset = {}, 0
    for name, t in like.items():
        pieces[name] = vector[offset : offset + t.numel()].reshape(t.shape).to(t.dtype)
        offset += t.numel()
    return pieces

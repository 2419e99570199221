"""The mean cross-entropy of a model over a whole data set, as a function of its parameters.

Loss-based measures (ε-sharpness, adaptive sharpness, PAC-Bayes flatness, BN-sharpness) and
the full-Hessian ones (top eigenvalue, Hutchinson's trace, quotient-manifold flatness)
evaluate ``L(θ) = (1/N) Σ_n ℓ_n(θ)`` (theory §0) at perturbed parameters, its gradient, and
Hessian-vector products, many times over the same data. :class:`DatasetObjective` holds the
batches once, evaluates the model functionally (the model itself is never modified) and sums
over batches in float64.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from minsharp import distributed
from minsharp.curvature import budget
from minsharp.curvature.engine import DEFAULT_BATCH_SIZE, autograd_enabled, run_forward
from minsharp.curvature.generic import math_attention
from minsharp.curvature.guard import PROBE_EXAMPLES
from minsharp.curvature.layers import check_measurable, model_dtype_device, preserved_buffers
from minsharp.data.batches import check_label_range, input_batches, labelled_batches
from minsharp.errors import MinsharpError, NoSecondDerivativeError

Parameters = dict[str, Tensor]

#: Key of the batch losses among the sums (never a parameter name: those hold no "/").
_LOSS = "/loss"


class DatasetObjective:
    """``L(θ)`` = mean softmax cross-entropy of ``model`` over all of ``data``.

    Args:
        model: a classifier in eval mode; its trainable parameters are the variables θ.
        data: ``(X, y)`` or an iterable/DataLoader of ``(X, y)`` batches (read once).
        batch_size: examples per forward pass; None (default): for ``(X, y)`` the fewest
            even batches within the memory budget (:mod:`minsharp.curvature.budget`), for an
            iterable its own batches.
    """

    def __init__(self, model: nn.Module, data: Any, batch_size: int | None = None) -> None:
        check_measurable(model)
        self.model = model
        self.dtype, self.device = model_dtype_device(model)
        if batch_size is None:
            batch_size = self._budget_batch_size(data)
        self.parameters: Parameters = {
            name: p.detach() for name, p in model.named_parameters() if p.requires_grad
        }
        if not self.parameters:
            raise MinsharpError("model has no trainable parameters to measure.")
        self._frozen = {
            name: p.detach() for name, p in model.named_parameters() if not p.requires_grad
        }
        self._buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        self.batches: list[tuple[Tensor, Tensor]] = []
        """The batches this rank computes on: all of them outside ``torch.distributed``."""
        self._positions: list[int] = []
        """Each of :attr:`batches`' position among all the batches of the data."""
        self.num_examples = 0
        self.batch_size = 0
        """Examples in the largest forward pass (``batch_size`` as resolved)."""
        largest_label = 0
        first_inputs = None
        for chunk, (inputs, labels) in enumerate(
            labelled_batches(data, batch_size, self.device, self.dtype)
        ):
            first_inputs = inputs if first_inputs is None else first_inputs
            self.num_examples += inputs.shape[0]
            self.batch_size = max(self.batch_size, inputs.shape[0])
            largest_label = max(largest_label, int(labels.max()))
            if distributed.owns(chunk):
                self.batches.append((inputs, labels))
                self._positions.append(chunk)
        self._num_batches = chunk + 1
        assert first_inputs is not None  # labelled_batches raises on empty data
        self.probe_inputs = first_inputs[:PROBE_EXAMPLES]
        """The first examples of the data (the same on every rank), for checks on the model."""
        with preserved_buffers(self.model), torch.no_grad():
            self.num_classes = run_forward(self.model, first_inputs[:1]).shape[1]
        check_label_range(largest_label, self.num_classes)

    def _budget_batch_size(self, data: Any) -> int:
        """The fewest even batches of ``(X, y)`` within the memory budget; a loader's own.

        A Hessian-vector product keeps the forward's graph and the gradient's (about
        ``2 · GRAPH_FACTOR`` module outputs per example, :mod:`minsharp.curvature.budget`).
        """
        if not (isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor)):
            return sys.maxsize  # an iterable of batches: take them as they come
        inputs = data[0]
        if inputs.dim() == 0 or inputs.shape[0] == 0:
            return DEFAULT_BATCH_SIZE  # let the data checks refuse it, with their message
        # The first examples, through the data checks (dtype, finiteness) before the model.
        first = inputs[:PROBE_EXAMPLES]
        probe = next(input_batches(first, PROBE_EXAMPLES, self.device, self.dtype))
        with preserved_buffers(self.model):
            need = budget.footprint(
                self.model,
                [],
                probe,
                diagonal=False,
                forward=lambda batch: run_forward(self.model, batch),
            )
        graphs = dataclasses.replace(need, activations=2 * need.activations)
        return budget.even_split(inputs.shape[0], budget.batch_size(graphs, probe.element_size()))

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

    def _losses_by_position(self) -> Tensor:
        """A float64 slot per batch of the data, for this rank's batch losses."""
        return torch.zeros(self._num_batches, dtype=torch.float64, device=self.device)

    @staticmethod
    def _total(losses: Tensor) -> float:
        """``L`` from every batch's loss, correctly rounded: the same for any number of ranks.

        Loss differences (ε-sharpness, adaptive sharpness, BN-sharpness) cancel most digits,
        so the sum must not depend on the order in which ranks add their shares.
        """
        return math.fsum(losses.tolist())

    def loss(self, parameters: Mapping[str, Tensor] | None = None) -> float:
        """``L(θ)`` at ``parameters`` (default: the model's own)."""

        def local() -> dict[str, Tensor]:
            losses = self._losses_by_position()
            for position, loss in zip(
                self._positions, self._weighted_losses(parameters), strict=True
            ):
                losses[position] = loss.double()
            return {_LOSS: losses}

        with torch.no_grad():
            return self._total(distributed.summed_over_ranks(local)[_LOSS])

    def error_rate(self, parameters: Mapping[str, Tensor] | None = None) -> float:
        """Fraction of misclassified examples at ``parameters``."""

        def local() -> dict[str, Tensor]:
            wrong = torch.zeros((), dtype=torch.float64, device=self.device)
            for inputs, labels in self.batches:
                wrong += (self.logits(inputs, parameters).argmax(1) != labels).sum()
            return {"wrong": wrong}

        with torch.no_grad():
            return float(distributed.summed_over_ranks(local)["wrong"]) / self.num_examples

    def gradient(self, parameters: Mapping[str, Tensor] | None = None) -> tuple[float, Parameters]:
        """``(L(θ), ∇L(θ))`` at ``parameters`` (default: the model's own)."""
        point = {
            name: t.detach().requires_grad_() for name, t in (parameters or self.parameters).items()
        }

        def local() -> dict[str, Tensor]:
            sums = _BatchSums(point, self._sums_batches())
            losses = self._losses_by_position()
            for position, loss in zip(self._positions, self._weighted_losses(point), strict=True):
                sums.add(torch.autograd.grad(loss, list(point.values()), allow_unused=True))
                losses[position] = loss.detach().double()
            return {_LOSS: losses, **sums.total()}

        with autograd_enabled():
            sums = distributed.summed_over_ranks(local)
        total = self._total(sums.pop(_LOSS))
        return total, {name: g.to(self.dtype) for name, g in sums.items()}

    def hessian_vector_product(self, vector: Mapping[str, Tensor]) -> Parameters:
        """``H v`` at the model's parameters, ``H = ∇²L`` the full Hessian (all blocks).

        One product; for several, :meth:`hessian_products` shares the first backward.
        """
        with self.hessian_products(reuse=False) as product:
            return product(vector)

    @contextmanager
    def hessian_products(
        self, *, reuse: bool = True
    ) -> Iterator[Callable[[Mapping[str, Tensor]], Parameters]]:
        """A function ``v ↦ H v`` at the model's parameters, ``H = ∇²L`` (all blocks).

        ``H v = ∇(∇L · v)``: a gradient of the directional derivative, a double backward.
        With ``reuse`` each batch's forward and first backward (its gradient, with its graph)
        are computed once on entry and every product only runs the double backward: a
        product then costs about 1.4 training steps instead of 2.7 (paper MLP, N = 1000).
        The graphs stay in memory until the block exits; when they would take more than
        :data:`~minsharp.curvature.budget.MEMORY_BUDGET`, each product recomputes them.
        Attention (``scaled_dot_product_attention``, ``nn.MultiheadAttention``) runs on the
        math kernel here, and only here. Raises :class:`NoSecondDerivativeError` when an
        operation of the model has no double backward in torch.
        """
        point = {name: t.detach().requires_grad_() for name, t in self.parameters.items()}
        targets = list(point.values())

        def gradients() -> Iterator[tuple[Tensor | None, ...]]:
            for loss in self._weighted_losses(point):
                yield torch.autograd.grad(loss, targets, create_graph=True, allow_unused=True)

        # Double backward: attention on its math kernel (the fused CPU one has none).
        with autograd_enabled(), math_attention():
            kept = list(gradients()) if reuse and self._graphs_fit() else None

            def local(vector: Mapping[str, Tensor]) -> dict[str, Tensor]:
                product = _BatchSums(point, self._sums_batches())
                for gradient in gradients() if kept is None else kept:
                    # H v = ∂(∇L)/∂θ applied to v: the gradient's own backward with v as its
                    # cotangent (no graph for the inner product ∇L · v).
                    reached = [
                        (g, vector[name])
                        for name, g in zip(point, gradient, strict=True)
                        if g is not None and g.requires_grad
                    ]
                    if not reached:
                        continue  # no parameter reaches this batch's loss, or only linearly
                    outputs, cotangents = zip(*reached, strict=True)
                    try:
                        parts = torch.autograd.grad(
                            outputs,
                            targets,
                            grad_outputs=cotangents,
                            allow_unused=True,
                            retain_graph=kept is not None,
                        )
                    except RuntimeError as error:  # an operation without a double backward
                        raise _no_second_derivative(error) from error
                    product.add(parts)
                return product.total()

            def product(vector: Mapping[str, Tensor]) -> Parameters:
                summed = distributed.summed_over_ranks(lambda: local(vector))
                return {name: p.to(self.dtype) for name, p in summed.items()}

            yield product

    def _sums_batches(self) -> bool:
        """Whether per-batch tensors are added up here: over several batches, or ranks."""
        return distributed.active() or self._num_batches > 1

    def _graphs_fit(self) -> bool:
        """Whether every batch's first-order graph fits the memory budget at once."""
        with preserved_buffers(self.model):
            need = budget.footprint(
                self.model,
                [],
                self.probe_inputs,
                diagonal=False,
                forward=lambda inputs: run_forward(self.model, inputs),
            )
        # The create_graph backward saves about as much again as the forward.
        per_example = 2 * budget.GRAPH_FACTOR * need.activations
        itemsize = self.probe_inputs.element_size()
        local_examples = sum(inputs.shape[0] for inputs, _ in self.batches)
        return local_examples * per_example * itemsize <= budget.MEMORY_BUDGET

    def perturbed(self, direction: Mapping[str, Tensor], scale: float = 1.0) -> Parameters:
        """``θ + scale · direction`` (parameters missing from ``direction`` unperturbed)."""
        return {
            name: p + scale * direction[name] if name in direction else p
            for name, p in self.parameters.items()
        }


class _BatchSums:
    """Per-parameter sums of per-batch tensors, in float64 when there is anything to add.

    With one batch on one rank the batch's tensors are the sums, kept as they come: a float64
    copy would only cost time (about a millisecond per million parameters).
    """

    def __init__(self, like: Mapping[str, Tensor], summing: bool) -> None:
        self._like, self._summing = like, summing
        self._sums: dict[str, Tensor] = {}

    def add(self, parts: Iterable[Tensor | None]) -> None:
        for name, part in zip(self._like, parts, strict=True):
            if part is None:
                continue
            if name in self._sums:
                self._sums[name] += part
            else:
                self._sums[name] = part.double() if self._summing else part

    def total(self) -> dict[str, Tensor]:
        """The sums by name; zeros (float64 when summing) where no batch reached a parameter."""
        dtype = torch.float64 if self._summing else None
        return {
            name: self._sums[name] if name in self._sums else torch.zeros_like(t, dtype=dtype)
            for name, t in self._like.items()
        }


def _no_second_derivative(error: RuntimeError) -> NoSecondDerivativeError:
    return NoSecondDerivativeError(
        "the Hessian-vector product needs second derivatives of the model, and torch has "
        f"none for an operation of this model ({error}). Replace that operation by one with a "
        "double backward, or use a measure built on the exact diagonal or trace with "
        "curvature='ggn' (first derivatives only)."
    )


def flatten(tensors: Mapping[str, Tensor]) -> Tensor:
    """Concatenate the tensors of a parameter dictionary into one float64 vector."""
    return torch.cat([t.reshape(-1).double() for t in tensors.values()])


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> Parameters:
    """Split a flat vector into tensors shaped like ``like``, on its dtype and device."""
    pieces, offset = {}, 0
    for name, t in like.items():
        pieces[name] = vector[offset : offset + t.numel()].reshape(t.shape).to(t)
        offset += t.numel()
    return pieces

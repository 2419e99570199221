"""The engine's whole pass for a Linear–ReLU chain, by hand: forward, then cotangents.

For ``nn.Sequential(Linear, ReLU, Linear, ReLU, …, Linear)`` the pull-back of theory §1 is
two operations per layer: through a ReLU, ``δ ← δ ⊙ 1[h > 0]`` with ``h`` the ReLU's output
(the next Linear's recorded input); through a Linear, ``δ ← δ W``. Done here for a chunk of
cotangents at a time, each step is one (k·N, C) × (C, P) product and one mask, where the
general path runs one autograd backward pass per cotangent: on a 784-100-100-10 MLP
(N = 1000, K = 10) the ten passes' fixed costs were a third of the whole trace. The forward
runs by hand too, without hooks or an autograd graph. Against the general path the chain
runs 1.1–1.8× faster (``benchmarks/results/engine_choices.md``).

A model qualifies when it is a plain ``nn.Sequential`` (nested ones flattened) of ``nn.Linear``
layers separated by exactly one ``nn.ReLU`` each, optionally led by ``nn.Flatten``, with
every Linear measured and fed 2-D input; anything else takes the general path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_internals

from minsharp.curvature.budget import Footprint
from minsharp.curvature.cotangents import (
    HeadCotangents,
    class_probabilities,
    cotangent_count,
    head_cotangents,
    head_unit_squares,
)
from minsharp.curvature.generic import GenericLayer
from minsharp.curvature.guard import forward_altered
from minsharp.curvature.layers import Layer
from minsharp.curvature.patches import LayerSums, capture_patches
from minsharp.curvature.recording import check_logits, forward_failure

#: Most elements of one chunk's cotangents at all layers together (2 MiB in float32). Chunks
#: that stay in cache beat large products: timing hessian_diagonal on 784-100-100-K
#: (N = 1000, 2 threads, 2026-12-03) gave 32 ms at K = 100 with this, 62 ms with 8× larger
#: chunks, 38 ms with one cotangent per chunk; at K = 10 all sizes took the same time.
CHUNK_ELEMENTS = 1 << 19


@dataclass(frozen=True)
class LinearReluChain:
    """The Linear layers of a Linear–ReLU chain, in forward order (the last is the head)."""

    layers: list[Layer]
    flattened: bool
    """Whether an ``nn.Flatten`` leads the chain."""

    def footprint(self, *, diagonal: bool) -> Footprint:
        """What ``budget.footprint`` measures on the model's forward, from the widths alone.

        Module outputs: the flattened input (with a leading Flatten), each Linear's and each
        ReLU's; patches: each Linear's squared inputs (diagonal) or one squared norm
        (trace); one cotangent: each Linear's output and the logits. An upper bound on what
        :meth:`batch_sums` holds: its ReLUs act in place and its diagonals keep the inputs
        unsquared (squaring 2 MiB at a time, ``patches.SQUARES_ELEMENTS``).
        """
        inputs = [layer.module.weight.shape[1] for layer in self.layers]
        outputs = [layer.module.weight.shape[0] for layer in self.layers]
        kept = inputs if diagonal else [1] * len(self.layers)
        classes = outputs[-1]
        flat = [inputs[0]] if self.flattened else []
        return Footprint(
            activations=sum(flat) + 2 * sum(outputs) - classes,
            patches=sum(kept),
            cotangent=sum(outputs) + classes,
            widest=max(*flat, *outputs, *kept),
        )

    def batch_sums(self, inputs: Tensor, *, diagonal: bool) -> dict[str, Tensor]:
        """Per-parameter sums of squares over one batch, as the engine's general path gives.

        The forward by hand (:meth:`recorded_forward`); the head's sums in closed form and its
        K − 1 cotangents pulled down the chain (:func:`chain_cotangents`) into each Linear's
        :class:`LayerSums`. Nothing changes a Linear's recorded input afterwards, so the
        diagonals keep those inputs unsquared.
        """
        logits, layer_inputs = self.recorded_forward(inputs)
        check_logits(logits, inputs.shape[0])
        count = cotangent_count(logits.shape[1])
        accumulators = [
            LayerSums(
                capture_patches(
                    layer.rule.patches(layer.module, rows),
                    rows,
                    diagonal=diagonal,
                    unsquared=True,
                ),
                classes=count,
                weight=layer.weight is not None,
                bias=layer.bias is not None,
                diagonal=diagonal,
                unsquared=True,
            )
            for layer, rows in zip(self.layers, layer_inputs, strict=True)
        ]
        weights = [layer.module.weight.detach() for layer in self.layers[1:-1]]
        with torch.no_grad():
            probabilities = class_probabilities(logits)
            accumulators[-1].add_unit_squares(head_unit_squares(probabilities))
            cotangents = head_cotangents(self.layers[-1].module.weight.detach(), probabilities)
            for found in chain_cotangents(weights, layer_inputs[1:], cotangents, count):
                for sums, rows in zip(accumulators[:-1], found, strict=True):
                    sums.add(rows[:, :, None, :, None])  # (k, N, G = 1, C, S = 1)
        return {
            name: total
            for layer, sums in zip(self.layers, accumulators, strict=True)
            for name, total in layer.by_parameter(*sums.result(), diagonal=diagonal).items()
        }

    def recorded_forward(self, inputs: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The logits, and each Linear's input, computed as the model's forward computes them.

        The model is a plain Sequential of exactly these modules, without hooks or an
        instance ``forward`` (:func:`linear_relu_chain`), so its forward is
        ``h ← relu(h Wᵀ + b)`` down the Linears: done here without autograd and without the
        modules' call machinery. A batch the model's forward would fail on raises the
        :class:`ModelError` that ``recording.run_forward`` raises (the chain was recognised
        on the first batch only).
        """
        layer_inputs = []
        try:
            with torch.no_grad():
                rows = inputs.detach()
                rows = rows.flatten(1) if self.flattened else rows
                for position, layer in enumerate(self.layers):
                    layer_inputs.append(rows)
                    rows = nn.functional.linear(rows, layer.module.weight, layer.module.bias)
                    if position < len(self.layers) - 1:
                        rows = rows.relu_()  # a fresh output of ours: in place is safe
        except Exception as error:  # as the model's own forward would have failed
            raise forward_failure(inputs, error) from error
        return rows, layer_inputs


def linear_relu_chain(
    model: nn.Module, layers: list[Layer | GenericLayer], probe: Tensor
) -> LinearReluChain | None:
    """The measured Linear layers of ``model`` in forward order, if it is a Linear–ReLU chain.

    None unless ``model`` is a plain ``nn.Sequential`` (nested plain Sequentials flattened)
    of the form ``[Flatten,] Linear, ReLU, Linear, …, ReLU, Linear`` with at least two
    Linears, every one an ``nn.Linear`` among ``layers``, each module computing what its
    class says (no hooks, no ``forward`` set on an instance), no autocast active, and the data
    (``probe``: a few of its examples) reaching the first Linear as rows of its width.
    """
    if (
        type(model) is not nn.Sequential
        or forward_altered(model)
        or _backward_hooked(model)
        or torch.is_autocast_enabled(probe.device.type)  # its products write into fixed dtypes
    ):
        return None
    modules = list(_flattened(model))
    flattened = bool(modules) and type(modules[0]) is nn.Flatten
    if flattened:
        flatten = modules.pop(0)
        if (flatten.start_dim, flatten.end_dim) != (1, -1):
            return None
        probe = probe.flatten(1)
    by_module = {id(layer.module): layer for layer in layers if isinstance(layer, Layer)}
    chain = []
    for position, module in enumerate(modules):
        expected = nn.Linear if position % 2 == 0 else nn.ReLU
        if type(module) is not expected:
            return None
        if expected is nn.Linear:
            layer = by_module.get(id(module))
            if layer is None:
                return None
            chain.append(layer)
    if len(modules) % 2 == 0 or len(chain) < 2 or len(chain) != len(layers):
        return None
    if probe.dim() != 2 or probe.shape[1] != chain[0].module.weight.shape[1]:
        return None
    return LinearReluChain(chain, flattened)


def _backward_hooked(model: nn.Module) -> bool:
    """Whether a backward hook could change the gradients, as autograd would honour it."""
    if module_internals._global_backward_hooks or module_internals._global_backward_pre_hooks:
        return True
    return any(m._backward_hooks or m._backward_pre_hooks for m in model.modules())


def _flattened(module: nn.Module) -> Iterator[nn.Module]:
    for child in module:
        if type(child) is nn.Sequential:
            yield from _flattened(child)
        else:
            yield child


def chain_cotangents(
    weights: list[Tensor],
    relu_outputs: list[Tensor],
    head_cotangents: HeadCotangents,
    count: int,
) -> Iterator[list[Tensor]]:
    """Per chunk of the ``count`` cotangents, the cotangents (k, N, C_l) at each layer's output.

    For the chain's layers ``L_0 … L_m`` (``L_m`` the head): ``weights`` are those of
    ``L_1 … L_{m−1}`` (``W_0`` is never needed), ``relu_outputs`` the recorded inputs
    ``h_1 … h_m`` of ``L_1 … L_m``, and ``head_cotangents(classes)`` gives the cotangents
    (k, N, H) at ``h_m``. Yields, per chunk, the cotangents at the outputs of
    ``L_0 … L_{m−1}``, in that order:
    ``δ_{m−1} = c ⊙ 1[h_m > 0]``, ``δ_{l−1} = (δ_l W_l) ⊙ 1[h_l > 0]``.
    Every chunk is written into the same buffers: what it yields is valid until the next.
    """
    # h ≥ 0 (a ReLU's output), so sign(h) is 1[h > 0]: one kernel where a comparison and a
    # cast take two.
    masks = [h.sign() for h in relu_outputs]
    N = relu_outputs[0].shape[0]
    held = N * sum(h.shape[1] for h in relu_outputs)  # one cotangent at all layers
    step = max(1, min(count, CHUNK_ELEMENTS // max(held, 1)))
    # One buffer per layer, reused by every chunk: fresh tensors per chunk are fresh pages,
    # which glibc hands back to the system when freed and which then fault in again.
    buffers = [h.new_empty(step, *h.shape) for h in relu_outputs]
    for first in range(0, count, step):
        classes = slice(first, min(first + step, count))
        k = classes.stop - classes.start
        cotangent = head_cotangents(classes, out=buffers[-1][:k]).mul_(masks[-1])
        found = [cotangent]
        for weight, mask, buffer in zip(weights[::-1], masks[-2::-1], buffers[-2::-1], strict=True):
            out = buffer[:k]
            # One 2-D product: torch.matmul of a 3-D by a 2-D tensor ran 1.9× slower here.
            rows = cotangent.view(-1, cotangent.shape[-1])
            torch.mm(rows, weight, out=out.view(-1, out.shape[-1]))
            cotangent = out.mul_(mask)
            found.append(cotangent)
        yield found[::-1]

"""How many examples one pass of the engine holds when ``batch_size`` is left to it.

A pass over a batch of B examples occupies about

    bytes(B) = itemsize · B · (GRAPH_FACTOR · A + U + C)

with, per example, A the elements of every module output (the forward's autograd graph
saves about :data:`GRAPH_FACTOR` times that), U the patches the layer rules keep and C one
class's cotangents at the logits and at every recorded layer output (the K classes are
pushed back one chunk at a time, ``minsharp.curvature.cotangents``). :func:`batch_size`
takes the largest B within :data:`MEMORY_BUDGET` whose largest single tensor (the widest
patches or module output) stays within :data:`TENSOR_BUDGET`.

Why the second bound: glibc hands blocks above its largest mmap threshold (32 MiB) back to
the operating system when they are freed, so every pass that allocates them page-faults
their memory anew. Measured on SmallCNN (N = 1000, torch 2.13, one thread), batches of
1000 made the diagonal 1.7× slower than batches of 256 for that reason alone; with the
allocator tuned to keep freed memory, both took the same time. Large batches otherwise make
the pass fast: the fixed costs of a forward and K backward passes are paid once per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from minsharp.curvature.generic import GenericLayer
from minsharp.curvature.layers import Layer

#: Bytes the working set of one pass may take.
MEMORY_BUDGET = 1 << 30
#: Bytes one tensor of a pass may take: glibc's largest mmap threshold (see the module text).
TENSOR_BUDGET = 32 << 20
#: Saved tensors of the forward's autograd graph, in module outputs (ReLU, pooling and
#: batch-norm keep their input or output, Linear and Conv their input).
GRAPH_FACTOR = 3


@dataclass(frozen=True)
class Footprint:
    """Elements one example occupies in a pass of the engine (see the module text)."""

    activations: int
    """A: elements of all module outputs."""
    patches: int
    """U: elements of the patches the layer rules keep."""
    cotangent: int
    """C: elements of one class's cotangents at the logits and the recorded layer outputs."""
    widest: int
    """Elements of the largest single patches or module output."""

    @property
    def elements(self) -> int:
        """``GRAPH_FACTOR · A + U + C``: elements per example of the whole pass."""
        return GRAPH_FACTOR * self.activations + self.patches + self.cotangent


def footprint(
    model: nn.Module,
    layers: list[Layer | GenericLayer],
    probe: Tensor,
    *,
    diagonal: bool,
    forward: Callable[[Tensor], Tensor],
) -> Footprint:
    """The :class:`Footprint` of ``model`` per example, from ``forward(probe)``.

    ``probe``: a few examples (n, …) of the data; ``forward`` runs the model and checks its
    logits (the engine's ``run_forward``, whose errors then name the probe's shape).
    """
    sizes = {"activations": 0, "patches": 0, "cotangent": 0, "widest": 0}
    measured = {layer.module: layer for layer in layers}

    def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
        if not isinstance(output, Tensor):
            return
        sizes["activations"] += output.numel()
        sizes["widest"] = max(sizes["widest"], output.numel())
        layer = measured.get(module)
        if layer is None or not isinstance(args[0], Tensor):
            return
        sizes["cotangent"] += output.numel()
        if isinstance(layer, GenericLayer):  # the generic rule keeps its input, as it is
            sizes["patches"] += args[0].numel()
            return
        found = layer.rule.patches(module, args[0])
        # One position: only squares are kept (an entry per input, or one norm: trace).
        kept = found.numel() if diagonal or found.shape[-1] > 1 else found.shape[:2].numel()
        sizes["patches"] += kept
        sizes["widest"] = max(sizes["widest"], kept)

    modules = [m for m in model.modules() if m in measured or not list(m.children())]
    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        with torch.no_grad():
            logits = forward(probe)
    finally:
        for handle in handles:
            handle.remove()
    n = probe.shape[0]
    return Footprint(
        activations=sizes["activations"] // n,
        patches=sizes["patches"] // n,
        cotangent=sizes["cotangent"] // n + logits.shape[1],
        widest=sizes["widest"] // n,
    )


def batch_size(need: Footprint, itemsize: int) -> int:
    """The largest B within :data:`MEMORY_BUDGET` and :data:`TENSOR_BUDGET` (at least 1)."""
    whole = MEMORY_BUDGET // max(itemsize * need.elements, 1)
    single = TENSOR_BUDGET // max(itemsize * need.widest, 1)
    return max(1, min(whole, single))


def even_split(examples: int, most: int) -> int:
    """Examples per batch that split ``examples`` into the fewest even batches of ≤ ``most``."""
    return math.ceil(examples / math.ceil(examples / most))

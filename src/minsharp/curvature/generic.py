"""The generic exact rule: per-example cotangent pull-back to a module's own parameters.

For a module M without a fast rule (``nn.LayerNorm``, ``nn.MultiheadAttention``,
``nn.Embedding``, a parametrized or subclassed layer, any module holding parameters
directly), with input ``x_n`` and parameters θ, the engine pulls the K − 1 cotangents of the
logits back to M's output as for every layer (``minsharp.curvature.cotangents``):
``δ_nk = ∂z_n/∂y_nᵀ c_nk``. The chain rule through M alone gives the per-cotangent gradient

    g_nk(θ) = (∂M(θ; x_n)/∂θ)ᵀ δ_nk,

one vector-Jacobian product of M on example n. :class:`GenericSums` computes all of them
at once with ``torch.func`` (``vjp`` of M, ``vmap`` over the examples, one pull-back per
cotangent of a chunk of classes) and sums ``g_nk^⊙2`` (diagonal) or ``‖g_nk‖²`` (trace): the
exact GGN block of θ (theory §1a). It is exact whatever M computes, provided that

* M's output on example n depends on that example alone (checked on every batch: the
  per-example outputs must equal the recorded ones), and
* θ enters the logits only through that call of M (checked on the probe batch by
  :func:`outside_uses`: the gradient through M's outputs must equal the full gradient).

The example axis is the first one, or the second for a module with ``batch_first=False``
(``nn.MultiheadAttention``'s default). Attention runs on the math kernel here: the fused CPU
kernels have no batching rule, and ``vmap`` would fall back to a slow loop over examples.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.func import functional_call, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from minsharp.errors import ModelError

#: Largest number of per-example gradient entries (examples × classes × parameters) one
#: vectorised pull-back forms; the batch is split to stay below it.
GRADIENT_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class GenericLayer:
    """A module measured by the generic rule, with every trainable parameter below it."""

    name: str
    module: nn.Module
    local_names: tuple[str, ...]
    """The parameters' names relative to ``module`` (``out_proj.weight``…)."""
    weight: ClassVar[None] = None
    """No weight in the fast rules' sense (like :attr:`Layer.weight`, always None here)."""
    bias: ClassVar[None] = None
    """No bias in the fast rules' sense (always None here)."""

    @property
    def parameter_names(self) -> list[str]:
        """Full names of the trainable parameters of this layer."""
        prefix = f"{self.name}." if self.name else ""
        return [prefix + local for local in self.local_names]

    def parameters(self) -> dict[str, Tensor]:
        """The trainable parameters, detached, by local name."""
        named = dict(self.module.named_parameters())
        return {local: named[local].detach() for local in self.local_names}


@dataclass
class GenericCall:
    """One call of a generic layer: its inputs (detached) and its outputs' autograd edges."""

    leaves: list[Any]
    """The positional and keyword arguments, flattened (tensors detached)."""
    spec: TreeSpec
    """How :attr:`leaves` fold back into ``(args, kwargs)``."""
    input_axes: tuple[int | None, ...]
    """The example axis of each leaf, None for a leaf shared by all examples."""
    output_spec: TreeSpec
    picked: tuple[int, ...]
    """The output leaves that depend on the parameters (and carry an edge)."""
    outputs: list[Tensor]
    """Those leaves, detached, to check the per-example recomputation against."""
    edges: list[GradientEdge]
    axis: int
    """The example axis of the inputs."""
    output_axes: tuple[int, ...]
    """The example axis of each picked output."""

    @property
    def output_size(self) -> int:
        """Elements of the picked outputs."""
        return sum(output.numel() for output in self.outputs)


def example_axis(module: nn.Module) -> int:
    """The example axis of ``module``'s inputs and outputs: 1 if ``batch_first`` is False."""
    return 1 if getattr(module, "batch_first", True) is False else 0


def record_call(
    layer: GenericLayer, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, batch: int
) -> tuple[GenericCall, Any]:
    """The :class:`GenericCall` of one forward call, and the output the hook should return.

    Output views are replaced by copies, as for the fast rules: an in-place operation on a
    view would cut the recorded node out of the graph. Returns None as the replacement when
    nothing was copied.
    """
    axis = example_axis(layer.module)
    leaves, spec = tree_flatten((args, kwargs))
    axes = tuple(
        axis
        if isinstance(leaf, Tensor) and leaf.dim() > axis and leaf.shape[axis] == batch
        else None
        for leaf in leaves
    )
    if all(a is None for a in axes):
        raise _axis_error(layer, axis, batch)
    outputs, output_spec = tree_flatten(output)
    picked = tuple(
        i for i, leaf in enumerate(outputs) if isinstance(leaf, Tensor) and leaf.requires_grad
    )
    copied = False
    output_axes = tuple(_output_axis(layer, outputs[i], axis, batch) for i in picked)
    for i in picked:
        if outputs[i]._base is not None:
            outputs[i], copied = outputs[i].clone(), True
    call = GenericCall(
        leaves=[leaf.detach() if isinstance(leaf, Tensor) else leaf for leaf in leaves],
        spec=spec,
        input_axes=axes,
        output_spec=output_spec,
        picked=picked,
        outputs=[outputs[i].detach() for i in picked],
        edges=[get_gradient_edge(outputs[i]) for i in picked],
        axis=axis,
        output_axes=output_axes,
    )
    return call, tree_unflatten(outputs, output_spec) if copied else None


def _output_axis(layer: GenericLayer, output: Tensor, axis: int, batch: int) -> int:
    """The example axis of one output: the inputs' one, else the first (attention weights).

    A wrong guess cannot go unnoticed: the per-example outputs are checked against it.
    """
    for candidate in (axis, 0):
        if output.dim() > candidate and output.shape[candidate] == batch:
            return candidate
    raise _axis_error(layer, axis, batch)


def _axis_error(layer: GenericLayer, axis: int, batch: int) -> ModelError:
    return ModelError(
        f"module {layer.name or '(root)'} ({type(layer.module).__name__}) has no input or "
        f"output whose axis {axis} is the batch of {batch} examples. minsharp needs the "
        "example axis first (second for modules with batch_first=False)."
    )


@contextmanager
def math_attention() -> Iterator[None]:
    """Attention on the math kernel, whose every derivative is made of ordinary operations.

    The fused CPU kernel of ``scaled_dot_product_attention`` has neither a double backward
    (``objective.hessian_vector_product``, the guard's probe) nor a batching rule (``vmap``
    here); the math kernel has both.
    """
    with sdpa_kernel(SDPBackend.MATH), warnings.catch_warnings():
        # Operations without a batching rule still give exact results, one example at a time.
        warnings.filterwarnings("ignore", message="There is a performance drop")
        yield


class GenericSums:
    """Diagonal or trace sums of one generic layer call, over chunks of its cotangents."""

    def __init__(self, layer: GenericLayer, call: GenericCall, *, diagonal: bool) -> None:
        self.layer = layer
        self.call = call
        self.diagonal = diagonal
        self.parameters = layer.parameters()
        self.sums: dict[str, Tensor] = {}
        self._checked = False

    def add(self, cotangents: Sequence[Tensor | None]) -> None:
        """Add the cotangents (k, *output shape) at each picked output, None where not reached."""
        call = self.call
        filled = [
            torch.zeros((_classes(cotangents), *out.shape), dtype=out.dtype, device=out.device)
            if c is None
            else c
            for c, out in zip(cotangents, call.outputs, strict=True)
        ]
        k = filled[0].shape[0]
        size = sum(p.numel() for p in self.parameters.values())
        examples = call.outputs[0].shape[call.output_axes[0]]
        step = max(1, GRADIENT_ELEMENTS // max(k * size, 1))
        for start in range(0, examples, step):
            length = min(step, examples - start)
            outputs, gradients = self._per_example(filled, start, length)
            if not self._checked:
                self._check_outputs(outputs, start, length)
            for local, gradient in gradients.items():
                squares = gradient.square()
                total = squares.sum((0, 1)) if self.diagonal else squares.sum()
                self.sums[local] = total if local not in self.sums else self.sums[local] + total
        self._checked = True

    def result(self) -> dict[str, Tensor]:
        """Full parameter name → sum over everything added."""
        return {
            full: self.sums[local]
            for local, full in zip(self.layer.local_names, self.layer.parameter_names, strict=True)
            if local in self.sums
        }

    def _per_example(
        self, cotangents: list[Tensor], start: int, length: int
    ) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """Outputs (per picked leaf) and gradients (n, k, *P) of examples start…start+length."""
        call, module = self.call, self.layer.module
        axis = call.axis
        batched = [i for i, a in enumerate(call.input_axes) if a is not None]
        pieces = tuple(call.leaves[i].narrow(axis, start, length) for i in batched)
        chunks = tuple(
            c.narrow(a + 1, start, length)
            for c, a in zip(cotangents, call.output_axes, strict=True)
        )
        k = cotangents[0].shape[0]

        def one_example(inputs: tuple[Tensor, ...], cotangent: tuple[Tensor, ...]) -> Any:
            leaves = list(call.leaves)
            for i, value in zip(batched, inputs, strict=True):
                leaves[i] = value.unsqueeze(axis)
            args, kwargs = tree_unflatten(leaves, call.spec)

            def forward(parameters: dict[str, Tensor]) -> tuple[Tensor, ...]:
                found, _ = tree_flatten(functional_call(module, parameters, args, kwargs))
                return tuple(
                    found[i].squeeze(a) for i, a in zip(call.picked, call.output_axes, strict=True)
                )

            outputs, pull = vjp(forward, self.parameters)
            # One pull-back per class: a vmap over the classes inside the vmap over examples
            # trips on some batching rules (PReLU's backward, torch 2.13).
            pulled = [pull(tuple(c[j] for c in cotangent))[0] for j in range(k)]
            gradients = {name: torch.stack([g[name] for g in pulled]) for name in pulled[0]}
            return outputs, gradients

        with torch.enable_grad(), math_attention():
            try:
                return vmap(
                    one_example,
                    in_dims=((axis,) * len(pieces), tuple(a + 1 for a in call.output_axes)),
                    out_dims=(call.output_axes, 0),
                )(pieces, chunks)
            except (RuntimeError, ValueError) as error:  # torch.func cannot replay the call
                raise _replay_error(self.layer, error) from error

    def _check_outputs(self, outputs: tuple[Tensor, ...], start: int, length: int) -> None:
        """Raise unless each example's recomputed output is its output in the batch."""
        axis = self.call.axis
        for found, recorded, at in zip(
            outputs, self.call.outputs, self.call.output_axes, strict=True
        ):
            expected = recorded.narrow(at, start, length)
            tolerance = math.sqrt(torch.finfo(expected.dtype).eps)
            scale = max(float(expected.abs().max()), 1.0) if expected.numel() else 1.0
            if not torch.allclose(found, expected, rtol=tolerance, atol=tolerance * scale):
                raise ModelError(
                    f"module {self.layer.name or '(root)'} ({type(self.layer.module).__name__})"
                    ": run on one example at a time it gives other outputs than on the whole "
                    "batch, so its examples are coupled (batch statistics, masks over the "
                    f"batch) or axis {axis} is not their example axis. The exact rule needs "
                    "each example's output to depend on that example alone; freeze the "
                    "module's parameters with requires_grad_(False) to measure the rest."
                )


def _replay_error(layer: GenericLayer, error: Exception) -> ModelError:
    return ModelError(
        f"module {layer.name or '(root)'} ({type(layer.module).__name__}) has no fast rule, "
        "and the generic rule could not replay its call one example at a time with "
        f"torch.func ({type(error).__name__}: {error}). Freeze its parameters with "
        "requires_grad_(False) to measure the rest, or replace the operation that fails."
    )


def _classes(cotangents: Sequence[Tensor | None]) -> int:
    return next(c.shape[0] for c in cotangents if c is not None)


def own_gradient(
    layer: GenericLayer, call: GenericCall, cotangents: Sequence[Tensor | None]
) -> dict[str, Tensor]:
    """``Σ_n (∂M(θ; x_n)/∂θ)ᵀ δ_n`` for one cotangent per picked output, through M alone."""
    args, kwargs = tree_unflatten(call.leaves, call.spec)
    filled = tuple(
        torch.zeros_like(out) if c is None else c
        for c, out in zip(cotangents, call.outputs, strict=True)
    )

    def forward(parameters: dict[str, Tensor]) -> tuple[Tensor, ...]:
        found, _ = tree_flatten(functional_call(layer.module, parameters, args, kwargs))
        return tuple(found[i] for i in call.picked)

    with torch.enable_grad(), math_attention():
        _, pull = vjp(forward, layer.parameters())
        (gradients,) = pull(filled)
    return gradients


def outside_uses(logits: Tensor, recorded: list[tuple[GenericLayer, GenericCall]]) -> list[str]:
    """Full names of parameters that reach ``logits`` other than through their layer's call.

    With ``s = Σ c ⊙ logits`` for seeded random weights ``c``, the gradient ``∂s/∂θ``
    through the whole graph must equal the one through the layer's outputs alone
    (:func:`own_gradient`); they differ (beyond rounding) when θ is also used elsewhere, or
    when the call cannot be replayed from its
    recorded inputs. ``logits`` keeps its graph.
    """
    if not recorded:
        return []
    named = [dict(layer.module.named_parameters()) for layer, _ in recorded]
    tensors = [
        named[i][local] for i, (layer, _) in enumerate(recorded) for local in layer.local_names
    ]
    edges = [edge for _, call in recorded for edge in call.edges]
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(logits.shape, generator=generator, dtype=logits.dtype)
    weights = weights.to(logits.device)
    found = torch.autograd.grad(
        (logits * weights).sum(), tensors + edges, retain_graph=True, allow_unused=True
    )
    full, at_edges = list(found[: len(tensors)]), list(found[len(tensors) :])
    tolerance = math.sqrt(torch.finfo(logits.dtype).eps)
    misused = []
    for layer, call in recorded:
        reached = [at_edges.pop(0) for _ in call.edges]
        own = own_gradient(layer, call, reached) if any(r is not None for r in reached) else {}
        for local, name in zip(layer.local_names, layer.parameter_names, strict=True):
            whole, mine = full.pop(0), own.get(local)
            if whole is None or mine is None:
                if (whole is None) != (mine is None or not bool(mine.any())):
                    misused.append(name)
                continue
            scale = max(float(whole.norm()), float(mine.norm()))
            if float((whole - mine).norm()) > tolerance * max(scale, 1e-30):
                misused.append(name)
    return misused

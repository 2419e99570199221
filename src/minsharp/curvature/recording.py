"""The engine's recording forward pass: what each layer's call leaves for the backward passes.

:func:`recording` hooks every measured layer: a fast-rule layer keeps its input patches
(``minsharp.curvature.patches``), a generic one its inputs (``minsharp.curvature.generic``),
and each the autograd edge of its output, from which the engine's backward passes start.
:func:`run_forward` runs the model with every check on its logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from minsharp.curvature import patches
from minsharp.curvature.generic import GenericCall, GenericLayer, record_call
from minsharp.curvature.layers import Layer
from minsharp.errors import MinsharpError, ModelError
from minsharp.tensors import all_finite


@dataclass
class Call:
    """What one forward call of a fast-rule layer leaves for the backward pass."""

    captured: Tensor
    edge: GradientEdge
    source: Tensor
    """The layer's input, still attached to the graph (the head shortcut starts from it)."""
    source_version: int
    """``source._version`` at the call: a later in-place change voids the head shortcut."""
    output_size: int
    """Number of elements of the layer's output."""

    @property
    def edges(self) -> list[GradientEdge]:
        """The output edges, as for a :class:`GenericCall`."""
        return [self.edge]


AnyLayer = Layer | GenericLayer
AnyCall = Call | GenericCall


@contextmanager
def recording(layers: list[AnyLayer], batch: int, diagonal: bool) -> Iterator[dict[str, AnyCall]]:
    """Forward hooks that record each layer's patches and output edge; removed on exit."""
    calls: dict[str, AnyCall] = {}

    def check_once(layer: AnyLayer) -> None:
        if layer.name in calls:
            raise ModelError(
                f"module {layer.name or '(root)'} ran twice in one forward pass (weight "
                "sharing). The exact formula needs each parameter used once; give each "
                "use its own module."
            )

    def generic_hook_for(layer: GenericLayer):  # noqa: ANN202
        def record(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> Any:
            check_once(layer)
            calls[layer.name], replacement = record_call(layer, args, kwargs, output, batch)
            return replacement

        return record

    def hook_for(layer: Layer):  # noqa: ANN202
        def record(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
            check_once(layer)
            inputs = args[0]
            if inputs.shape[0] != batch:
                raise ModelError(
                    f"module {layer.name or '(root)'} received input of shape "
                    f"{tuple(inputs.shape)}, whose first axis is not the batch of {batch} "
                    "examples. minsharp needs the example axis first in every layer."
                )
            found = layer.rule.patches(module, inputs.detach())
            captured = patches.capture_patches(found, inputs, diagonal=diagonal)
            # An in-place operation on a view (Linear on 3-D input returns one) would cut the
            # recorded node out of the graph; a copy keeps it reachable.
            replacement = output.clone() if output._base is not None else None
            edge = get_gradient_edge(output if replacement is None else replacement)
            calls[layer.name] = Call(captured, edge, inputs, inputs._version, output.numel())
            return replacement

        return record

    handles = [
        layer.module.register_forward_hook(generic_hook_for(layer), with_kwargs=True)
        if isinstance(layer, GenericLayer)
        else layer.module.register_forward_hook(hook_for(layer))
        for layer in layers
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def run_forward(model: nn.Module, inputs: Tensor) -> Tensor:
    """Logits of ``model`` on ``inputs``, checked to be a finite (N, K ≥ 2) tensor."""
    try:
        logits = model(inputs)
    except MinsharpError:
        raise
    except Exception as error:  # any failure inside user code: name the input that caused it
        raise forward_failure(inputs, error) from error
    check_logits(logits, inputs.shape[0])
    return logits


def forward_failure(inputs: Tensor, error: Exception) -> ModelError:
    """The error for a model forward that raised ``error`` on the batch ``inputs``."""
    return ModelError(
        f"model forward failed on an input batch of shape {tuple(inputs.shape)} "
        f"({type(error).__name__}: {error}). Check that the data matches the model's "
        "expected input shape."
    )


def check_logits(logits: Any, num_examples: int) -> None:
    """Raise :class:`ModelError` unless ``logits`` is a finite (num_examples, K ≥ 2) tensor."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ModelError(
            f"model output must be logits of shape (N, K) with K ≥ 2 classes; got {shape}. "
            "Wrap the model so that it returns the pre-softmax class scores."
        )
    if logits.shape[0] != num_examples:
        raise ModelError(
            f"model returned {logits.shape[0]} rows of logits for {num_examples} examples."
        )
    if not all_finite(logits.detach()):
        raise ModelError("model produced non-finite logits (NaN or inf) on the data.")

"""Finding the measurable layers of a model, and handing the model back untouched."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from minsharp.curvature.generic import GenericLayer
from minsharp.curvature.rules import LayerRule, fast_rule
from minsharp.errors import ModelError
from minsharp.options import nn_module
from minsharp.tensors import finite_flags

#: The batch-norm modules (``nn.BatchNorm1d/2d/3d`` and their subclasses).
BATCHNORM = nn.modules.batchnorm._BatchNorm
# Modules whose training-mode forward is stochastic or couples the examples of a batch.
_MODE_DEPENDENT = (BATCHNORM, nn.modules.dropout._DropoutNd)


def _stochastic(module: nn.Module) -> bool:
    """Whether ``module``'s forward is stochastic, couples examples or updates its state now."""
    if not module.training:
        return False
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout > 0
    if parametrize.is_parametrized(module):  # a stateful one (spectral norm) updates in training
        return any(
            p.training and any(True for _ in p.buffers(recurse=False))
            for p in module.parametrizations.modules()
        )
    return isinstance(module, _MODE_DEPENDENT)


@dataclass(frozen=True)
class Layer:
    """A module with a fast rule and trainable parameters, and the full names of those."""

    name: str
    module: nn.Module
    rule: LayerRule
    weight: str | None
    bias: str | None

    @property
    def parameter_names(self) -> list[str]:
        """Full names of the trainable parameters of this layer."""
        return [name for name in (self.weight, self.bias) if name is not None]

    def by_parameter(
        self, weight_sum: Tensor | None, bias_sum: Tensor | None, *, diagonal: bool
    ) -> dict[str, Tensor]:
        """The layer's sums (``patches.LayerSums.result``) by full parameter name.

        Diagonals come shaped like their parameters.
        """
        sums = {}
        if self.weight is not None and weight_sum is not None:
            shape = self.module.weight.shape
            sums[self.weight] = weight_sum.reshape(shape) if diagonal else weight_sum
        if self.bias is not None and bias_sum is not None:
            sums[self.bias] = bias_sum.reshape(-1) if diagonal else bias_sum
        return sums


def find_layers(model: nn.Module) -> list[Layer | GenericLayer]:
    """The layers holding every trainable parameter of ``model``, each with its rule.

    A module with a fast rule (:func:`rules.fast_rule`) whose trainable parameters are its
    ``weight`` and ``bias`` is a :class:`Layer`; any other module holding trainable parameters
    itself, or parametrized (``torch.nn.utils.parametrize``), is a :class:`GenericLayer` with
    every trainable parameter below it (``nn.MultiheadAttention`` with its ``out_proj``,
    whose parameters its forward uses directly). Raises :class:`ModelError` for tied
    parameters, non-finite values, training-mode batch-norm, dropout or attention dropout,
    or a model with nothing to measure.
    """
    nn_module("model", model)
    modules = list(model.named_modules())
    trainable = _untied_trainable(modules)
    layers: list[Layer | GenericLayer] = []
    seen: set[int] = set()

    def visit(module: nn.Module, module_name: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        trainable = [
            local for local, p in module.named_parameters(recurse=False) if p.requires_grad
        ]
        rule = fast_rule(module)
        prefix = f"{module_name}." if module_name else ""
        if trainable and rule is not None and set(trainable) <= {"weight", "bias"}:
            names = {local: prefix + local for local in trainable}
            layers.append(Layer(module_name, module, rule, names.get("weight"), names.get("bias")))
        elif trainable or parametrize.is_parametrized(module):
            below = tuple(local for local, p in module.named_parameters() if p.requires_grad)
            if below:
                layers.append(GenericLayer(module_name, module, below))
            return
        for child_name, child in module.named_children():
            visit(child, prefix + child_name)

    visit(model, "")
    if not layers:
        raise ModelError("model has no trainable parameters (requires_grad=True) to measure.")
    _check_finite(trainable)
    _check_mode(modules)
    return layers


def _untied_trainable(modules: list[tuple[str, nn.Module]]) -> list[tuple[str, Tensor]]:
    """The trainable parameters of ``modules`` by full name.

    Raises :class:`ModelError` if one trainable tensor is held by two modules.
    """
    owner: dict[int, str] = {}
    trainable = []
    for module_name, module in modules:
        for local, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            full = f"{module_name}.{local}" if module_name else local
            if id(parameter) in owner:
                raise ModelError(
                    f"parameter {full} is the same tensor as {owner[id(parameter)]} (tied "
                    "weights). The exact formula needs each parameter used once per forward "
                    "pass; untie the weights or freeze one copy with requires_grad_(False)."
                )
            owner[id(parameter)] = full
            trainable.append((full, parameter))
    return trainable


def check_measurable(model: nn.Module) -> None:
    """Raise :class:`ModelError` unless ``model`` is a module with finite weights in eval mode."""
    nn_module("model", model)
    _check_finite([(name, p) for name, p in model.named_parameters() if p.requires_grad])
    _check_mode(list(model.named_modules()))


def _check_finite(trainable: list[tuple[str, Tensor]]) -> None:
    flags = finite_flags([p.detach() for _, p in trainable])
    bad = [name for (name, _), finite in zip(trainable, flags, strict=True) if not finite]
    if bad:
        raise ModelError(
            f"non-finite (NaN or inf) values in parameters: {', '.join(bad)}. "
            "Curvature is undefined there; check the checkpoint or the training run."
        )


def _check_mode(modules: list[tuple[str, nn.Module]]) -> None:
    batch_statistics = [
        f"{name} ({type(m).__name__})"
        for name, m in modules
        if isinstance(m, BATCHNORM) and m.running_mean is None
    ]
    if batch_statistics:
        raise ModelError(
            "batch-norm without running statistics (track_running_stats=False) normalises "
            "with each batch's own statistics, also in eval mode, so a measure would depend on "
            f"how the data is batched: {', '.join(batch_statistics)}. Measure a model whose "
            "batch-norm layers track running statistics."
        )
    training = [f"{name} ({type(m).__name__})" for name, m in modules if _stochastic(m)]
    if training:
        raise ModelError(
            "model is in training mode and these modules then make the forward pass "
            f"stochastic or couple the examples of a batch (or update their state, as spectral "
            f"norm does): {', '.join(training)}. "
            "Call model.eval() first (batch-norm then uses its running statistics)."
        )


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the model's first floating parameter."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    raise ModelError("model has no floating-point parameters.")


@contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer on exit, for modules that update state in their forward."""
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in saved:
                    buffer.copy_(saved[name])

"""One calling convention for every sharpness measure: look up, validate once, compute.

:func:`measure` looks a measure up by name in the table (:mod:`minsharp.measures.table`),
validates the model, the options and the measure's requirements once, times the call of its
compute function on the validated model and returns a :class:`MeasureResult`. The public
measure functions (``minsharp.measures.fisher_rao`` …) are :func:`measure` bound to a name.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from minsharp.curvature.engine import autograd_enabled
from minsharp.curvature.layers import BATCHNORM, check_measurable
from minsharp.errors import DataError, MinsharpError, ModelError
from minsharp.measures.result import (
    REQUIREMENTS,
    SYMMETRIES,
    Evaluation,
    MeasureResult,
    MeasureSpec,
    Requirement,
    Symmetry,
    check_declaration,
)
from minsharp.measures.table import MEASURES
from minsharp.options import nn_module

__all__ = [
    "REQUIREMENTS",
    "SYMMETRIES",
    "Evaluation",
    "MeasureResult",
    "MeasureSpec",
    "available",
    "check_model_requirements",
    "has_batchnorm",
    "measure",
    "measure_function",
    "register",
    "spec",
]

#: An ``Example:`` section of a docstring, up to the next section or the end.
_EXAMPLE = re.compile(r"\n\s*Examples?:\n.*?(?=\n\s*(?:Args|Returns|Raises):\n|\Z)", re.S)

_REGISTRY: dict[str, MeasureSpec] = {row.name: row for row in MEASURES}


def register(
    name: str,
    *,
    invariances: set[Symmetry],
    summary: str,
    reference: str,
    requires: set[Requirement] | None = None,
    stochastic: bool = False,
) -> Callable[[Callable[..., Evaluation]], Callable[..., Evaluation]]:
    """Decorator adding a measure of one's own, ``compute(model, data, *, options…)``, as ``name``.

    minsharp's own measures are rows of :data:`minsharp.measures.table.MEASURES`; this adds
    a user's measure at run time, declared as those rows are.

    Raises:
        MinsharpError: a name that is not a non-empty string or is taken, unknown
            symmetries or requirements, or a ``compute`` that is not callable.
    """
    check_declaration(name, invariances, requires)

    def add(compute: Callable[..., Evaluation]) -> Callable[..., Evaluation]:
        row = MeasureSpec(
            name=name,
            compute=compute,
            invariances=frozenset(invariances),
            requires=frozenset(requires or ()),
            summary=summary,
            reference=reference,
            stochastic=stochastic,
        )
        if name in _REGISTRY:
            raise MinsharpError(f"a measure named {name!r} is already registered.")
        _REGISTRY[name] = row
        return compute

    return add


def available() -> list[str]:
    """Names of the registered measures, sorted."""
    return sorted(_REGISTRY)


def spec(name: str) -> MeasureSpec:
    """The registered measure ``name``; :class:`MinsharpError` with suggestions if unknown."""
    if not isinstance(name, str):
        raise MinsharpError(
            f"a measure's name must be a string; got a {type(name).__name__}. Available "
            f"measures: {', '.join(available())}."
        )
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, _REGISTRY, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise MinsharpError(
        f"unknown measure {name!r}.{hint} Available measures: {', '.join(available())}."
    )


def measure(name: str, model: nn.Module, data: Any, **options: Any) -> MeasureResult:
    """Compute the registered measure ``name`` of ``model`` on ``data``.

    ``options`` are the measure's keyword options (see ``spec(name).defaults``); an unknown
    option raises :class:`MinsharpError` listing the accepted ones. The model (a module in
    eval mode with finite weights) and the measure's requirements (labels, batch-norm
    layers) are checked here, once; the compute function trusts them. The result records
    every option used (a ``None`` default the measure resolved, at the value it resolved to),
    the wall time, the declared invariances and, for solver-based measures, the convergence
    certificate.

    Example:
        >>> import torch
        >>> from minsharp.measures import measure
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> result = measure("hessian_trace", net, torch.randn(8, 3))
        >>> result.name, result.value > 0, result.invariances
        ('hessian_trace', True, ())
    """
    chosen = spec(name)
    defaults = chosen.defaults
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise MinsharpError(
            f"measure {name!r} has no option {', '.join(map(repr, unknown))}; its options "
            f"are: {_describe(defaults)}."
        )
    check_measurable(model)
    check_model_requirements(name, model)
    _check_data_requirements(chosen, data, {**defaults, **options})
    start = time.perf_counter()
    with autograd_enabled():
        evaluation = chosen.compute(model, data, **options)
    seconds = time.perf_counter() - start
    invariances = chosen.invariances if evaluation.invariances is None else evaluation.invariances
    if not math.isfinite(evaluation.value):
        raise ModelError(
            f"measure {name!r} came out non-finite ({evaluation.value}); the model's loss "
            "overflows at or near these parameters. Check the weights and the data scale."
        )
    return MeasureResult(
        name=name,
        value=evaluation.value,
        per_layer=evaluation.per_layer,
        options={**defaults, **options, **evaluation.resolved},
        seconds=seconds,
        num_examples=evaluation.num_examples,
        certificate=evaluation.certificate,
        details=evaluation.details,
        invariances=tuple(s for s in SYMMETRIES if s in invariances),
        rescale=evaluation.rescale,
    )


def measure_function(name: str, function_name: str | None = None) -> Callable[..., MeasureResult]:
    """The public function of measure ``name``: :func:`measure` with the name bound.

    Named ``function_name`` (default: the measure's name); it carries the compute function's
    docstring and keyword options, and returns the :class:`MeasureResult` :func:`measure`
    does.
    """
    compute = spec(name).compute

    @functools.wraps(compute)
    def public(model: nn.Module, data: Any, **options: Any) -> MeasureResult:
        return measure(name, model, data, **options)

    public.__signature__ = inspect.signature(compute).replace(  # type: ignore[attr-defined]
        return_annotation=MeasureResult
    )
    public.__name__ = public.__qualname__ = function_name or name
    public.__module__ = "minsharp.measures"
    # Examples call the compute function by its module's names: doctested there, once.
    public.__doc__ = _EXAMPLE.sub("\n", compute.__doc__ or "")
    return public


def check_model_requirements(name: str, model: nn.Module) -> None:
    """Raise :class:`ModelError` if ``model`` lacks what measure ``name`` requires of it.

    Only ``batchnorm`` is a requirement of the model; labels are checked with the data.
    """
    if "batchnorm" in spec(name).requires and not has_batchnorm(model):
        raise ModelError(
            f"measure {name!r} needs a network with batch-norm layers (it rescales the "
            "weights feeding each normalised unit), and this model has none. Add batch-norm "
            "layers or choose a measure without the 'batchnorm' requirement."
        )


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` contains a batch-norm layer."""
    nn_module("model", model)
    return any(isinstance(m, BATCHNORM) for m in model.modules())


def _check_data_requirements(chosen: MeasureSpec, data: Any, options: Mapping[str, Any]) -> None:
    """Refuse inputs without labels for a measure that requires them.

    ``labels="model"`` (Fisher–Rao) draws the labels from the model, so none are required.
    """
    if options.get("labels") == "model":
        return
    inputs_only = isinstance(data, Tensor) or (isinstance(data, tuple) and len(data) == 1)
    if "labels" in chosen.requires and inputs_only:
        raise DataError(
            f"data: measure {chosen.name!r} requires labels (it depends on the labels), but "
            "only inputs were given; pass (X, y) or an iterable/DataLoader of (X, y) batches."
        )


def _describe(defaults: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in defaults.items()) or "(none)"

"""One registry and one calling convention for every sharpness measure.

Each measure is a function ``compute(model, data, **options) -> Evaluation`` registered with
:func:`register`, which records what the measure claims: the function-preserving
reparametrisations it is invariant to (:data:`SYMMETRIES`) and what it needs from the model
and data. :func:`measure` looks a measure up by name, checks the options against the
function's signature, times the call and returns a :class:`MeasureResult`.

The claims are not decoration: ``tests/test_registry.py`` walks the registry and proves, on
random networks, every declared invariance and that each undeclared one moves the value.
"""

from __future__ import annotations

import difflib
import inspect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import nn

from minsharp.curvature.engine import autograd_enabled
from minsharp.curvature.layers import BATCHNORM, check_measurable
from minsharp.errors import MinsharpError, ModelError

Symmetry = Literal["layer", "neuron", "batchnorm"]
#: The function-preserving reparametrisations a measure may be invariant to:
#:
#: * ``layer`` — the α-scale transformation ``W_l → α_l W_l, b_l → (Π_{m≤l} α_m) b_l``,
#:   ``Π α_l = 1``, of a chain of positively homogeneous layers (theory §2);
#: * ``neuron`` — unit ``i`` between consecutive layers: row ``i`` of ``W_l`` and ``b_l[i]``
#:   times ``s > 0``, column ``i`` of ``W_{l+1}`` divided by ``s``;
#: * ``batchnorm`` — row ``k`` of a weight feeding a batch-norm (and its bias entry) times
#:   ``c_k > 0``, with the batch-norm's running mean times ``c_k`` and variance times ``c_k²``.
SYMMETRIES: tuple[Symmetry, ...] = ("layer", "neuron", "batchnorm")

Requirement = Literal["labels", "batchnorm", "chain"]
#: What a measure may require: labels in the data, batch-norm layers, a chain network.
REQUIREMENTS: tuple[Requirement, ...] = ("labels", "batchnorm", "chain")


@dataclass(frozen=True)
class Evaluation:
    """What a measure's ``compute`` function returns."""

    value: float
    num_examples: int
    per_layer: dict[str, float] | None = None
    """The value's share per layer (module name), for measures that sum over layers."""
    certificate: dict[str, Any] | None = None
    """For solver-based measures: how the optimisation ended and its optimality residual."""
    details: dict[str, Any] = field(default_factory=dict)
    """Further numbers a user may want (standard errors, optimal scales…)."""
    resolved: dict[str, Any] = field(default_factory=dict)
    """Options whose value the measure settled itself, by name: a ``None`` default that stands
    for "chosen from the other options or the model" (a radius per norm, the last layer),
    with the value actually used. :func:`measure` records these in place of the defaults."""


@dataclass(frozen=True)
class MeasureResult:
    """Result of :func:`measure`: the value with everything needed to interpret it."""

    name: str
    value: float
    per_layer: dict[str, float] | None
    options: dict[str, Any]
    """Every option the measure ran with, defaults included, and those it settled itself
    (see :attr:`Evaluation.resolved`) at the value it used."""
    seconds: float
    num_examples: int
    certificate: dict[str, Any] | None
    details: dict[str, Any]
    invariances: tuple[Symmetry, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary of the result."""
        return asdict(self)


@dataclass(frozen=True)
class MeasureSpec:
    """A registered measure and its declared properties."""

    name: str
    compute: Callable[..., Evaluation]
    invariances: frozenset[Symmetry]
    requires: frozenset[Requirement]
    summary: str
    reference: str
    stochastic: bool
    """Whether the value is a Monte-Carlo estimate (reproducible through its ``seed``)."""

    @property
    def defaults(self) -> dict[str, Any]:
        """The options of ``compute`` and their default values."""
        return {
            name: parameter.default
            for name, parameter in inspect.signature(self.compute).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        }


_REGISTRY: dict[str, MeasureSpec] = {}


def register(
    name: str,
    *,
    invariances: set[Symmetry],
    summary: str,
    reference: str,
    requires: set[Requirement] | None = None,
    stochastic: bool = False,
) -> Callable[[Callable[..., Evaluation]], Callable[..., Evaluation]]:
    """Decorator adding ``compute(model, data, *, options…)`` to the registry as ``name``.

    Raises:
        MinsharpError: a name that is not a non-empty string or is taken, unknown
            symmetries or requirements, or a ``compute`` that is not callable.
    """
    if not isinstance(name, str) or not name:
        raise MinsharpError(f"a measure's name must be a non-empty string; got {name!r}.")
    unknown = set(invariances) - set(SYMMETRIES)
    if unknown:
        raise MinsharpError(f"unknown symmetries {sorted(unknown)}; known: {SYMMETRIES}.")
    unknown = set(requires or ()) - set(REQUIREMENTS)
    if unknown:
        raise MinsharpError(f"unknown requirements {sorted(unknown)}; known: {REQUIREMENTS}.")

    def add(compute: Callable[..., Evaluation]) -> Callable[..., Evaluation]:
        if not callable(compute):
            raise MinsharpError(
                f"register({name!r}) decorates the function computing the measure; got a "
                f"{type(compute).__name__}."
            )
        if name in _REGISTRY:
            raise MinsharpError(f"a measure named {name!r} is already registered.")
        _REGISTRY[name] = MeasureSpec(
            name=name,
            compute=compute,
            invariances=frozenset(invariances),
            requires=frozenset(requires or ()),
            summary=summary,
            reference=reference,
            stochastic=stochastic,
        )
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
    option raises :class:`MinsharpError` listing the accepted ones. The result records every
    option used (a ``None`` default the measure resolved, at the value it resolved to), the
    wall time, the declared invariances and, for solver-based measures, the convergence
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
    start = time.perf_counter()
    with autograd_enabled():
        evaluation = chosen.compute(model, data, **options)
    seconds = time.perf_counter() - start
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
        invariances=tuple(s for s in SYMMETRIES if s in chosen.invariances),
    )


def check_model_requirements(name: str, model: nn.Module) -> None:
    """Raise :class:`ModelError` if ``model`` lacks what measure ``name`` requires of it."""
    if "batchnorm" in spec(name).requires and not has_batchnorm(model):
        raise ModelError(
            f"measure {name!r} needs a network with batch-norm layers (it rescales the "
            "weights feeding each normalised unit), and this model has none."
        )


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` contains a batch-norm layer."""
    return any(isinstance(m, BATCHNORM) for m in model.modules())


def _describe(defaults: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in defaults.items()) or "(none)"

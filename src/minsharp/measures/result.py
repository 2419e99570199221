"""The types every measure shares.

Its declaration (:class:`MeasureSpec`), what its compute function returns
(:class:`Evaluation`) and what users get back (:class:`MeasureResult`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, ParamSpec

from torch import nn

from minsharp.errors import MinsharpError

Symmetry = Literal["layer", "neuron", "batchnorm"]
#: The function-preserving reparametrisations a measure may be invariant to:
#:
#: * ``layer`` — the α-scale transformation ``W_l → α_l W_l, b_l → (Π_{m≤l} α_m) b_l``,
#:   ``Π α_l = 1``, of a chain of positively homogeneous layers (theory §2); through an
#:   eval-mode batch-norm the layer feeding it keeps its scale and the batch-norm's γ, β
#:   carry one (theory §7: its running statistics are fixed);
#: * ``neuron`` — unit ``i`` between consecutive layers: row ``i`` of ``W_l`` and ``b_l[i]``
#:   times ``s > 0``, column ``i`` of ``W_{l+1}`` divided by ``s``;
#: * ``batchnorm`` — row ``k`` of a weight feeding a batch-norm (and its bias entry) times
#:   ``c_k > 0``, with the batch-norm's running mean times ``c_k`` and variance times ``c_k²``.
SYMMETRIES: tuple[Symmetry, ...] = ("layer", "neuron", "batchnorm")

Requirement = Literal["labels", "batchnorm"]
#: What a measure may require: labels in the data, batch-norm layers.
REQUIREMENTS: tuple[Requirement, ...] = ("labels", "batchnorm")

Options = ParamSpec("Options")


@dataclass(frozen=True)
class Evaluation:
    """What a measure's ``compute`` function returns; only needed to add a measure.

    :func:`minsharp.measures.measure` turns it into a :class:`MeasureResult`.
    """

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
    invariances: frozenset[Symmetry] | None = None
    """The invariances of this value when its options change them (e.g. Minimum Sharpness
    with ``symmetry="neuron"``); ``None``: those the measure's row declares."""
    rescale: Callable[[nn.Module], nn.Module] | None = None
    """For measures that minimise over rescalings: the model → its copy at the optimum."""


#: Spellings of the former ``MinimumSharpness`` result, now read from the unified result.
_DETAIL_ATTRIBUTES = ("alphas", "weight_traces", "bias_traces", "trace")
_CERTIFICATE_ATTRIBUTES = ("attained",)


@dataclass(frozen=True)
class MeasureResult:
    """The one result of every measure: the value with everything needed to interpret it.

    Measure-specific numbers live in :attr:`details` and, for solver-based measures, in
    :attr:`certificate`; for Minimum Sharpness ``result.alphas``, ``result.weight_traces``,
    ``result.bias_traces``, ``result.trace`` (from ``details``) and ``result.attained``
    (from ``certificate``) read as before.
    """

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
    rescale: Callable[[nn.Module], nn.Module] | None = field(
        default=None, repr=False, compare=False
    )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary of the result."""
        result = asdict(replace(self, rescale=None))
        del result["rescale"]
        return result

    def rescaled(self, model: nn.Module) -> nn.Module:
        """The function-equivalent copy of ``model`` at the measure's optimal rescaling.

        Its trace is :attr:`value` (for Minimum Sharpness: checked to give the same logits
        on a probe batch). Only for measures that minimise over rescalings, when the
        minimum is attained.
        """
        if self.rescale is None:
            attained = (self.certificate or {}).get("attained")
            why = (
                f"the infimum is not attained (units that run off: {self.details.get('runaway')})"
                if attained is False
                else f"measure {self.name!r} does not minimise over rescalings"
            )
            raise MinsharpError(f"no rescaled copy: {why}.")
        return self.rescale(model)

    def __getattr__(self, attribute: str) -> Any:
        # Only called for attributes the dataclass lacks: the former MinimumSharpness fields.
        details = self.__dict__.get("details") or {}
        certificate = self.__dict__.get("certificate") or {}
        if attribute in _DETAIL_ATTRIBUTES and attribute in details:
            return details[attribute]
        if attribute in _CERTIFICATE_ATTRIBUTES and attribute in certificate:
            return certificate[attribute]
        if attribute == "optimal_traces":
            raise AttributeError(
                "MeasureResult has no optimal_traces(); the per-layer traces at the optimal "
                "rescaling are result.per_layer."
            )
        raise AttributeError(
            f"{type(self).__name__} of {self.__dict__.get('name')!r} has no attribute "
            f"{attribute!r}; measure-specific numbers are in result.details "
            f"({', '.join(details) or 'none'})."
        )


@dataclass(frozen=True)
class MeasureSpec:
    """A measure's declaration: one row of :data:`minsharp.measures.table.MEASURES`."""

    name: str
    compute: Callable[..., Evaluation]
    """``compute(model, data, *, options…) -> Evaluation``, given a validated model."""
    invariances: frozenset[Symmetry]
    requires: frozenset[Requirement]
    summary: str
    reference: str
    stochastic: bool = False
    """Whether the value is a Monte-Carlo estimate (reproducible through its ``seed``)."""

    def __post_init__(self) -> None:
        check_declaration(self.name, self.invariances, self.requires)
        if not callable(self.compute):
            raise MinsharpError(
                f"measure {self.name!r}: compute must be the function computing the measure; "
                f"got a {type(self.compute).__name__}."
            )

    @property
    def defaults(self) -> dict[str, Any]:
        """The options of ``compute`` and their default values."""
        return {
            name: parameter.default
            for name, parameter in inspect.signature(self.compute).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        }


def check_declaration(name: Any, invariances: Any, requires: Any) -> None:
    """Raise :class:`MinsharpError` for a bad measure declaration.

    A name that is not a non-empty string, or unknown symmetries or requirements.
    """
    if not isinstance(name, str) or not name:
        raise MinsharpError(f"a measure's name must be a non-empty string; got {name!r}.")
    unknown = set(invariances) - set(SYMMETRIES)
    if unknown:
        raise MinsharpError(f"unknown symmetries {sorted(unknown)}; known: {SYMMETRIES}.")
    unknown = set(requires or ()) - set(REQUIREMENTS)
    if unknown:
        raise MinsharpError(f"unknown requirements {sorted(unknown)}; known: {REQUIREMENTS}.")


def options_of(
    declared: Callable[Options, Evaluation],
) -> Callable[[Callable[..., Evaluation]], Callable[Options, Evaluation]]:
    """Decorator: a compute function that takes exactly the options of ``declared``.

    For two measures of one family with the same options (the two normalized sharpness
    objectives; quotient flatness and the top eigenvalue): the options are declared,
    defaulted and documented once, on ``declared``. The decorated function gets
    ``declared``'s signature (what :func:`~minsharp.measures.measure`, the public function
    and ``spec(name).defaults`` read) and is called with every option, defaults filled in.

    Example:
        >>> def plain(model, data, *, scale: float = 1.0) -> Evaluation:
        ...     return Evaluation(value=scale, num_examples=0)
        >>> @options_of(plain)
        ... def doubled(model, data, *, scale: float) -> Evaluation:
        ...     return Evaluation(value=2 * scale, num_examples=0)
        >>> doubled(None, None).value, doubled(None, None, scale=3.0).value
        (2.0, 6.0)
        >>> inspect.signature(doubled).parameters["scale"].default
        1.0
    """
    signature = inspect.signature(declared)

    def declare(compute: Callable[..., Evaluation]) -> Callable[Options, Evaluation]:
        @functools.wraps(compute)
        def with_defaults(*args: Options.args, **kwargs: Options.kwargs) -> Evaluation:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return compute(*bound.args, **bound.kwargs)

        with_defaults.__signature__ = signature  # type: ignore[attr-defined]
        return with_defaults

    return declare

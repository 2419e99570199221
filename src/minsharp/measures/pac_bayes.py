"""PAC-Bayes flatness (Jiang et al. 2020 after Dziugaite & Roy 2017), theory §0.

``1/σ²`` for the largest Gaussian noise level σ whose expected rise of the error rate (or the
loss) stays within ``target``; the noise shares the common random numbers of
:class:`minsharp.measures.perturbation.StandardNormalDraws`.

The expectation is the mean over ``samples`` fixed draws ``z_j`` (the module's
common-random-number recipe, from ``seed``) with ``u_j = Σ_σ^{1/2} z_j``, so the estimated
deviation is a deterministic function of σ, continuous for the loss and close to
monotone. σ is bracketed from 0.1 by factors of 2 (within [1e-8, 1e4]) and the bracket
shrunk in log-space — interpolated guesses, bisection where they do not pay — until its
ratio is below ``1 + tolerance``; the reported σ is the
bracket's lower end, whose deviation is at most ``target`` while the upper end's exceeds
it. As Jiang et al., the deviation is the absolute change: noise drives the error rate
towards chance, which lowers it where it starts above chance (random labels, untrained
networks). They bisected σ linearly on [0, 2] to a fixed depth, stopping early once the
accuracy change was within 0.01 of 0.1; we shrink log σ to a relative width instead. Each
evaluation costs ``samples`` forward passes over the data.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from minsharp.measures.perturbation import StandardNormalDraws
from minsharp.measures.result import Evaluation
from minsharp.objective import DatasetObjective, Parameters
from minsharp.options import boolean, choice, integer, number
from minsharp.tensors import standard_error

Metric = Literal["error", "loss"]

#: The PAC-Bayes σ search starts here and brackets by factors of ``SIGMA_FACTOR``
#: within [``SIGMA_MIN``, ``SIGMA_MAX``].
SIGMA_START = 0.1
SIGMA_FACTOR = 2.0
SIGMA_MIN = 1e-8
SIGMA_MAX = 1e4


def pac_bayes_flatness(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    seed: int = 0,
    metric: Metric = "error",
    target: float = 0.1,
    samples: int = 10,
    tolerance: float = 0.01,
    magnitude_aware: bool = False,
    offset: float = 1e-3,
) -> Evaluation:
    """PAC-Bayes flatness ``1/σ²``, σ the largest noise level the network tolerates.

    Jiang, Neyshabur, Mobahi, Krishnan & Bengio 2020, "Fantastic generalization measures and
    where to find them" (their ``pacbayes.flatness`` and, with ``magnitude_aware``,
    ``pacbayes.mag.flatness``), after Dziugaite & Roy 2017: σ is the largest noise level with

        | E_{u ~ N(0, Σ_σ)} [metric(θ + u)] − metric(θ) | ≤ target,

    ``Σ_σ = σ² I``, or with ``magnitude_aware`` the per-coordinate variance
    ``σ² θ_i² + offset²`` (Jiang et al.'s magnitude-aware posterior, ``offset = 1e-3``).
    ``metric`` is the error rate (Jiang et al.'s choice, ``target = 0.1``) or the loss. Larger
    values mean sharper minima. Not invariant to rescalings (the isotropic noise is not; the
    magnitude-aware noise nearly is, but its offset breaks it). The estimate of the
    expectation and the search for σ are described in the module docstring.

    Args:
        model: classifier in eval mode.
        data: ``(X, y)`` or an iterable of ``(X, y)`` batches.
        batch_size: examples per forward pass; None: the whole data within the memory
            budget (:class:`~minsharp.objective.DatasetObjective`).
        progress: progress bar over the σ evaluations.
        seed: seed of the noise draws.
        metric: ``"error"`` (misclassified fraction) or ``"loss"``.
        target: tolerated mean deviation, > 0 (at most 1 for the error rate).
        samples: Monte-Carlo draws per σ.
        tolerance: relative width of the final σ bracket, in (0, 1).
        magnitude_aware: noise standard deviation ``sqrt(σ² θ_i² + offset²)`` instead of σ.
        offset: the magnitude-aware noise floor, ≥ 0.

    Returns:
        ``1/σ²``; ``details`` hold ``sigma``, ``sigma_upper`` (the bracket's upper end),
        ``deviation`` and ``deviation_upper`` (their estimated deviations), its
        ``standard_error``, ``metric_at_minimum`` and ``evaluations``; ``certificate`` the
        search's record (``bracketed`` is False, with a warning, when even the largest σ
        tried, 0.1·2¹⁶ ≈ 6554, stays within the target or the smallest, 0.1·2⁻²³ ≈ 1.2e-8,
        exceeds it; σ is then that limit).
    """
    _check_options(metric, target, samples, tolerance, magnitude_aware, offset, seed)
    objective = DatasetObjective(model, data, batch_size)
    deviation = _NoiseDeviation(objective, metric, seed, samples, magnitude_aware, offset)
    most = _most_evaluations(tolerance)
    with tqdm(total=most, disable=not progress, desc="PAC-Bayes σ", unit="σ") as bar:
        search = _search_sigma(functools.partial(deviation, bar=bar), target, tolerance)
        bar.total = bar.n  # it ends once bracketed, mostly before the most it may take
    if not search.bracketed:
        _warn_unbracketed(metric, target, search)
    return _pac_bayes_evaluation(search, objective, metric, deviation.baseline)


def _check_options(
    metric: Metric,
    target: float,
    samples: int,
    tolerance: float,
    magnitude_aware: bool,
    offset: float,
    seed: int,
) -> None:
    """Validate :func:`pac_bayes_flatness`'s options (``ValueError`` / ``TypeError``)."""
    choice("metric", metric, ("error", "loss"))
    number("target", target, above=0)
    if metric == "error":
        number("target", target, above=0, below=1, why="for the error rate")
    integer("samples", samples, minimum=1)
    number(
        "tolerance", tolerance, above=0, below=1, why="the relative width of the final σ bracket"
    )
    boolean("magnitude_aware", magnitude_aware)
    number("offset", offset, at_least=0)
    integer("seed", seed)


@dataclass
class _NoiseDeviation:
    """``σ ↦ (|mean_j metric(θ + u_j) − metric(θ)|, its standard error)``, ``u_j = Σ_σ^{1/2} z_j``.

    The draws ``z_j`` are the common random numbers of :class:`StandardNormalDraws`, kept
    for every σ within the memory budget;
    ``metric(θ)`` is evaluated once, on construction. Each call advances ``bar`` by one.
    """

    objective: DatasetObjective
    metric: Metric
    seed: int
    samples: int
    magnitude_aware: bool
    offset: float

    def __post_init__(self) -> None:
        objective = self.objective
        self.evaluate: Callable[[Parameters | None], float] = (
            objective.error_rate if self.metric == "error" else objective.loss
        )
        self.baseline = self.evaluate(None)
        self.squares = {name: p.square() for name, p in objective.parameters.items()}
        self.draws = StandardNormalDraws(objective.parameters, self.seed, self.samples, keep=True)

    def __call__(self, sigma: float, bar: Any) -> tuple[float, float]:
        values = []
        for z in self.draws:
            if self.magnitude_aware:
                noise = {
                    name: (sigma**2 * self.squares[name] + self.offset**2).sqrt() * z[name]
                    for name in z
                }
                values.append(self.evaluate(self.objective.perturbed(noise)))
            else:
                values.append(self.evaluate(self.objective.perturbed(z, sigma)))
        bar.update()
        bar.set_postfix(sigma=f"{sigma:.3g}")
        spread = torch.tensor(values, dtype=torch.float64)
        return abs(float(spread.mean()) - self.baseline), standard_error(spread)


def _warn_unbracketed(metric: Metric, target: float, search: _Bracket) -> None:
    """The ``RuntimeWarning`` of a σ search that left its range, at the measure's caller."""
    warnings.warn(
        f"pac_bayes_flatness: no σ in the search range brings the {metric} deviation across "
        f"the target {target} (stopped at σ = {search.lower:.3g}); the value only marks the "
        "search limit (certificate['bracketed'] is False).",
        RuntimeWarning,
        stacklevel=3,
    )


def _pac_bayes_evaluation(
    search: _Bracket, objective: DatasetObjective, metric: Metric, baseline: float
) -> Evaluation:
    """``1/σ²`` from the σ bracket, with its certificate, details and the batch size used."""
    return Evaluation(
        value=1 / search.lower**2,
        num_examples=objective.num_examples,
        resolved={"batch_size": objective.batch_size},
        certificate={
            "method": "bracketing by factors of 2, then interpolation and bisection in log σ",
            "bracketed": search.bracketed,
            "evaluations": search.evaluations,
            "relative_bracket": search.upper / search.lower - 1 if search.bracketed else None,
        },
        details={
            "sigma": search.lower,
            "sigma_upper": search.upper,
            "deviation": search.lower_deviation,
            "deviation_upper": search.upper_deviation,
            "standard_error": search.lower_error,
            "metric": metric,
            "metric_at_minimum": baseline,
            "evaluations": search.evaluations,
        },
    )


@dataclass(frozen=True)
class _Bracket:
    lower: float
    upper: float
    lower_deviation: float
    upper_deviation: float
    lower_error: float
    evaluations: int
    bracketed: bool


def _most_evaluations(tolerance: float) -> int:
    """The most σ evaluations :func:`_search_sigma` makes (a progress bar's total).

    The start, the longer way out to SIGMA_MIN or SIGMA_MAX by factors SIGMA_FACTOR, then at
    most three evaluations per halving of the bracket's log-ratio (an interpolation and its
    closing shot that shrink it too little, then a bisection) until it is below
    ``log(1 + tolerance)``.
    """
    out = max(math.log(SIGMA_MAX / SIGMA_START), math.log(SIGMA_START / SIGMA_MIN))
    halvings = math.log2(math.log(SIGMA_FACTOR) / math.log1p(tolerance))
    return 1 + math.ceil(out / math.log(SIGMA_FACTOR)) + 3 * max(0, math.ceil(halvings))


@dataclass
class _Search:
    """The σ search's state: ``lower`` with deviation ≤ target, ``upper`` with more."""

    deviation: Callable[[float], tuple[float, float]]
    target: float
    lower: float = math.nan
    upper: float = math.nan
    lower_value: float = math.nan
    upper_value: float = math.nan
    lower_error: float = math.nan
    evaluations: int = 0
    last: tuple[float, float, float] = (math.nan, math.nan, math.nan)

    def at(self, sigma: float) -> bool:
        """Evaluate ``σ`` and move the end it replaces; whether it is within the target."""
        self.evaluations += 1
        value, error = self.deviation(sigma)
        self.last = (sigma, value, error)
        if value <= self.target:
            self.lower, self.lower_value, self.lower_error = sigma, value, error
            return True
        self.upper, self.upper_value = sigma, value
        return False

    def ratio(self) -> float:
        return self.upper / self.lower

    def bracket(self) -> _Bracket:
        return _Bracket(
            self.lower,
            self.upper,
            self.lower_value,
            self.upper_value,
            self.lower_error,
            self.evaluations,
            True,
        )

    def unbracketed(self) -> _Bracket:
        """Both ends at the last σ evaluated (the search limit), with its deviation."""
        sigma, value, error = self.last
        return _Bracket(sigma, sigma, value, value, error, self.evaluations, False)


def _search_sigma(
    deviation: Callable[[float], tuple[float, float]], target: float, tolerance: float
) -> _Bracket:
    """The largest σ (to ``tolerance``) with ``deviation(σ) ≤ target``.

    Brackets from SIGMA_START by factors SIGMA_FACTOR, then shrinks the bracket in log σ by
    guesses interpolated from the ends' deviations (:func:`_interpolated`). Once a guess has
    shrunk the log-width more than two bisections would, the next guess comes with one shot
    just across it, which closes the bracket when the guess lands within ``tolerance / 2`` of
    the crossing; when a guess shrinks it less, the next step bisects. When the search leaves
    [SIGMA_MIN, SIGMA_MAX] unbracketed, both ends are that limit.
    """
    search = _Search(deviation, target)
    within = search.at(SIGMA_START)
    factor = SIGMA_FACTOR if within else 1 / SIGMA_FACTOR
    sigma = SIGMA_START
    while True:
        if not SIGMA_MIN <= sigma * factor <= SIGMA_MAX:
            return search.unbracketed()
        sigma *= factor
        if search.at(sigma) != within:
            break
    interpolate, trusted = True, False
    while search.ratio() > 1 + tolerance:
        width = math.log(search.ratio())
        guess = _interpolated(search) if interpolate else math.sqrt(search.lower * search.upper)
        shot = guess * (1 + tolerance / 2) ** (1 if search.at(guess) else -1)
        if trusted and search.ratio() > 1 + tolerance and search.lower < shot < search.upper:
            search.at(shot)
        shrunk = math.log(search.ratio()) <= width / 4
        trusted = interpolate and shrunk
        interpolate = not interpolate or shrunk
    return search.bracket()


def _interpolated(search: _Search) -> float:
    """Where the deviation crosses the target between the bracket's ends, interpolated.

    A power law ``c σᵏ`` through both ends (the loss rise grows like σ² at small σ) when both
    deviations are positive, else a straight line in log σ; kept off the ends by a twentieth
    of the bracket's log-width so that it always shrinks.
    """
    low, high, target = search.lower_value, search.upper_value, search.target
    if low > 0:
        share = math.log(target / low) / math.log(high / low)
    else:
        share = (target - low) / (high - low)
    share = min(max(share, 0.05), 0.95)
    return search.lower * search.ratio() ** share

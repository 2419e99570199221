"""PAC-Bayes flatness (Jiang et al. 2020 after Dziugaite & Roy 2017), theory §0.

``1/σ²`` for the largest Gaussian noise level σ whose expected rise of the error rate (or the
loss) stays within ``target``; the noise shares the common random numbers of
:class:`minsharp.measures.perturbation.StandardNormalDraws`.

The expectation is the mean over ``samples`` fixed draws ``z_j`` (the module's
common-random-number recipe, from ``seed``) with ``u_j = Σ_σ^{1/2} z_j``, so the estimated
deviation is a deterministic function of σ, continuous for the loss and close to
monotone. σ is bracketed from 0.1 by factors of 2 (within [1e-8, 1e4]) and bisected in
log-space until the bracket's ratio is below ``1 + tolerance``; the reported σ is the
bracket's lower end, whose deviation is at most ``target`` while the upper end's exceeds
it. As Jiang et al., the deviation is the absolute change: noise drives the error rate
towards chance, which lowers it where it starts above chance (random labels, untrained
networks). They bisected σ linearly on [0, 2] to a fixed depth, stopping early once the
accuracy change was within 0.01 of 0.1; we bisect log σ to a relative width instead. Each
evaluation costs ``samples`` forward passes over the data.
"""

from __future__ import annotations

import dataclasses
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
        bisection's record (``bracketed`` is False, with a warning, when even the largest σ
        tried, 0.1·2¹⁶ ≈ 6554, stays within the target or the smallest, 0.1·2⁻²³ ≈ 1.2e-8,
        exceeds it; σ is then that limit).
    """
    _check_options(metric, target, samples, tolerance, magnitude_aware, offset, seed)
    objective = DatasetObjective(model, data, batch_size)
    deviation = _NoiseDeviation(objective, metric, seed, samples, magnitude_aware, offset)
    most = _most_evaluations(tolerance)
    with tqdm(total=most, disable=not progress, desc="PAC-Bayes σ", unit="σ") as bar:
        search = _bisect_log(functools.partial(deviation, bar=bar), target, tolerance)
        bar.total = bar.n  # it ends once bracketed, mostly before the most it may take
    if not search.bracketed:
        _warn_unbracketed(metric, target, search)
    evaluation = _pac_bayes_evaluation(search, objective.num_examples, metric, deviation.baseline)
    return dataclasses.replace(evaluation, resolved={"batch_size": objective.batch_size})


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
    search: _Bracket, num_examples: int, metric: Metric, baseline: float
) -> Evaluation:
    """``1/σ²`` from the σ bracket, with its certificate and details."""
    return Evaluation(
        value=1 / search.lower**2,
        num_examples=num_examples,
        certificate={
            "method": "bracketing by factors of 2, then bisection in log σ",
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
    """The most σ evaluations :func:`_bisect_log` makes (a progress bar's total).

    The start, the longer way out to SIGMA_MIN or SIGMA_MAX by factors SIGMA_FACTOR, then
    halving the bracket's log-ratio until it is below ``log(1 + tolerance)``.
    """
    out = max(math.log(SIGMA_MAX / SIGMA_START), math.log(SIGMA_START / SIGMA_MIN))
    halvings = math.log2(math.log(SIGMA_FACTOR) / math.log1p(tolerance))
    return 1 + math.ceil(out / math.log(SIGMA_FACTOR)) + max(0, math.ceil(halvings))


def _bisect_log(
    deviation: Callable[[float], tuple[float, float]], target: float, tolerance: float
) -> _Bracket:
    """The largest σ (to ``tolerance``) with ``deviation(σ) ≤ target``, bisecting log σ.

    Keeps ``lower`` with deviation ≤ target and ``upper`` with deviation > target. When the
    search leaves [SIGMA_MIN, SIGMA_MAX] unbracketed, both ends are that limit.
    """
    evaluations = 0

    def at(sigma: float) -> tuple[float, float]:
        nonlocal evaluations
        evaluations += 1
        return deviation(sigma)

    sigma = SIGMA_START
    value, error = at(sigma)
    if value <= target:
        lower, lower_value, lower_error = sigma, value, error
        while True:
            if sigma * SIGMA_FACTOR > SIGMA_MAX:
                return _Bracket(sigma, sigma, value, value, error, evaluations, False)
            sigma *= SIGMA_FACTOR
            value, error = at(sigma)
            if value > target:
                upper, upper_value = sigma, value
                break
            lower, lower_value, lower_error = sigma, value, error
    else:
        upper, upper_value = sigma, value
        while True:
            if sigma / SIGMA_FACTOR < SIGMA_MIN:
                return _Bracket(sigma, sigma, value, value, error, evaluations, False)
            sigma /= SIGMA_FACTOR
            value, error = at(sigma)
            if value <= target:
                lower, lower_value, lower_error = sigma, value, error
                break
            upper, upper_value = sigma, value
    while upper / lower > 1 + tolerance:
        middle = math.sqrt(lower * upper)
        value, error = at(middle)
        if value <= target:
            lower, lower_value, lower_error = middle, value, error
        else:
            upper, upper_value = middle, value
    return _Bracket(lower, upper, lower_value, upper_value, lower_error, evaluations, True)

"""Rank correlations between a measure and the generalization gap, with bootstrap intervals.

The randomized-label study (theory §6) asks whether a measure ranks trained networks as their
generalization gaps (train accuracy − test accuracy) do. This module gives

* Kendall's τ-b, which accounts for ties in either variable (Kendall 1945):

      τ_b = (n_c − n_d) / √((n₀ − n₁)(n₀ − n₂)),

  n_c / n_d the concordant / discordant pairs, n₀ = n(n − 1)/2, n₁ = Σ t_i(t_i − 1)/2 over
  the groups of tied x values, n₂ the same for y. With n₃ the pairs tied in both,
  n_c − n_d = n₀ − n₁ − n₂ + n₃ − 2·n_d, and n_d is counted as the inversions of y after a
  sort by (x, y), in O(n log² n);
* Spearman's ρ, the Pearson correlation of the ranks, tied values sharing their average rank;
* the granulated Kendall coefficient Ψ of Jiang et al. (2020, "Fantastic generalization
  measures and where to find them", §4.2), which compares only runs differing in one axis of
  the grid (label-noise ratio, seed, model), so that a measure is not credited for merely
  telling the axes apart;
* percentile bootstrap intervals (Efron & Tibshirani 1993, ch. 13) over the runs;
* :func:`correlation_table`, all of these for each measure of a study; and
* :func:`paired_tau_difference`, the paired bootstrap of τ_A − τ_B for two measures of the
  same runs, so that "A ranks the runs better than B" is a tested statement.

Undefined correlations (fewer than two values, or a constant variable) are ``nan``, as in
``scipy.stats``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minsharp.errors import DataError, MinsharpError

#: Up to this many elements, inversions are counted with an n×n comparison matrix.
_SMALL = 256


def kendall_tau_b(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's τ-b of two paired samples, ties accounted for.

    ``τ_b = (n_c − n_d) / √((n₀ − n₁)(n₀ − n₂))`` (see the module docstring); equal to
    ``scipy.stats.kendalltau(x, y, variant="b").statistic``. O(n log² n).

    Args:
        x: the first sample.
        y: the second sample, paired with ``x``.

    Returns:
        τ-b in [−1, 1]; ``nan`` for fewer than two pairs, for a constant ``x`` or ``y``, or
        when either holds a ``nan`` (which has no rank).

    Raises:
        DataError: the samples are not one-dimensional or differ in length.

    Example:
        >>> kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4])
        0.6666666666666666
    """
    return _of_numbers(_tau_b, x, y)


def spearman_rho(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's ρ: the Pearson correlation of the ranks, ties given their average rank.

    ``ρ = Σ (r_i − r̄)(s_i − s̄) / √(Σ (r_i − r̄)² · Σ (s_i − s̄)²)`` with r, s the average
    ranks of x and y; equal to ``scipy.stats.spearmanr(x, y).statistic``. The samples, the
    ``nan`` cases and the errors are :func:`kendall_tau_b`'s: ρ is in [−1, 1], or ``nan``.

    Example:
        >>> spearman_rho([1, 2, 3, 4], [1, 3, 2, 4])
        0.8
    """
    return _of_numbers(_spearman, x, y)


@dataclass(frozen=True)
class GranulatedKendall:
    """Jiang et al.'s granulated Kendall coefficient, per axis and averaged.

    Attributes:
        per_axis: ψ_i for each axis: the mean of τ-b over the groups of runs that share the
            values of every other axis; ``nan`` when no group has a defined τ.
        average: Ψ, the mean of the defined ψ_i; ``nan`` when none is defined.
        groups_used: per axis, the number of groups whose τ entered ψ_i.
        groups_skipped: per axis, the groups left out: fewer than two runs, or a constant
            measure or gap within the group (τ undefined).
    """

    per_axis: dict[str, float]
    average: float
    groups_used: dict[str, int] = field(default_factory=dict)
    groups_skipped: dict[str, int] = field(default_factory=dict)


def granulated_kendall(
    measure: Sequence[float] | np.ndarray,
    gap: Sequence[float] | np.ndarray,
    axes: Mapping[str, Sequence[Any]],
) -> GranulatedKendall:
    """Granulated Kendall coefficient Ψ of Jiang et al. (2020, §4.2), with τ-b.

    For axis i with values Θ_i (e.g. the label-noise ratios),

        ψ_i = (1/m_i) Σ_{θ_{−i}} τ_b({(μ(θ_i, θ_{−i}), g(θ_i, θ_{−i})) : θ_i ∈ Θ_i}),

    the mean, over the m_i settings θ_{−i} of the other axes, of the rank correlation between
    the measure μ and the gap g across the runs that differ only in axis i; and
    ``Ψ = (1/|axes|) Σ_i ψ_i``. Jiang et al. use the sign-based τ; we use τ-b, which equals it
    when there are no ties.

    Handling of incomplete or degenerate grids: runs whose measure or gap is ``nan`` are
    dropped first; m_i counts the settings θ_{−i} present among the remaining runs; a group
    with fewer than two runs, or whose measure or gap is constant (τ undefined), is skipped
    and counted in ``groups_skipped``; ψ_i is ``nan`` when every group is skipped (e.g. an
    axis with a single value), and Ψ averages the defined ψ_i only. Runs sharing all axis
    values (repeats) simply fall in the same group.

    Args:
        measure: one value per run.
        gap: the generalization gap of each run.
        axes: for each axis name, the run's value on that axis (any hashable values, e.g.
            ``{"ratio": [...], "seed": [...], "model": [...]}``).

    Returns:
        The per-axis coefficients and their mean.

    Raises:
        DataError: the sequences differ in length.

    Example:
        >>> grid = granulated_kendall(
        ...     [1, 2, 3, 4], [1, 2, 4, 3], {"ratio": [0, 1, 0, 1], "seed": [0, 0, 1, 1]}
        ... )
        >>> grid.per_axis, grid.average
        ({'ratio': 0.0, 'seed': 1.0}, 0.5)
    """
    values, gaps = _paired(measure, gap)
    labels = _axis_labels(axes, len(values))
    kept = np.flatnonzero(~(np.isnan(values) | np.isnan(gaps)))
    per_axis: dict[str, float] = {}
    used: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for name in labels:
        others = [labels[other] for other in labels if other != name]
        taus, groups = _group_taus(values, gaps, kept, others)
        per_axis[name] = float(np.mean(taus)) if taus else math.nan
        used[name] = len(taus)
        skipped[name] = groups - len(taus)
    defined = [psi for psi in per_axis.values() if not math.isnan(psi)]
    average = float(np.mean(defined)) if defined else math.nan
    return GranulatedKendall(per_axis, average, used, skipped)


def _axis_labels(axes: Mapping[str, Sequence[Any]], runs: int) -> dict[str, list[Hashable]]:
    """Each axis's values as hashable group labels, one per run.

    Raises:
        DataError: an axis has not one value per run.
    """
    labels: dict[str, list[Hashable]] = {}
    for name, column in axes.items():
        column = list(column)
        if len(column) != runs:
            raise DataError(
                f"axis {name!r} has {len(column)} values for {runs} runs; give one per run."
            )
        labels[name] = [_hashable(value) for value in column]
    return labels


def _group_taus(
    values: np.ndarray, gaps: np.ndarray, kept: np.ndarray, others: list[list[Hashable]]
) -> tuple[list[float], int]:
    """τ-b of every group of ``kept`` runs sharing their ``others`` labels that defines one.

    Returns the defined τ-b and the number of groups (a group of one run, or whose measure or
    gap is constant, has none).
    """
    groups: dict[tuple[Hashable, ...], list[int]] = {}
    for run in kept:
        groups.setdefault(tuple(column[run] for column in others), []).append(int(run))
    taus = []
    for members in groups.values():
        tau = _tau_b(values[members], gaps[members]) if len(members) >= 2 else math.nan
        if not math.isnan(tau):
            taus.append(tau)
    return taus, len(groups)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of n examples (Efron & Tibshirani, ch. 13).

    Draws ``resamples`` index arrays of length n uniformly with replacement from 0..n−1
    (``numpy.random.default_rng(seed)``), evaluates ``statistic`` on each, and returns the
    (1 − level)/2 and (1 + level)/2 quantiles of the values (linear interpolation). Resamples
    whose statistic is not finite (e.g. a rank correlation of a resample with one distinct
    value) are left out; the interval is ``(nan, nan)`` when none is finite.

    Args:
        statistic: maps an index array (into the caller's examples) to a number.
        n: number of examples.
        resamples: number of bootstrap resamples.
        level: coverage of the interval, in (0, 1).
        seed: seed of the resampling; the same seed gives the same interval.

    Returns:
        ``(low, high)``.

    Raises:
        MinsharpError: ``n`` or ``resamples`` below 1, or ``level`` outside (0, 1).

    Example:
        >>> data = np.arange(100.0)
        >>> low, high = bootstrap_interval(lambda idx: data[idx].mean(), 100, seed=1)
        >>> bool(low < 49.5 < high)
        True
    """
    if n < 1 or resamples < 1:
        raise MinsharpError(f"bootstrap needs n ≥ 1 and resamples ≥ 1; got {n} and {resamples}.")
    if not 0 < level < 1:
        raise MinsharpError(f"bootstrap level must be in (0, 1); got {level}.")
    generator = np.random.default_rng(seed)
    draws = np.array([float(statistic(generator.integers(0, n, size=n))) for _ in range(resamples)])
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def correlation_table(
    rows: Sequence[Mapping[str, Any]],
    measures: Sequence[str],
    *,
    gap: str = "gap",
    axes: Sequence[str] = ("ratio", "seed", "model"),
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Rank correlations of each measure with the generalization gap over a study's runs.

    For each measure, the runs where both the measure and the gap are numbers (not missing,
    ``None`` or ``nan``; the strings ``"nan"``, ``"inf"``, ``"-inf"`` that JSON files hold are
    read as those floats) enter Kendall's τ-b, Spearman's ρ, their percentile bootstrap
    intervals over runs (the same resamples for both), and the granulated Kendall
    coefficient over ``axes``.

    Args:
        rows: one mapping per run, holding the measures' values, the gap and the axis values.
        measures: the keys of the measures to correlate, in the order of the table.
        gap: the key of the generalization gap (train accuracy − test accuracy).
        axes: the keys of the grid's axes for the granulated coefficient.
        resamples: bootstrap resamples per interval.
        seed: seed of the bootstrap.
        level: coverage of the intervals.

    Returns:
        One dictionary per measure: ``measure`` (its key), ``n`` (runs used), ``excluded``
        (runs left out for a missing or ``nan`` measure or gap), ``kendall_tau_b`` and
        ``kendall_tau_b_ci`` (``(low, high)``), ``spearman_rho`` and ``spearman_rho_ci``,
        ``granulated`` (ψ per axis, a dict) and ``granulated_average`` (Ψ).

    Raises:
        DataError: a run lacks an axis value, or holds a value that is not a number.
    """
    for index, row in enumerate(rows):
        absent = [axis for axis in axes if axis not in row]
        if absent:
            raise DataError(f"run {index} has no value for the axes {absent}.")
    gaps = np.array([_number(row.get(gap), gap, index) for index, row in enumerate(rows)])
    table = []
    for name in measures:
        values = np.array([_number(row.get(name), name, index) for index, row in enumerate(rows)])
        kept = np.flatnonzero(~(np.isnan(values) | np.isnan(gaps)))
        row = _correlation_row(
            values[kept],
            gaps[kept],
            {axis: [rows[run][axis] for run in kept] for axis in axes},
            resamples=resamples,
            level=level,
            seed=seed,
        )
        table.append({"measure": name, "n": len(kept), "excluded": len(rows) - len(kept), **row})
    return table


def _correlation_row(
    x: np.ndarray,
    y: np.ndarray,
    axis_values: Mapping[str, Sequence[Any]],
    *,
    resamples: int,
    level: float,
    seed: int,
) -> dict[str, Any]:
    """τ-b, ρ with their bootstrap intervals (the same resamples) and the granulated ψ, Ψ."""
    if len(x) >= 2:
        tau_ci, rho_ci = (
            bootstrap_interval(
                lambda idx, x=x, y=y, statistic=statistic: statistic(x[idx], y[idx]),
                len(x),
                resamples=resamples,
                level=level,
                seed=seed,
            )
            for statistic in (_tau_b, _spearman)
        )
    else:
        tau_ci = rho_ci = (math.nan, math.nan)
    granulated = granulated_kendall(x, y, axis_values)
    return {
        "kendall_tau_b": _tau_b(x, y),
        "kendall_tau_b_ci": tau_ci,
        "spearman_rho": _spearman(x, y),
        "spearman_rho_ci": rho_ci,
        "granulated": granulated.per_axis,
        "granulated_average": granulated.average,
    }


@dataclass(frozen=True)
class PairedDifference:
    """τ_b(A, g) − τ_b(B, g) over the same runs, with its paired bootstrap interval.

    Attributes:
        difference: the difference on all ``n`` runs.
        interval: its percentile bootstrap interval (runs resampled jointly).
        n: runs where both measures and the gap are numbers.
        above: share of the resamples (with a finite difference) where it is positive.
    """

    difference: float
    interval: tuple[float, float]
    n: int
    above: float

    @property
    def verdict(self) -> str:
        """``"A"`` when the interval lies above 0, ``"B"`` when below, else ``"neither"``."""
        low, high = self.interval
        if low > 0:
            return "A"
        if high < 0:
            return "B"
        return "neither"


def paired_tau_difference(
    first: Sequence[float] | np.ndarray,
    second: Sequence[float] | np.ndarray,
    gap: Sequence[float] | np.ndarray,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Paired bootstrap of Δ = τ_b(A, g) − τ_b(B, g), two measures A, B of the same runs.

    The runs where A, B and the gap g are all numbers are resampled with replacement *as
    runs* (each draw takes a run's A, B and g together), and Δ is evaluated on each
    resample; the interval is the percentile interval of those Δ (Efron & Tibshirani 1993,
    ch. 13). Because A and B share every resample, their correlated errors cancel, which two
    separate intervals for τ_A and τ_B ignore: Δ's interval above 0 says A ranks the runs
    by their gap better than B does, at that level.

    Args:
        first: measure A, one value per run.
        second: measure B, paired with ``first``.
        gap: the generalization gap of each run.
        resamples: bootstrap resamples.
        level: coverage of the interval.
        seed: seed of the resampling.

    Returns:
        Δ, its interval, the runs used and the share of resamples with Δ > 0; ``nan`` for
        fewer than two usable runs.

    Raises:
        DataError: the samples differ in length or are not one-dimensional.

    Example:
        >>> result = paired_tau_difference([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], [1, 2, 3, 4, 5])
        >>> round(result.difference, 2)
        0.4
    """
    a, b = _paired(first, second)
    g, _ = _paired(gap, a)
    kept = ~(np.isnan(a) | np.isnan(b) | np.isnan(g))
    a, b, g = a[kept], b[kept], g[kept]
    n = int(a.size)
    if n < 2:
        return PairedDifference(math.nan, (math.nan, math.nan), n, math.nan)
    draws: list[float] = []

    def difference(idx: np.ndarray) -> float:
        value = _tau_b(a[idx], g[idx]) - _tau_b(b[idx], g[idx])
        if math.isfinite(value):
            draws.append(value)
        return value

    interval = bootstrap_interval(difference, n, resamples=resamples, level=level, seed=seed)
    above = float(np.mean(np.array(draws) > 0)) if draws else math.nan
    return PairedDifference(_tau_b(a, g) - _tau_b(b, g), interval, n, above)


# --------------------------------------------------------------------------- internals


def _paired(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as float64 vectors of equal length."""
    first = np.asarray(x, dtype=np.float64)
    second = np.asarray(y, dtype=np.float64)
    if first.ndim != 1 or second.ndim != 1 or first.shape != second.shape:
        raise DataError(
            f"expected two one-dimensional samples of equal length; got shapes {first.shape} "
            f"and {second.shape}."
        )
    return first, second


def _of_numbers(statistic: Callable[[np.ndarray, np.ndarray], float], x: Any, y: Any) -> float:
    """``statistic`` of the paired samples ``x`` and ``y``; ``nan`` where either holds a ``nan``.

    Args:
        statistic: a rank statistic of two float64 vectors of equal length.
        x: the first sample.
        y: the second sample, paired with ``x``.

    Returns:
        The statistic, or ``nan``.

    Raises:
        DataError: the samples are not one-dimensional or differ in length.
    """
    first, second = _paired(x, y)
    if np.isnan(first).any() or np.isnan(second).any():
        return math.nan
    return statistic(first, second)


def _tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """τ-b of two float vectors without ``nan`` (see :func:`kendall_tau_b`)."""
    n = x.size
    if n < 2:
        return math.nan
    order = np.lexsort((y, x))  # by x, then y
    xs, ys = x[order], y[order]
    pairs = n * (n - 1) // 2
    tied_x = _tied_pairs(np.r_[True, xs[1:] != xs[:-1]])
    tied_y = _tied_pairs(np.r_[True, np.diff(np.sort(ys)) != 0])
    if tied_x == pairs or tied_y == pairs:
        return math.nan
    tied_both = _tied_pairs(np.r_[True, (xs[1:] != xs[:-1]) | (ys[1:] != ys[:-1])])
    # Sorted by (x, y), a pair i < j is discordant iff y_i > y_j: ties in x come with y ascending.
    discordant = _inversions(np.unique(ys, return_inverse=True)[1].ravel())
    difference = pairs - tied_x - tied_y + tied_both - 2 * discordant
    tau = difference / math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return min(1.0, max(-1.0, tau))


def _tied_pairs(starts: np.ndarray) -> int:
    """Σ t(t − 1)/2 over the runs of a sorted sequence, given the flags of each run's start."""
    lengths = np.diff(np.r_[np.flatnonzero(starts), starts.size])
    return int((lengths * (lengths - 1) // 2).sum())


def _inversions(ranks: np.ndarray) -> int:
    """Number of pairs i < j with ``ranks[i] > ranks[j]``, for integer ranks 0..m−1.

    A bottom-up merge sort, vectorised per level: at the level of width w, the blocks
    [2kw, 2kw + w) and [2kw + w, 2(k + 1)w) are each sorted; an element v of the right block
    is inverted with the elements of the left block greater than v, counted with two binary
    searches among keys ``k·m + value`` (globally sorted over the left blocks). Sorting the
    keys then merges each pair of blocks. O(n log² n); up to :data:`_SMALL` elements, the
    O(n²) comparison matrix is faster.
    """
    n = ranks.size
    if n <= _SMALL:  # one comparison matrix is faster for the sizes of a study's grid
        return int(np.count_nonzero(np.triu(ranks[:, None] > ranks[None, :], 1)))
    span = int(ranks.max()) + 1
    position = np.arange(n)
    current = ranks.astype(np.int64)
    total = 0
    width = 1
    while width < n:
        pair = position // (2 * width)
        right = (position // width) % 2 == 1
        keys = pair * span + current
        left_keys = keys[~right]
        above = np.searchsorted(left_keys, (pair[right] + 1) * span, side="left")
        at_most = np.searchsorted(left_keys, keys[right], side="right")
        total += int((above - at_most).sum())
        current = np.sort(keys) - pair * span
        width *= 2
    return total


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    first = np.flatnonzero(starts)
    lengths = np.diff(np.r_[first, values.size])
    mean_rank = first + (lengths + 1) / 2  # ranks first+1 … first+length, averaged
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """ρ of two float vectors without ``nan`` (see :func:`spearman_rho`)."""
    n = x.size
    if n < 2:
        return math.nan
    centre = (n + 1) / 2  # the mean of average ranks is always (n + 1)/2
    first = _average_ranks(x) - centre
    second = _average_ranks(y) - centre
    scale = math.sqrt(float(first @ first) * float(second @ second))
    if scale == 0:
        return math.nan
    return min(1.0, max(-1.0, float(first @ second) / scale))


def _hashable(value: Any) -> Hashable:
    """``value`` itself when hashable, else its ``repr`` (e.g. lists of widths)."""
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _number(value: Any, key: str, index: int) -> float:
    """A run's value as a float: ``nan`` when missing, numeric strings parsed."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"run {index}: {key} = {value!r} is not a number.") from None

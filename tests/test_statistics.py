"""Rank correlations, granulated Kendall and bootstrap intervals (study/report/statistics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from minsharp.errors import DataError, MinsharpError
from minsharp.study.report.statistics import (
    bootstrap_interval,
    correlation_table,
    granulated_kendall,
    kendall_tau_b,
    spearman_rho,
)


def _samples(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired samples with many ties (few distinct values), sometimes one continuous."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, rng.integers(2, 12), n).astype(float)
    y = x * rng.integers(-1, 2) + rng.integers(0, rng.integers(2, 12), n)
    if seed % 3 == 0:
        y = y + rng.normal(size=n)
    return x, y


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@pytest.mark.parametrize("seed", range(40))
def test_kendall_and_spearman_match_scipy_with_ties(seed):
    n = [2, 3, 7, 50, 255, 256, 257, 600][seed % 8]
    x, y = _samples(seed, n)
    expected_tau = stats.kendalltau(x, y, variant="b").statistic
    expected_rho = stats.spearmanr(x, y).statistic
    assert kendall_tau_b(x, y) == pytest.approx(expected_tau, abs=1e-12, nan_ok=True)
    assert spearman_rho(x, y) == pytest.approx(expected_rho, abs=1e-12, nan_ok=True)


def test_large_sample_matches_scipy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=5000).round(1)
    y = x + rng.normal(size=5000).round(1)
    assert abs(kendall_tau_b(x, y) - stats.kendalltau(x, y).statistic) <= 1e-12
    assert abs(spearman_rho(x, y) - stats.spearmanr(x, y).statistic) <= 1e-12


def test_undefined_correlations_are_nan_and_lengths_are_checked():
    for function in (kendall_tau_b, spearman_rho):
        assert math.isnan(function([1.0], [2.0]))
        assert math.isnan(function([1, 1, 1], [1, 2, 3]))
        assert math.isnan(function([1, 2, math.nan], [1, 2, 3]))
        assert function([1, 2, 3], [3, 2, 1]) == -1.0
        with pytest.raises(DataError, match="equal length"):
            function([1, 2, 3], [1, 2])


def test_granulated_kendall_on_a_hand_computed_grid():
    # ratio × seed grid, 3 × 2 runs, and one repeated run with a nan gap (dropped).
    ratio = [0.0, 0.5, 1.0, 0.0, 0.5, 1.0, 1.0]
    seed = [0, 0, 0, 1, 1, 1, 1]
    measure = [1.0, 2.0, 3.0, 2.0, 1.0, 5.0, 9.0]
    gap = [0.1, 0.2, 0.3, 0.1, 0.3, 0.2, math.nan]
    grid = granulated_kendall(measure, gap, {"ratio": ratio, "seed": seed})
    # Axis ratio, seed 0: measure 1, 2, 3 vs gap .1, .2, .3 → τ = 1.
    # seed 1: measure 2, 1, 5 vs gap .1, .3, .2: pairs (01) −, (02) +, (12) − → τ = −1/3.
    # Axis seed, each ratio a pair: ratio 0: gap tied → undefined, skipped;
    # ratio 0.5: measure 2→1, gap .2→.3: −1; ratio 1: measure 3→5, gap .3→.2: −1.
    assert grid.per_axis["ratio"] == pytest.approx((1 - 1 / 3) / 2)
    assert grid.per_axis["seed"] == -1.0
    assert grid.average == pytest.approx((1 / 3 - 1) / 2)
    assert grid.groups_used == {"ratio": 2, "seed": 2}
    assert grid.groups_skipped == {"ratio": 0, "seed": 1}


def test_granulated_kendall_degenerate_axes():
    # One model only: each group of the model axis has one run, so ψ_model is nan and Ψ
    # averages the defined axes; a single axis gives the plain τ-b.
    measure, gap = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    grid = granulated_kendall(measure, gap, {"ratio": [0, 1, 2, 3], "model": ["m"] * 4})
    assert math.isnan(grid.per_axis["model"])
    assert grid.groups_skipped["model"] == 4
    assert grid.average == grid.per_axis["ratio"] == pytest.approx(kendall_tau_b(measure, gap))
    empty = granulated_kendall(measure, gap, {})
    assert empty.per_axis == {} and math.isnan(empty.average)
    with pytest.raises(DataError, match="axis 'ratio'"):
        granulated_kendall(measure, gap, {"ratio": [0, 1]})


def test_bootstrap_contains_statistic_is_reproducible_and_narrows_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 640):
        x = rng.normal(size=n)
        y = x + rng.normal(size=n)
        tau = kendall_tau_b(x, y)

        def statistic(idx, x=x, y=y):
            return kendall_tau_b(x[idx], y[idx])

        low, high = bootstrap_interval(statistic, n, resamples=300, seed=3)
        assert low < tau < high
        assert (low, high) == bootstrap_interval(statistic, n, resamples=300, seed=3)
        assert (low, high) != bootstrap_interval(statistic, n, resamples=300, seed=4)
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~1/√n: 4× narrower for 16× the runs
    wider = bootstrap_interval(lambda idx: float(np.mean(idx)), 50, level=0.99, resamples=300)
    narrower = bootstrap_interval(lambda idx: float(np.mean(idx)), 50, level=0.5, resamples=300)
    assert wider[0] < narrower[0] < narrower[1] < wider[1]


def test_bootstrap_skips_undefined_resamples_and_checks_arguments():
    assert all(math.isnan(v) for v in bootstrap_interval(lambda idx: math.nan, 5, resamples=10))
    with pytest.raises(MinsharpError, match="level"):
        bootstrap_interval(lambda idx: 0.0, 5, level=1.0)
    with pytest.raises(MinsharpError, match="n ≥ 1"):
        bootstrap_interval(lambda idx: 0.0, 0)


def test_correlation_table():
    rng = np.random.default_rng(1)
    rows = []
    for ratio in (0.0, 0.5, 1.0):
        for seed in range(4):
            for model in ("mlp", "lenet"):
                gap = ratio + 0.05 * rng.normal()
                rows.append(
                    {
                        "ratio": ratio,
                        "seed": seed,
                        "model": model,
                        "gap": gap,
                        "good": gap + 0.01 * rng.normal(),
                        "noise": rng.normal(),
                    }
                )
    rows[0]["good"] = "nan"  # as JSON files store it
    del rows[1]["noise"]
    rows[2]["noise"] = None
    table = correlation_table(rows, ["good", "noise"], resamples=200, seed=0)
    assert [entry["measure"] for entry in table] == ["good", "noise"]
    good, noise = table
    assert (good["n"], good["excluded"], noise["n"], noise["excluded"]) == (23, 1, 22, 2)
    kept = [row for row in rows[1:]]
    x = [row["good"] for row in kept]
    y = [row["gap"] for row in kept]
    assert good["kendall_tau_b"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert good["spearman_rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    low, high = good["kendall_tau_b_ci"]
    assert low <= good["kendall_tau_b"] <= high
    low, high = good["spearman_rho_ci"]
    assert low <= good["spearman_rho"] <= high
    assert set(good["granulated"]) == {"ratio", "seed", "model"}
    assert good["granulated"]["ratio"] > 0.9 > abs(noise["granulated"]["ratio"])
    assert good["granulated_average"] == pytest.approx(np.mean(list(good["granulated"].values())))
    assert table == correlation_table(rows, ["good", "noise"], resamples=200, seed=0)
    with pytest.raises(DataError, match="axes"):
        correlation_table([{"gap": 0.1, "good": 1.0}], ["good"])
    with pytest.raises(DataError, match="not a number"):
        correlation_table([{"gap": "x", "ratio": 0, "seed": 0, "model": "m"}], ["good"])

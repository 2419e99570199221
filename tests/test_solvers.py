import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from minsharp.solvers.exp_sum import minimize_exp_sum


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_matches_an_independent_optimiser(seed):
    rng = np.random.default_rng(seed)
    dimension = int(rng.integers(1, 5))
    exponents = rng.integers(-2, 3, size=(3 * dimension, dimension)).astype(float)
    # Opposite rows guarantee a bounded, attained minimum.
    exponents = np.vstack([exponents, np.eye(dimension), -np.eye(dimension)])
    weights = rng.uniform(0.1, 10, size=len(exponents))
    result = minimize_exp_sum(weights, exponents)

    def objective(x):
        return float(np.sum(weights * np.exp(exponents @ x)))

    reference = minimize(objective, np.zeros(dimension), method="BFGS", options={"gtol": 1e-12})
    assert result.attained
    assert result.value <= reference.fun * (1 + 1e-12)
    assert result.value == pytest.approx(reference.fun, rel=1e-9)
    assert result.relative_gradient_norm < 1e-12
    assert result.iterations < 50


def test_unattained_infimum_is_flagged_and_exact():
    # e^{x} + 3: infimum 3 as x → −∞.
    result = minimize_exp_sum(np.array([1.0, 3.0]), np.array([[1.0], [0.0]]))
    assert not result.attained
    assert result.value == 3.0
    # e^{x-y} + e^{y}: both vanish along (−2, −1): infimum 0.
    result = minimize_exp_sum(np.array([1.0, 1.0]), np.array([[1.0, -1.0], [0.0, 1.0]]))
    assert not result.attained
    assert result.value == 0.0


def test_flat_direction_is_still_attained():
    # e^{x+y} + e^{−x−y}: minimum 2 along the line x + y = 0.
    result = minimize_exp_sum(np.array([1.0, 1.0]), np.array([[1.0, 1.0], [-1.0, -1.0]]))
    assert result.attained
    assert result.value == pytest.approx(2.0, rel=1e-15)


def test_rejects_negative_weights():
    with pytest.raises(ValueError, match="non-negative"):
        minimize_exp_sum(np.array([-1.0]), np.array([[1.0]]))

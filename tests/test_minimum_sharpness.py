import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from tests.chains import assert_untouched, chain_case, random_alphas, snapshot
from torch import nn

import minsharp
from minsharp.measures import solve_scales
from minsharp.symmetry.layerwise import chain_layers


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_invariant_to_layer_rescaling_while_the_trace_moves(seed):
    model, inputs = chain_case(seed)
    result = minsharp.minimum_sharpness(model, inputs)
    order = list(result.weight_traces)
    alphas = random_alphas(len(order), seed + 1)
    twin = minsharp.rescale(model, alphas, inputs)
    rescaled = minsharp.minimum_sharpness(twin, inputs)
    assert rescaled.value == pytest.approx(result.value, rel=1e-8)
    weights = list(result.weight_traces.values())
    if min(weights) <= 1e-6 * max(weights):
        return  # a (nearly) dead layer: nothing to move, and the minimiser is not unique
    assert abs(rescaled.trace - result.trace) > 1e-6 * result.trace
    # The minimiser is unique: the twin's optimal rescaling undoes the one that made it.
    for name, alpha in zip(order, alphas, strict=True):
        assert rescaled.alphas[name] * alpha == pytest.approx(result.alphas[name], rel=1e-6)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_value_is_the_trace_at_the_optimum_and_a_minimum(seed):
    model, inputs = chain_case(seed)
    result = minsharp.minimum_sharpness(model, inputs)
    assert result.certificate["max_relative_imbalance"] <= 1e-10
    assert result.value <= result.trace * (1 + 1e-12)
    alphas = list(result.alphas.values())
    at_optimum = minsharp.hessian_trace(minsharp.rescale(model, alphas, inputs), inputs)
    assert at_optimum.total == pytest.approx(result.value, rel=1e-10)
    nudged = np.array(random_alphas(len(alphas), seed, spread=0.05)) * np.array(alphas)
    nearby = minsharp.hessian_trace(
        minsharp.rescale(model, nudged / math.prod(nudged) ** (1 / len(alphas)), inputs), inputs
    )
    assert nearby.total >= result.value * (1 - 1e-12)


def _slow_minimum(weight, bias):
    """Direct minimisation over log α_1..α_{L−1} with α_L = 1 / Π α_l."""
    weight, bias = np.array(weight), np.array(bias)

    def objective(logs):
        logs = np.append(logs, -logs.sum())
        cumulative = np.cumsum(logs)
        return float(np.sum(weight * np.exp(-2 * logs) + bias * np.exp(-2 * cumulative)))

    if len(weight) == 1:
        return objective(np.zeros(0))
    start = np.zeros(len(weight) - 1)
    return minimize(objective, start, method="BFGS", options={"gtol": 1e-13}).fun


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), with_bias=st.booleans())
def test_solve_scales_matches_a_direct_minimisation(seed, with_bias):
    rng = np.random.default_rng(seed)
    layers = int(rng.integers(1, 6))
    weight = rng.uniform(0.01, 5, layers).tolist()
    bias = rng.uniform(0.0, 2, layers).tolist() if with_bias else [0.0] * layers
    solution = solve_scales(weight, bias)
    assert solution.value == pytest.approx(_slow_minimum(weight, bias), rel=1e-8)
    assert math.prod(solution.alphas) == pytest.approx(1.0, rel=1e-12)
    assert solution.certificate.method == ("newton" if with_bias else "closed form")
    if not with_bias:
        assert solution.value == pytest.approx(layers * math.prod(weight) ** (1 / layers))


def test_closed_form_and_newton_agree():
    weight = [0.3, 2.0, 0.7]
    closed = solve_scales(weight, [0.0, 0.0, 0.0])
    newton = solve_scales(weight, [0.0, 0.0, 1e-300])  # a bias term too small to matter
    assert newton.certificate.method == "newton"
    assert newton.value == pytest.approx(closed.value, rel=1e-13)
    np.testing.assert_allclose(newton.alphas, closed.alphas, rtol=1e-7)


@pytest.mark.parametrize(
    ("weight", "bias", "infimum"),
    [([0.0, 4.0, 1.0], [0.0, 0.0, 0.0], 0.0), ([0.0, 4.0, 1.0], [0.0, 0.0, 2.0], 2.0)],
)
def test_zero_traces_give_a_flagged_infimum(weight, bias, infimum):
    solution = solve_scales(weight, bias)
    assert solution.alphas is None
    assert solution.value == infimum


def test_per_neuron_rescaling_changes_minimum_sharpness():
    """MS is invariant to layer-wise α but not to per-neuron rescaling (theory §2)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    inputs = torch.randn(7, 4, dtype=torch.float64)
    assert (model[1](model[0](inputs))[:, 0] > 0).any()  # unit 0 is alive
    twin = copy.deepcopy(model)
    with torch.no_grad():  # unit 0 of the hidden layer: × 5 in, ÷ 5 out
        twin[0].weight[0] *= 5.0
        twin[0].bias[0] *= 5.0
        twin[2].weight[:, 0] /= 5.0
    torch.testing.assert_close(twin(inputs), model(inputs))
    original = minsharp.minimum_sharpness(model, inputs).value
    moved = minsharp.minimum_sharpness(twin, inputs).value
    assert abs(moved - original) > 1e-2 * original


def test_no_bias_network_uses_the_closed_form_and_reports_per_layer_traces():
    model, inputs = chain_case(7, bias=False)
    result = minsharp.minimum_sharpness(model, inputs)
    layers = chain_layers(model, inputs)
    assert list(result.weight_traces) == layers == list(result.alphas)
    assert result.certificate["max_relative_imbalance"] <= 1e-10
    assert all(value == 0.0 for value in result.bias_traces.values())
    traces = list(result.per_layer.values())  # no bias: T^W_l / α_l² per layer
    np.testing.assert_allclose(traces, traces[0], rtol=1e-12)  # equalised by the optimum
    assert result.value == pytest.approx(
        len(layers) * math.prod(result.weight_traces.values()) ** (1 / len(layers))
    )


def test_network_not_piecewise_linear_is_refused_untouched_unless_ggn():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    inputs = torch.randn(6, 3, dtype=torch.float64)
    before = snapshot(model)
    with pytest.raises(minsharp.NotPiecewiseLinearError, match="curvature='ggn'"):
        minsharp.minimum_sharpness(model, inputs)
    assert_untouched(model, before)
    result = minsharp.minimum_sharpness(model, inputs, curvature="ggn")
    # tanh pins the hidden units and the logits are pinned: nothing moves, MS is the trace.
    assert result.details["num_units"] == 0
    ggn = minsharp.hessian_trace(model, inputs, curvature="ggn").total
    assert result.value == pytest.approx(ggn, rel=1e-12)


def test_frozen_layer_is_rescaled_but_not_counted():
    model, inputs = chain_case(11)
    next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))).weight.requires_grad_(
        False
    )
    result = minsharp.minimum_sharpness(model, inputs)
    twin = result.rescaled(model)
    assert minsharp.hessian_trace(twin, inputs).total == pytest.approx(result.value, rel=1e-8)
    assert result.value <= result.trace * (1 + 1e-12)


def test_generator_data_is_consumed_once_and_whole():
    model, inputs = chain_case(5)
    expected = minsharp.minimum_sharpness(model, inputs)
    batches = (inputs[i : i + 2] for i in range(0, len(inputs), 2))
    result = minsharp.minimum_sharpness(model, batches, batch_size=2)
    assert result.num_examples == len(inputs)
    assert result.value == pytest.approx(expected.value, rel=1e-12)


@pytest.mark.parametrize("data", [torch.zeros(0, 3), []])
def test_empty_data(data):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(minsharp.DataError, match="no examples"):
        minsharp.minimum_sharpness(model, data)


def test_bad_traces():
    with pytest.raises(ValueError, match="non-negative"):
        solve_scales([1.0, -1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="one trace per layer"):
        solve_scales([1.0], [0.0, 0.0])

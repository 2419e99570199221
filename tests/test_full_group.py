"""Minimum Sharpness over the full rescaling group against brute force and scipy (theory §7)."""

from __future__ import annotations

import pytest
import torch
from tests.chains import chain_case
from tests.group_networks import (
    CASES,
    brute_diagonal,
    build,
    classes_of,
    scipy_minimum,
    transformer,
)
from torch import nn

import minsharp
from minsharp.curvature import hessian_trace
from minsharp.errors import MinsharpError
from minsharp.measures.neuron_sharpness import group_minimum_sharpness
from minsharp.symmetry.graph import discover
from minsharp.symmetry.group import random_log_scales, rescaled_copy


@pytest.mark.parametrize("seed", range(6))
def test_layer_symmetry_on_a_chain_is_minimum_sharpness(seed):
    model, inputs = chain_case(seed)
    expected = minsharp.minimum_sharpness(model, inputs).value
    assert group_minimum_sharpness(model, inputs, symmetry="layer").value == pytest.approx(
        expected, rel=1e-12
    )


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("symmetry", ["layer", "neuron"])
def test_value_matches_scipy_on_brute_force_diagonal(case, symmetry):
    model, inputs = build(case)
    result = group_minimum_sharpness(model, inputs, symmetry=symmetry)
    group = discover(model, inputs[:4])
    if symmetry == "layer":
        group.tie_layers()
    reference = scipy_minimum(brute_diagonal(model, inputs), group.edges, classes_of(group))
    assert result.value == pytest.approx(reference, rel=1e-8)
    assert result.certificate.attained
    assert result.certificate.max_relative_imbalance <= 1e-10
    twin = result.rescaled(model)
    assert sum(float(h.sum()) for h in brute_diagonal(twin, inputs).values()) == pytest.approx(
        result.value, rel=1e-8
    )
    with torch.no_grad():
        gap = (twin(inputs) - model(inputs)).abs().max() / model(inputs).abs().max()
    assert gap <= 1e-10


@pytest.mark.parametrize("case", sorted(CASES))
def test_neuron_is_at_most_layer_and_invariant(case):
    model, inputs = build(case)
    neuron = group_minimum_sharpness(model, inputs).value
    layer = group_minimum_sharpness(model, inputs, symmetry="layer").value
    assert neuron <= layer * (1 + 1e-12)
    group = discover(model, inputs[:4])
    moved = rescaled_copy(model, group, random_log_scales(group, seed=3, spread=1.0))
    assert group_minimum_sharpness(moved, inputs).value == pytest.approx(neuron, rel=1e-8)
    group.tie_layers()
    moved = rescaled_copy(model, group, random_log_scales(group, seed=4, spread=1.0))
    assert group_minimum_sharpness(moved, inputs, symmetry="layer").value == pytest.approx(
        layer, rel=1e-8
    )


def test_transformer_feed_forward_with_ggn():
    torch.manual_seed(0)
    model = transformer().double().eval()
    inputs = torch.randn(6, 3, 3, dtype=torch.float64)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        result = group_minimum_sharpness(model, inputs, curvature="ggn")
        group = discover(model, inputs[:4])
        reference = scipy_minimum(
            brute_diagonal(model, inputs, ggn=True), group.edges, classes_of(group)
        )
        trace = hessian_trace(result.rescaled(model), inputs, curvature="ggn").total
    assert result.curvature == "ggn" and result.num_units == 7 + 0  # FF units only
    assert result.value == pytest.approx(reference, rel=1e-8)
    assert trace == pytest.approx(result.value, rel=1e-8)


def test_hardtanh_pins_but_the_rest_is_solved():
    torch.manual_seed(1)
    model = (
        nn.Sequential(nn.Linear(3, 4), nn.Hardtanh(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
        .double()
        .eval()
    )
    inputs = torch.randn(10, 3, dtype=torch.float64)
    result = group_minimum_sharpness(model, inputs)
    assert result.num_units == 5
    assert torch.equal(result.scales["0"], torch.ones(4, dtype=torch.float64))


def test_gelu_needs_ggn():
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)).double().eval()
    inputs = torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(MinsharpError, match="piecewise linear"):
        group_minimum_sharpness(model, inputs)
    assert group_minimum_sharpness(model, inputs, curvature="ggn").curvature == "ggn"


def test_unattained_infimum_is_flagged_with_the_units_that_run_off():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    with torch.no_grad():
        model[2].weight[:, 1] = 0.0  # unit 1 feeds nothing
    inputs = torch.randn(8, 3, dtype=torch.float64)
    result = group_minimum_sharpness(model, inputs)
    assert not result.certificate.attained
    assert result.scales is None
    assert "0[1]" in result.runaway and "incoming" in result.runaway["0[1]"]
    with pytest.raises(ValueError, match="not attained"):
        result.rescaled(model)


def test_untraceable_model_is_refused():
    from tests.group_networks import Branchy

    with pytest.raises(MinsharpError, match="cannot trace"):
        group_minimum_sharpness(Branchy().double().eval(), torch.randn(4, 4, dtype=torch.float64))

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
from minsharp.models import build_model
from minsharp.solvers.chain import solve_scales
from minsharp.symmetry.graph import discover
from minsharp.symmetry.group import random_log_scales, rescaled_copy


@pytest.mark.parametrize("seed", range(6))
def test_layer_symmetry_on_a_chain_is_minimum_sharpness(seed):
    model, inputs = chain_case(seed)
    layers = hessian_trace(model, inputs).by_layer()
    expected = solve_scales(
        [traces["weight"] for traces in layers.values()],
        [traces.get("bias", 0.0) for traces in layers.values()],
    )
    result = minsharp.minimum_sharpness(model, inputs)
    assert result.value == pytest.approx(expected.value, rel=1e-12)
    assert list(result.alphas.values()) == pytest.approx(expected.alphas, rel=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("symmetry", ["layer", "neuron"])
def test_value_matches_scipy_on_brute_force_diagonal(case, symmetry):
    model, inputs = build(case)
    result = minsharp.minimum_sharpness(model, inputs, symmetry=symmetry)
    group = discover(model, inputs[:4])
    if symmetry == "layer":
        group.tie_layers()
    reference = scipy_minimum(brute_diagonal(model, inputs), group.edges, classes_of(group))
    assert result.value == pytest.approx(reference, rel=1e-8)
    assert result.certificate["attained"]
    assert result.certificate["max_relative_imbalance"] <= 1e-10
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
    neuron = minsharp.minimum_sharpness(model, inputs, symmetry="neuron").value
    layer = minsharp.minimum_sharpness(model, inputs, symmetry="layer").value
    assert neuron <= layer * (1 + 1e-12)
    group = discover(model, inputs[:4])
    moved = rescaled_copy(model, group, random_log_scales(group, seed=3, spread=1.0))
    assert minsharp.minimum_sharpness(moved, inputs, symmetry="neuron").value == pytest.approx(
        neuron, rel=1e-8
    )
    group.tie_layers()
    moved = rescaled_copy(model, group, random_log_scales(group, seed=4, spread=1.0))
    assert minsharp.minimum_sharpness(moved, inputs, symmetry="layer").value == pytest.approx(
        layer, rel=1e-8
    )


def test_transformer_feed_forward_with_ggn():
    torch.manual_seed(0)
    model = transformer().double().eval()
    inputs = torch.randn(6, 3, 3, dtype=torch.float64)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        result = minsharp.minimum_sharpness(model, inputs, symmetry="neuron", curvature="ggn")
        group = discover(model, inputs[:4])
        reference = scipy_minimum(
            brute_diagonal(model, inputs, ggn=True), group.edges, classes_of(group)
        )
        trace = hessian_trace(result.rescaled(model), inputs, curvature="ggn").total
    assert result.details["curvature"] == "ggn"
    assert result.details["num_units"] == 7  # the feed-forward units only
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
    result = minsharp.minimum_sharpness(model, inputs, symmetry="neuron")
    assert result.details["num_units"] == 5
    assert result.details["scales"]["0"] == [1.0] * 4


def test_gelu_needs_ggn():
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)).double().eval()
    inputs = torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(MinsharpError, match="piecewise linear"):
        minsharp.minimum_sharpness(model, inputs, symmetry="neuron")
    assert (
        minsharp.minimum_sharpness(model, inputs, symmetry="neuron", curvature="ggn").details[
            "curvature"
        ]
        == "ggn"
    )


def test_unattained_infimum_is_flagged_with_the_units_that_run_off():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    with torch.no_grad():
        model[2].weight[:, 1] = 0.0  # unit 1 feeds nothing
    inputs = torch.randn(8, 3, dtype=torch.float64)
    result = minsharp.minimum_sharpness(model, inputs, symmetry="neuron")
    assert not result.certificate["attained"]
    runaway = result.details["runaway"]
    assert result.details["scales"] is None
    assert "0[1]" in runaway and "incoming" in runaway["0[1]"]
    with pytest.raises(MinsharpError, match="not attained"):
        result.rescaled(model)


def test_untraceable_model_is_refused():
    from tests.group_networks import Branchy

    with pytest.raises(MinsharpError, match="cannot trace"):
        minsharp.minimum_sharpness(
            Branchy().double().eval(), torch.randn(4, 4, dtype=torch.float64)
        )


class _Branch(nn.Module):
    """Data-dependent control flow: not traceable on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y if y.sum() > 0 else -y


class _WithBranchyPart(nn.Module):
    """A traceable network around an untraceable submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.branchy = _Branch()
        self.hidden = nn.Linear(4, 5)
        self.last = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.relu(self.hidden(self.branchy(torch.relu(self.first(x))))))


def test_untraceable_submodule_is_kept_whole_and_pins_its_inputs():
    torch.manual_seed(5)
    model = _WithBranchyPart().double().eval()
    inputs = torch.randn(10, 4, dtype=torch.float64)
    result = minsharp.minimum_sharpness(model, inputs, symmetry="neuron")
    scales = result.details["scales"]
    assert scales["first"] == [1.0] * 4  # read by the opaque submodule: pinned
    assert "branchy.fc" not in scales and len(scales["hidden"]) == 5
    twin = result.rescaled(model)
    assert hessian_trace(twin, inputs).total == pytest.approx(result.value, rel=1e-8)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_resnet20_from_the_zoo_twin_trace_is_the_value(batchnorm):
    torch.manual_seed(0)
    model = build_model("resnet20", (3, 8, 8), 4, batchnorm=batchnorm).double().eval()
    with torch.no_grad():  # trained-looking statistics: no accidental symmetry at β = μ = 0
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    inputs = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    layer = minsharp.minimum_sharpness(model, inputs)
    neuron = minsharp.minimum_sharpness(model, inputs, symmetry="neuron")
    assert neuron.value <= layer.value * (1 + 1e-12)
    for result in (layer, neuron):
        assert result.certificate["max_relative_imbalance"] <= 1e-10
        twin = result.rescaled(model)
        assert hessian_trace(twin, inputs).total == pytest.approx(result.value, rel=1e-8)

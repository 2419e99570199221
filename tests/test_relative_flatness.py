"""Relative flatness against dense autograd Hessians of one layer's weight."""

from __future__ import annotations

import pytest
import torch
from tests.symmetries import labelled_data, network
from torch import nn
from torch.func import functional_call

from minsharp.errors import MinsharpError, ModelError, NotPiecewiseLinearError
from minsharp.measures import measure
from minsharp.measures.relative_flatness import relative_flatness

CASES = [("mlp", False), ("mlp", True), ("cnn", False), ("cnn", True)]


def weight_hessian(model: nn.Module, layer: str, inputs: torch.Tensor) -> torch.Tensor:
    """Dense ``∂²L/∂W²`` (C, P, C, P) of the mean cross-entropy; labels do not matter."""
    name = f"{layer}.weight"
    weight = dict(model.named_parameters())[name].detach()
    labels = torch.zeros(inputs.shape[0], dtype=torch.long)

    def loss(w: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, {name: w}, (inputs,)), labels)

    return torch.autograd.functional.hessian(loss, weight)


def flatness_from(hessian: torch.Tensor, weight: torch.Tensor) -> float:
    """``Σ_{s,s'} ⟨w_s, w_s'⟩ Tr H_{s,s'}`` from the dense block."""
    block_traces = torch.einsum("sktk->st", hessian)
    return (weight @ weight.T * block_traces).sum().item()


def last_linear(model: nn.Sequential) -> str:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize(("kind", "batchnorm"), CASES)
def test_matches_the_dense_hessian_of_the_last_layer(kind, batchnorm):
    model = network(kind, batchnorm=batchnorm, seed=4)
    inputs, labels = labelled_data(kind, 4)
    layer = last_linear(model)
    hessian = weight_hessian(model, layer, inputs)
    expected = flatness_from(hessian, model.get_submodule(layer).weight.detach())
    result = relative_flatness(model, (inputs, labels), batch_size=5)
    assert result.value == pytest.approx(expected, rel=1e-10, abs=0)
    assert result.per_layer == {layer: result.value}
    assert result.details["layer"] == layer
    assert result.details["weight_trace"] == pytest.approx(
        torch.einsum("sksk->", hessian).item(), rel=1e-10
    )


@pytest.mark.parametrize("batchnorm", [False, True])
def test_matches_the_dense_hessian_of_a_hidden_layer(batchnorm):
    model = network("mlp", batchnorm=batchnorm, seed=5)
    inputs, _ = labelled_data("mlp", 5)
    layer = "0"  # the first Linear; it feeds the batch-norm when there is one
    expected = flatness_from(weight_hessian(model, layer, inputs), model[0].weight.detach())
    result = measure("relative_flatness", model, inputs, layer=layer)
    assert result.value == pytest.approx(expected, rel=1e-10, abs=0)
    assert result.invariances == ("layer", "batchnorm")


def test_sequence_inputs_and_hidden_layers_of_every_shape():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(15, 6), nn.ReLU(), nn.Linear(6, 3)
    ).double()
    inputs = torch.randn(7, 3, 4, dtype=torch.float64)
    for layer in ("0", "3", "5"):
        weight = model.get_submodule(layer).weight.detach()
        expected = flatness_from(weight_hessian(model, layer, inputs), weight)
        value = relative_flatness(model, inputs, layer=layer).value
        assert value == pytest.approx(expected, rel=1e-10, abs=0)


def test_smooth_networks_are_refused_or_measured_as_ggn():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    inputs, _ = labelled_data("mlp", 3)
    with pytest.raises(NotPiecewiseLinearError, match="curvature='ggn'"):
        relative_flatness(model, inputs, layer="0")
    # The last layer feeds the logits directly: Hessian and GGN blocks coincide.
    last = relative_flatness(model, inputs)
    weight = model[2].weight.detach()
    assert last.value == pytest.approx(
        flatness_from(weight_hessian(model, "2", inputs), weight), rel=1e-10
    )
    # GGN of the first layer: (1/N) Σ_n J_nᵀ (diag p − p pᵀ) J_n from autograd Jacobians.
    weight = model[0].weight.detach()
    ggn = torch.zeros(weight.numel(), weight.numel(), dtype=torch.float64)
    for x in inputs:
        jacobian = torch.autograd.functional.jacobian(
            lambda w, x=x: functional_call(model, {"0.weight": w}, (x[None],))[0], weight
        ).reshape(3, -1)
        p = model(x[None])[0].softmax(0).detach()
        ggn += jacobian.T @ (torch.diag(p) - torch.outer(p, p)) @ jacobian / inputs.shape[0]
    expected = flatness_from(ggn.reshape(*weight.shape, *weight.shape), weight)
    result = relative_flatness(model, inputs, layer="0", curvature="ggn")
    assert result.value == pytest.approx(expected, rel=1e-10)
    assert result.details["curvature"] == "ggn"


def test_batching_does_not_change_the_value():
    model = network("cnn", batchnorm=True, seed=0)
    inputs, labels = labelled_data("cnn", 0)
    whole = relative_flatness(model, inputs).value
    assert relative_flatness(model, inputs, batch_size=1).value == pytest.approx(whole, rel=1e-12)
    batches = [(inputs[:4], labels[:4]), (inputs[4:], labels[4:])]
    assert relative_flatness(model, batches).value == pytest.approx(whole, rel=1e-12)


class WithSpare(nn.Module):
    """A Linear layer that the forward pass never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.used, self.spare = nn.Linear(5, 3), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_bad_options_and_models_are_refused():
    model = network("cnn", batchnorm=False, seed=0)
    inputs, _ = labelled_data("cnn", 0)
    with pytest.raises(MinsharpError, match=r"no module named 'fc'.*Linear layers are: 6"):
        relative_flatness(model, inputs, layer="fc")
    with pytest.raises(MinsharpError, match="module '0' is a Conv2d"):
        relative_flatness(model, inputs, layer="0")
    with pytest.raises(MinsharpError, match="option layer must be"):
        relative_flatness(model, inputs, layer=6)
    with pytest.raises(MinsharpError, match="curvature must be 'hessian' or 'ggn'"):
        relative_flatness(model, inputs, curvature="fisher")
    convolutional = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten()).double()
    with pytest.raises(ModelError, match="calls none"):
        relative_flatness(convolutional, inputs)
    unused = WithSpare().double()
    with pytest.raises(ModelError, match="not called"):
        relative_flatness(unused, torch.randn(4, 5, dtype=torch.float64), layer="spare")
    frozen = network("mlp", batchnorm=False, seed=0)
    frozen[-1].weight.requires_grad_(False)
    with pytest.raises(ModelError, match="frozen"):
        relative_flatness(frozen, labelled_data("mlp", 0)[0])
    with pytest.raises(ModelError, match="training mode"):
        relative_flatness(network("mlp", batchnorm=True, seed=0).train(), labelled_data("mlp", 0))


def test_works_inside_inference_mode():
    model = network("cnn", batchnorm=True, seed=2)
    inputs, _ = labelled_data("cnn", 2)
    value = relative_flatness(model, inputs).value
    with torch.inference_mode():
        assert relative_flatness(model, inputs.clone()).value == value

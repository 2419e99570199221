"""BN-sharpness against a direct computation on perturbed copies of the model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tests.symmetries import (
    check_label_errors,
    labelled_data,
    network,
    rescale_batchnorm_inputs,
    rescale_layers,
    rescale_neurons,
)
from torch import nn

from minsharp.errors import MinsharpError, ModelError
from minsharp.measures import measure
from minsharp.measures.bn_sharpness import (
    batchnorm_rows,
    bn_sharpness,
    bn_sharpness_direction,
    gauss_legendre,
)


def loss_of(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(inputs), labels)


def normalised_layer(model: nn.Sequential) -> str:
    """Name of the (single) module right in front of a batch-norm."""
    modules = list(model)
    (index,) = [
        i
        for i in range(len(modules) - 1)
        if isinstance(modules[i + 1], nn.BatchNorm1d | nn.BatchNorm2d)
    ]
    return str(index)


def direct_bn_sharpness(
    model: nn.Sequential, inputs: torch.Tensor, labels: torch.Tensor, delta: float, nodes: int
) -> float:
    """theory §5 by hand: the blocks of the batch-normalised layer are its weight rows and its
    bias entries, every other tensor is one block; the loss along the line from copies."""
    work = copy.deepcopy(model)
    base = loss_of(work, inputs, labels)
    base.backward()
    layer = normalised_layer(work)
    direction = {}
    for name, p in work.named_parameters():
        if name == f"{layer}.weight":
            rows_w, rows_g = p.detach().flatten(1), p.grad.flatten(1)
            scale = torch.stack(
                [
                    rows_w[k].norm() / rows_g[k].norm() if rows_g[k].norm() > 0 else torch.zeros(())
                    for k in range(len(rows_w))
                ]
            )
            direction[name] = p.grad * scale.reshape(-1, *[1] * (p.dim() - 1))
        elif name == f"{layer}.bias":
            direction[name] = p.detach().abs() * torch.sign(p.grad)
        else:
            direction[name] = p.detach().norm() * p.grad / p.grad.norm()
    x, w = np.polynomial.legendre.leggauss(nodes)
    total = 0.0
    for xi, wi in zip(x, w, strict=True):
        t = delta * (xi + 1) / 2
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in moved.named_parameters():
                p += t * direction[name]
            total += wi / 2 * (loss_of(moved, inputs, labels) - base.detach()).item()
    return total


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize(("delta", "nodes"), [(0.05, 8), (0.3, 3)])
def test_matches_a_direct_computation_on_perturbed_copies(kind, delta, nodes):
    model = network(kind, batchnorm=True, seed=6)
    inputs, labels = labelled_data(kind, 6)
    expected = direct_bn_sharpness(model, inputs, labels, delta, nodes)
    result = bn_sharpness(model, (inputs, labels), delta=delta, nodes=nodes, batch_size=5)
    assert result.value == pytest.approx(expected, rel=1e-10, abs=0)
    assert result.details["row_blocks"] == [f"{normalised_layer(model)}.weight"]
    assert sum(result.details["weights"]) == pytest.approx(1, rel=1e-14)
    assert result.details["loss"] == pytest.approx(loss_of(model, inputs, labels).item())


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_invariant_to_layer_and_batchnorm_rescaling_not_to_neurons(kind):
    model = network(kind, batchnorm=True, seed=7)
    data = labelled_data(kind, 7)
    value = measure("bn_sharpness", model, data).value
    for transform in (rescale_layers, rescale_batchnorm_inputs):
        twin = transform(model, 11)
        assert measure("bn_sharpness", twin, data).value == pytest.approx(value, rel=1e-6)
    moved = measure("bn_sharpness", rescale_neurons(model, 11), data).value
    assert abs(moved - value) > 1e-3 * value


def test_direction_has_each_block_norm_and_zero_where_the_gradient_vanishes():
    model = network("cnn", batchnorm=True, seed=8)
    inputs, labels = labelled_data("cnn", 8)
    parameters = dict(model.named_parameters())
    gradient = dict(
        zip(
            parameters,
            torch.autograd.grad(loss_of(model, inputs, labels), list(parameters.values())),
            strict=True,
        )
    )
    gradient["0.weight"][1] = 0.0
    gradient["0.bias"][1] = 0.0
    gradient["4.bias"] = None  # a parameter without gradient
    rows = batchnorm_rows(model, inputs[:4])
    assert rows == {"0.weight": "0.bias"}
    direction = bn_sharpness_direction(parameters, gradient, rows)
    assert list(direction) == list(parameters)
    for k in range(3):  # rows and bias entries are separate blocks, each moved by its norm
        for name, block in [
            ("0.weight", direction["0.weight"][k]),
            ("0.bias", direction["0.bias"][k]),
        ]:
            expected = 0.0 if k == 1 else parameters[name][k].norm().item()
            assert block.norm().item() == pytest.approx(expected, rel=1e-12, abs=0)
    assert torch.equal(direction["4.bias"], torch.zeros_like(parameters["4.bias"]))
    assert direction["4.weight"].norm().item() == pytest.approx(
        parameters["4.weight"].norm().item(), rel=1e-12
    )
    assert not any(v.requires_grad for v in direction.values())


def test_rows_are_found_in_training_mode_without_touching_the_statistics():
    model = network("mlp", batchnorm=True, seed=0).train()
    before = {name: b.clone() for name, b in model.named_buffers()}
    assert batchnorm_rows(model, labelled_data("mlp", 0)[0][:4]) == {"2.weight": "2.bias"}
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name])
    assert batchnorm_rows(network("mlp", batchnorm=False, seed=0), labelled_data("mlp", 0)[0]) == {}


@pytest.mark.parametrize("nodes", [1, 2, 5, 12, 40])
def test_gauss_legendre_matches_numpy(nodes):
    points, weights = gauss_legendre(nodes)
    expected_points, expected_weights = np.polynomial.legendre.leggauss(nodes)
    np.testing.assert_allclose(points, expected_points, rtol=0, atol=1e-14)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-12)


def test_batching_does_not_change_the_value():
    model = network("cnn", batchnorm=True, seed=9)
    inputs, labels = labelled_data("cnn", 9)
    whole = bn_sharpness(model, (inputs, labels)).value
    batches = [(inputs[:5], labels[:5]), (inputs[5:], labels[5:])]
    assert bn_sharpness(model, batches, batch_size=2).value == pytest.approx(whole, rel=1e-12)


def test_bad_input_is_refused_with_clear_errors():
    model = network("mlp", batchnorm=True, seed=0)
    inputs, labels = labelled_data("mlp", 0)
    check_label_errors(lambda data: bn_sharpness(model, data), "mlp", 0)
    for delta in (0, -0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(MinsharpError, match=r"delta must be a number in \(0, 1\]"):
            bn_sharpness(model, (inputs, labels), delta=delta)
    for nodes in (0, 65, 2.0, True):
        with pytest.raises(MinsharpError, match="nodes must be an integer from 1 to 64"):
            bn_sharpness(model, (inputs, labels), nodes=nodes)
    with pytest.raises(ModelError, match="needs a network with batch-norm"):
        measure("bn_sharpness", network("mlp", batchnorm=False, seed=0), (inputs, labels))
    with pytest.raises(ModelError, match="training mode"):
        bn_sharpness(network("mlp", batchnorm=True, seed=0).train(), (inputs, labels))


def test_works_inside_inference_mode_and_leaves_the_model_untouched():
    model = network("mlp", batchnorm=True, seed=2)
    inputs, labels = labelled_data("mlp", 2)
    state = {name: t.clone() for name, t in model.state_dict().items()}
    value = bn_sharpness(model, (inputs, labels)).value
    with torch.inference_mode():
        made_here = (inputs.clone(), labels.clone())
        assert bn_sharpness(model, made_here).value == value
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])
    assert all(p.grad is None for p in model.parameters())

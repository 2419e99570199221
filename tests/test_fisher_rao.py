"""The Fisher–Rao norm against per-example autograd gradients, and its error handling."""

from __future__ import annotations

import pytest
import torch
from tests.symmetries import check_label_errors, labelled_data, network
from torch import nn

from minsharp.errors import MinsharpError, ModelError
from minsharp.measures import measure
from minsharp.measures.fisher_rao import fisher_rao_norm

CASES = [("mlp", False), ("mlp", True), ("cnn", False), ("cnn", True)]


def projections(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``θᵀ ∇_θ ℓ(x_n, y_n)`` per example, from per-example autograd gradients."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    values = []
    for x, y in zip(inputs, labels, strict=True):
        loss = nn.functional.cross_entropy(model(x[None]), y[None])
        gradients = torch.autograd.grad(loss, parameters)
        values.append(sum((p * g).sum() for p, g in zip(parameters, gradients, strict=True)))
    return torch.stack(values).detach()


def reference(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None) -> float:
    """The norm with the data's labels, or exactly summed over y ~ p(·|x) when None."""
    if labels is not None:
        return projections(model, inputs, labels).square().mean().item()
    with torch.no_grad():
        probabilities = model(inputs).softmax(1)
    classes = probabilities.shape[1]
    total = torch.zeros(inputs.shape[0], dtype=torch.float64)
    for k in range(classes):
        constant = torch.full((inputs.shape[0],), k)
        total += probabilities[:, k] * projections(model, inputs, constant).square()
    return total.mean().item()


@pytest.mark.parametrize(("kind", "batchnorm"), CASES)
@pytest.mark.parametrize("labels", ["true", "model"])
def test_matches_per_example_autograd_gradients(kind, batchnorm, labels):
    model = network(kind, batchnorm=batchnorm, seed=3)
    inputs, targets = labelled_data(kind, 3)
    expected = reference(model, inputs, targets if labels == "true" else None)
    result = fisher_rao_norm(model, (inputs, targets), labels=labels, batch_size=5)
    assert result.value == pytest.approx(expected, rel=1e-10, abs=0)
    assert result.num_examples == inputs.shape[0]


def test_mean_projection_is_the_derivative_of_the_loss_along_theta():
    model = network("mlp", batchnorm=True, seed=1)
    inputs, labels = labelled_data("mlp", 1)
    loss = nn.functional.cross_entropy(model(inputs), labels)
    parameters = list(model.parameters())
    gradients = torch.autograd.grad(loss, parameters)
    expected = sum((p * g).sum() for p, g in zip(parameters, gradients, strict=True)).item()
    result = measure("fisher_rao", model, (inputs, labels))
    assert result.details["mean_projection"] == pytest.approx(expected, rel=1e-10)
    assert result.invariances == ("layer", "neuron", "batchnorm")


def test_bias_free_relu_chain_obeys_the_homogeneity_identity():
    # θᵀ∇ℓ = L (p − e_y)ᵀ z for a bias-free ReLU chain of depth L (Liang et al. 2019).
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 7, bias=False),
        nn.ReLU(),
        nn.Linear(7, 6, bias=False),
        nn.ReLU(),
        nn.Linear(6, 3, bias=False),
    ).double()
    inputs, labels = labelled_data("mlp", 0)
    with torch.no_grad():
        logits = model(inputs)
    p = logits.softmax(1)
    inner = (p * logits).sum(1) - logits.gather(1, labels[:, None])[:, 0]
    expected = (3 * inner).square().mean().item()
    assert fisher_rao_norm(model, (inputs, labels)).value == pytest.approx(expected, rel=1e-12)


def test_exact_for_smooth_networks_and_skips_frozen_parameters():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    model[0].bias.requires_grad_(False)
    inputs, labels = labelled_data("mlp", 2)
    expected = reference(model, inputs, labels)
    assert fisher_rao_norm(model, (inputs, labels)).value == pytest.approx(expected, rel=1e-10)


class _SingleDerivativeTanh(torch.autograd.Function):
    """tanh whose backward has no derivative of its own (no double backward)."""

    @staticmethod
    def forward(x):
        return x.tanh()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)

    @staticmethod
    def jvp(ctx, tangent):
        return tangent * (1 - ctx.saved_tanh.square())

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.saved_tanh = output


class _SingleDerivativeTanhModule(nn.Module):
    def forward(self, x):
        return _SingleDerivativeTanh.apply(x)


def test_an_operation_without_double_backward_falls_back_to_forward_mode():
    torch.manual_seed(1)
    smooth = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    custom = nn.Sequential(smooth[0], _SingleDerivativeTanhModule(), smooth[2])
    inputs, labels = labelled_data("mlp", 2)
    expected = reference(smooth, inputs, labels)
    assert fisher_rao_norm(custom, (inputs, labels)).value == pytest.approx(expected, rel=1e-10)


def test_batches_and_loaders_give_the_same_value():
    model = network("cnn", batchnorm=True, seed=0)
    inputs, labels = labelled_data("cnn", 0)
    whole = fisher_rao_norm(model, (inputs, labels)).value
    batches = [(inputs[:5], labels[:5]), (inputs[5:], labels[5:])]
    assert fisher_rao_norm(model, batches).value == pytest.approx(whole, rel=1e-12)
    assert fisher_rao_norm(model, (inputs, labels), batch_size=1).value == pytest.approx(
        whole, rel=1e-12
    )


def test_model_labels_need_no_labels_and_leave_the_model_untouched():
    model = network("mlp", batchnorm=True, seed=0)
    inputs, labels = labelled_data("mlp", 0)
    state = {name: t.clone() for name, t in model.state_dict().items()}
    unlabelled = fisher_rao_norm(model, inputs, labels="model").value
    assert unlabelled == pytest.approx(
        fisher_rao_norm(model, (inputs, labels), labels="model").value, rel=1e-14
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])
    assert not model.training


def test_bad_input_is_refused_with_clear_errors():
    model = network("mlp", batchnorm=False, seed=0)
    inputs, labels = labelled_data("mlp", 0)
    check_label_errors(lambda data: fisher_rao_norm(model, data), "mlp", 0)
    with pytest.raises(MinsharpError, match="labels must be 'true' or 'model'"):
        fisher_rao_norm(model, (inputs, labels), labels="empirical")
    with pytest.raises(MinsharpError, match="no option 'samples'"):
        measure("fisher_rao", model, (inputs, labels), samples=3)
    with pytest.raises(ModelError, match="expected input shape"):
        fisher_rao_norm(model, (inputs[:, :4], labels))
    with pytest.raises(ModelError, match="training mode"):
        fisher_rao_norm(network("mlp", batchnorm=True, seed=0).train(), (inputs, labels))
    frozen = network("mlp", batchnorm=False, seed=0).requires_grad_(False)
    with pytest.raises(MinsharpError, match="no trainable parameters"):
        fisher_rao_norm(frozen, (inputs, labels))


def test_works_inside_inference_mode():
    model = network("cnn", batchnorm=True, seed=2)
    inputs, labels = labelled_data("cnn", 2)
    value = fisher_rao_norm(model, (inputs, labels)).value
    with torch.inference_mode():
        assert fisher_rao_norm(model, (inputs.clone(), labels.clone())).value == value

"""DatasetObjective: loss, gradient and Hessian-vector products over all data, batch by batch."""

from __future__ import annotations

import pytest
import torch
from tests.chains import assert_untouched, snapshot
from tests.symmetries import labelled_data, network
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from minsharp.curvature import budget
from minsharp.errors import DataError, ModelError
from minsharp.objective import DatasetObjective, flatten, unflatten


def dense_reference(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor):
    """Loss, gradient and Hessian of the mean cross-entropy by autograd on one flat vector."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())

    def loss(vector: torch.Tensor) -> torch.Tensor:
        pieces = dict(zip(names, vector.split([s.numel() for s in shapes]), strict=True))
        values = {n: pieces[n].reshape(s) for n, s in zip(names, shapes, strict=True)}
        logits = functional_call(model, {**values, **buffers}, (inputs,))
        return torch.nn.functional.cross_entropy(logits, labels)

    point = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gradient = torch.autograd.functional.jacobian(loss, point)
    return float(loss(point)), gradient, torch.autograd.functional.hessian(loss, point)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_loss_gradient_and_hvp_match_dense_autograd(kind: str, batchnorm: bool) -> None:
    model = network(kind, batchnorm=batchnorm, seed=3)
    inputs, labels = labelled_data(kind, 3)
    before = snapshot(model)
    objective = DatasetObjective(model, (inputs, labels), batch_size=5)
    loss, gradient, hessian = dense_reference(model, inputs, labels)
    assert objective.loss() == pytest.approx(loss, rel=1e-13)
    value, gradient_parts = objective.gradient()
    assert value == pytest.approx(loss, rel=1e-13)
    torch.testing.assert_close(flatten(gradient_parts), gradient, rtol=1e-11, atol=1e-13)
    vector = torch.randn(hessian.shape[0], dtype=torch.float64)
    product = objective.hessian_vector_product(unflatten(vector, objective.parameters))
    torch.testing.assert_close(flatten(product), hessian @ vector, rtol=1e-10, atol=1e-12)
    assert_untouched(model, before)


@pytest.mark.parametrize("graphs_fit", [True, False])
def test_reused_hessian_products_match_dense_autograd(
    graphs_fit: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several products from one block, with the batches' graphs kept or (over budget) not."""
    model = network("cnn", batchnorm=True, seed=4)
    inputs, labels = labelled_data("cnn", 4)
    before = snapshot(model)
    objective = DatasetObjective(model, (inputs, labels), batch_size=5)
    _, _, hessian = dense_reference(model, inputs, labels)
    if not graphs_fit:
        monkeypatch.setattr("minsharp.curvature.budget.MEMORY_BUDGET", 1)
    vectors = torch.randn(3, hessian.shape[0], dtype=torch.float64)
    with objective.hessian_products() as product:
        for vector in vectors:
            result = product(unflatten(vector, objective.parameters))
            torch.testing.assert_close(flatten(result), hessian @ vector, rtol=1e-10, atol=1e-12)
    assert_untouched(model, before)


def test_perturbed_parameters_and_error_rate() -> None:
    model = network("mlp", batchnorm=False, seed=1)
    inputs, labels = labelled_data("mlp", 1)
    objective = DatasetObjective(model, DataLoader(TensorDataset(inputs, labels), batch_size=4))
    assert objective.num_examples == 12 and len(objective.batches) == 3
    direction = {name: torch.ones_like(p) for name, p in objective.parameters.items()}
    shifted = objective.perturbed(direction, 0.1)
    for name, p in objective.parameters.items():
        torch.testing.assert_close(shifted[name], p + 0.1)
    with torch.no_grad():
        wrong = (model(inputs).argmax(1) != labels).double().mean().item()
    assert objective.error_rate() == pytest.approx(wrong)


def test_bad_data_and_models_are_refused() -> None:
    model = network("mlp", batchnorm=True, seed=1)
    inputs, labels = labelled_data("mlp", 1)
    with pytest.raises(DataError, match=r"inputs but labels of shape \(11,\)"):
        DatasetObjective(model, (inputs, labels[:11]))
    with pytest.raises(DataError, match="holds no examples"):
        DatasetObjective(model, [])
    with pytest.raises(ModelError, match="training mode"):
        DatasetObjective(model.train(), (inputs, labels))


def test_default_batch_size_is_the_whole_data_within_the_memory_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = network("mlp", batchnorm=False, seed=2)
    inputs, labels = labelled_data("mlp", 2)
    whole = DatasetObjective(model, (inputs, labels))
    assert whole.batch_size == inputs.shape[0] and len(whole.batches) == 1
    # A budget of at most 5 examples' graphs: even batches of at most 5.
    need = budget.footprint(model, [], inputs[:8], diagonal=False, forward=model)
    per_example = 2 * budget.GRAPH_FACTOR * need.activations * inputs.element_size()
    monkeypatch.setattr("minsharp.curvature.budget.MEMORY_BUDGET", 5 * per_example)
    split = DatasetObjective(model, (inputs, labels))
    assert split.batch_size <= 5 and len(split.batches) == -(-inputs.shape[0] // split.batch_size)
    assert {x.shape[0] for x, _ in split.batches} <= {split.batch_size, split.batch_size - 1}
    assert split.loss() == pytest.approx(whole.loss(), rel=1e-12)

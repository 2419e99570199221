"""Full-Hessian measures against a dense autograd Hessian: top eigenvalue, quotient-manifold
flatness (λ_max of D H D) and Hutchinson's trace estimate, plus the Lanczos solver itself.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from tests.symmetries import labelled_data, network, rescale_layers
from torch import nn
from torch.func import functional_call

import minsharp
from minsharp.errors import DataError, MinsharpError
from minsharp.measures import measure
from minsharp.measures.curvature_baselines import _rademacher
from minsharp.solvers.lanczos import largest_eigenvalue

#: Networks of tests/symmetries.py: (kind, batch-norm).
NETWORKS = [("mlp", False), ("cnn", False), ("mlp", True)]
TIGHT = 1e-10


def dense_hessian(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """∇²L over the flattened trainable parameters, by autograd on a functional loss."""
    named = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    fixed = {name: b.detach() for name, b in model.named_buffers()}
    flat = torch.cat([p.reshape(-1) for p in named.values()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        pieces, offset = {}, 0
        for name, p in named.items():
            pieces[name] = theta[offset : offset + p.numel()].reshape(p.shape)
            offset += p.numel()
        logits = functional_call(model, {**pieces, **fixed}, (inputs,))
        return nn.functional.cross_entropy(logits, labels)

    return torch.autograd.functional.hessian(loss, flat)


def block_norms(model: nn.Module) -> torch.Tensor:
    """The diagonal of D = blockdiag(‖P‖_F I), flattened like dense_hessian's parameters."""
    return torch.cat(
        [
            torch.full((p.numel(),), float(p.detach().norm()), dtype=torch.float64)
            for p in model.parameters()
            if p.requires_grad
        ]
    )


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize(("kind", "batchnorm"), NETWORKS)
def test_top_eigenvalues_match_the_dense_hessian(kind: str, batchnorm: bool) -> None:
    model = network(kind, batchnorm=batchnorm, seed=3)
    inputs, labels = labelled_data(kind, 3)
    hessian = dense_hessian(model, inputs, labels)
    scales = block_norms(model)
    expected = {
        "top_eigenvalue": float(torch.linalg.eigvalsh(hessian)[-1]),
        "quotient_flatness": float(torch.linalg.eigvalsh(scales[:, None] * hessian * scales)[-1]),
    }
    for name, value in expected.items():
        result = measure(name, model, (inputs, labels), tolerance=TIGHT, batch_size=5)
        assert relative(result.value, value) <= 1e-8, (name, result.value, value)
        certificate = result.certificate
        assert certificate["converged"]
        assert certificate["residual"] <= TIGHT * abs(result.value)
        assert certificate["tolerance"] == TIGHT
        assert 1 <= certificate["matvecs"] <= hessian.shape[0] + 1
        assert sum(result.details["direction_share"].values()) == pytest.approx(1, rel=1e-12)
        json.dumps(result.to_dict())


def test_quotient_flatness_is_layer_invariant_and_top_eigenvalue_is_not() -> None:
    for seed, (kind, batchnorm) in enumerate(NETWORKS):
        model = network(kind, batchnorm=batchnorm, seed=seed)
        data = labelled_data(kind, seed)
        twin = rescale_layers(model, seed + 7)
        flat = [measure("quotient_flatness", m, data).value for m in (model, twin)]
        top = [measure("top_eigenvalue", m, data).value for m in (model, twin)]
        assert relative(flat[1], flat[0]) <= 1e-6, (kind, batchnorm, flat)
        assert relative(top[1], top[0]) > 1e-3, (kind, batchnorm, top)


def test_quotient_flatness_reports_the_block_norms() -> None:
    model = network("mlp", batchnorm=False, seed=0)
    result = measure("quotient_flatness", model, labelled_data("mlp", 0))
    norms = result.details["block_norms"]
    assert list(norms) == [name for name, _ in model.named_parameters()]
    assert norms["0.weight"] == pytest.approx(float(model[0].weight.detach().norm()), rel=1e-15)
    assert result.invariances == ("layer",)


def test_hutchinson_is_unbiased_with_an_honest_standard_error() -> None:
    model = network("mlp", batchnorm=False, seed=1)
    inputs, labels = labelled_data("mlp", 1)
    exact = minsharp.hessian_trace(model, inputs)
    hessian = dense_hessian(model, inputs, labels)
    assert float(hessian.trace()) == pytest.approx(exact.total, rel=1e-10)
    # Var(vᵀHv) = 2 Σ_{i≠j} H_ij² for Rademacher v.
    spread = math.sqrt(2 * float(hessian.square().sum() - hessian.diagonal().square().sum()))

    samples = 200
    result = measure("hutchinson_trace", model, (inputs, labels), samples=samples, seed=4)
    error = result.details["standard_error"]
    assert abs(result.value - exact.total) <= 4 * error
    assert error == pytest.approx(spread / math.sqrt(samples), rel=0.25)
    assert sum(result.per_layer.values()) == pytest.approx(result.value, rel=1e-12)
    for module, values in exact.by_layer().items():
        layer_error = result.details["per_layer_standard_error"][module]
        assert abs(result.per_layer[module] - sum(values.values())) <= 4 * layer_error

    # The reported error matches the spread of the estimate over independent seeds.
    runs = [
        measure("hutchinson_trace", model, (inputs, labels), samples=10, seed=seed)
        for seed in range(30)
    ]
    means = torch.tensor([run.value for run in runs], dtype=torch.float64)
    reported = sum(run.details["standard_error"] for run in runs) / len(runs)
    assert float(means.std()) == pytest.approx(spread / math.sqrt(10), rel=0.4)
    assert reported == pytest.approx(float(means.std()), rel=0.4)


def test_hutchinson_is_reproducible_with_its_seed() -> None:
    model = network("cnn", batchnorm=True, seed=2)
    data = labelled_data("cnn", 2)
    first = measure("hutchinson_trace", model, data, samples=5, seed=11)
    again = measure("hutchinson_trace", model, data, samples=5, seed=11, batch_size=5)
    other = measure("hutchinson_trace", model, data, samples=5, seed=12)
    assert again.value == pytest.approx(first.value, rel=1e-12)
    assert again.per_layer == pytest.approx(first.per_layer, rel=1e-12)
    assert other.value != first.value
    json.dumps(first.to_dict())


def test_lanczos_matches_a_dense_eigensolver_on_indefinite_matrices() -> None:
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        dimension = 60
        basis, _ = torch.linalg.qr(
            torch.randn(dimension, dimension, generator=generator, dtype=torch.float64)
        )
        spectrum = torch.randn(dimension, generator=generator, dtype=torch.float64)
        spectrum[0] = -20.0  # largest in magnitude, but negative: must be ignored
        matrix = basis @ torch.diag(spectrum) @ basis.T
        pair = largest_eigenvalue(lambda v, m=matrix: m @ v, dimension, tolerance=TIGHT, seed=seed)
        assert pair.converged
        assert pair.value == pytest.approx(float(spectrum.max()), rel=1e-12)
        assert float((matrix @ pair.vector - pair.value * pair.vector).norm()) == pytest.approx(
            pair.residual, abs=1e-14
        )
        assert pair.residual <= TIGHT * abs(pair.value)
        assert float(pair.vector.norm()) == pytest.approx(1, rel=1e-14)
        again = largest_eigenvalue(lambda v, m=matrix: m @ v, dimension, tolerance=TIGHT, seed=seed)
        assert again.value == pair.value and again.matvecs == pair.matvecs


def test_lanczos_reports_non_convergence_with_a_lower_bound() -> None:
    spectrum = torch.linspace(0, 1, 500, dtype=torch.float64)
    pair = largest_eigenvalue(lambda v: spectrum * v, 500, tolerance=1e-12, max_iterations=5)
    assert not pair.converged
    assert pair.matvecs == 6
    assert pair.residual > 1e-12 * pair.value
    assert pair.value <= 1.0


def test_measures_warn_when_lanczos_stops_early() -> None:
    model = network("cnn", batchnorm=False, seed=0)
    data = labelled_data("cnn", 0)
    exact = measure("top_eigenvalue", model, data, tolerance=TIGHT).value
    with pytest.warns(RuntimeWarning, match="max_iterations=2"):
        result = measure("top_eigenvalue", model, data, max_iterations=2, tolerance=TIGHT)
    assert not result.certificate["converged"]
    assert result.value <= exact * (1 + 1e-12)


@pytest.mark.parametrize("name", ["top_eigenvalue", "quotient_flatness", "hutchinson_trace"])
def test_bad_data_is_refused(name: str) -> None:
    model = network("mlp", batchnorm=False, seed=0)
    inputs, labels = labelled_data("mlp", 0)
    with pytest.raises(DataError, match="depends on the labels"):
        measure(name, model, inputs)
    with pytest.raises(DataError, match="label 3 is out of range"):
        measure(name, model, (inputs, labels.clone().fill_(3)))
    with pytest.raises(DataError, match="negative labels"):
        measure(name, model, (inputs, labels - 1))


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("top_eigenvalue", {"tolerance": 0.0}, r"tolerance must be a number in \(0, 1\)"),
        ("quotient_flatness", {"tolerance": 1.5}, r"tolerance must be a number in \(0, 1\)"),
        ("quotient_flatness", {"tolerance": "tight"}, "tolerance must be"),
        ("top_eigenvalue", {"max_iterations": 0}, r"max_iterations must be a positive integer"),
        ("quotient_flatness", {"max_iterations": 2.5}, "max_iterations must be"),
        ("quotient_flatness", {"seed": "a"}, "seed must be an integer"),
        ("hutchinson_trace", {"samples": 1}, r"samples must be an integer ≥ 2"),
        ("hutchinson_trace", {"samples": True}, "samples must be"),
        ("hutchinson_trace", {"seed": 1.5}, "seed must be an integer"),
        ("hutchinson_trace", {"batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_bad_options_are_refused(name: str, options: dict[str, object], match: str) -> None:
    model = network("mlp", batchnorm=False, seed=0)
    with pytest.raises(MinsharpError, match=match):
        measure(name, model, labelled_data("mlp", 0), **options)


def test_rademacher_probes_are_fair_independent_signs() -> None:
    like = {"a": torch.zeros(300, 200), "b": torch.zeros(7, dtype=torch.float64)}
    probe = _rademacher(like, torch.Generator().manual_seed(0))
    assert probe["a"].shape == (300, 200) and probe["b"].dtype == torch.float64
    flat = torch.cat([probe["a"].reshape(-1), probe["b"].double()])
    assert bool((flat.abs() == 1).all())
    # Each bit position of the bytes is a fair coin, and neighbours are uncorrelated.
    by_bit = flat[: flat.numel() // 8 * 8].reshape(-1, 8).double()
    assert float(by_bit.mean(0).abs().max()) < 0.03
    assert float((by_bit[:, :-1] * by_bit[:, 1:]).mean(0).abs().max()) < 0.03
    again = _rademacher(like, torch.Generator().manual_seed(0))
    assert torch.equal(again["a"], probe["a"])

"""Perturbation-based baselines against independent slow computations.

* ε-sharpness: the ascent reaches L-BFGS-B's maximum over the box (scipy, flattened
  parameters), stays in the box, and matches the first-order closed form for tiny boxes;
* adaptive average: equals a plain loop over the same noise, perturbing copies of the model;
* adaptive worst case: invariant to the rescalings of ``tests/symmetries.py``, and above the
  average case at the same ρ (ℓ∞);
* PAC-Bayes: the returned σ brackets the target deviation, checked by a plain loop;
* reproducibility from the seed, and errors on bad input.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from tests.symmetries import TRANSFORMS, labelled_data, network
from torch import nn

from minsharp.curvature import budget
from minsharp.errors import DataError, MinsharpError
from minsharp.measures import measure
from minsharp.measures.pac_bayes import _most_evaluations, _search_sigma
from minsharp.measures.perturbation import StandardNormalDraws, worst_case_perturbation
from minsharp.objective import DatasetObjective, flatten, unflatten

#: (kind, with batch-norm) of the test networks.
NETWORKS = [("mlp", False), ("cnn", False), ("mlp", True), ("cnn", True)]
PERTURBATION_MEASURES = [
    "epsilon_sharpness",
    "adaptive_sharpness",
    "adaptive_sharpness_average",
    "pac_bayes_flatness",
]


def case(index: int) -> tuple[nn.Sequential, tuple[torch.Tensor, torch.Tensor]]:
    kind, batchnorm = NETWORKS[index % len(NETWORKS)]
    return network(kind, batchnorm=batchnorm, seed=index), labelled_data(kind, index)


def fitted_case(index: int) -> tuple[nn.Sequential, tuple[torch.Tensor, torch.Tensor]]:
    """:func:`case` after 150 Adam steps on its data (eval mode): near a minimum, error ≈ 0."""
    model, data = case(index)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data[0]), data[1]).backward()
        optimizer.step()
    return model, data


def slow_loss(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    inputs, labels = data
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(inputs), labels))


def slow_error(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    inputs, labels = data
    with torch.no_grad():
        return float((model(inputs).argmax(1) != labels).double().mean())


def noisy_copies(model: nn.Module, seed: int, samples: int, std, sign: float = 1.0):
    """Copies of ``model`` with ``sign * std(p) * z`` added, z the documented noise recipe.

    One float32 standard normal vector per draw over all trainable parameters in order, from
    one CPU generator seeded with ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for name, p in model.named_parameters() if name in trainable)
    for _ in range(samples):
        noise = torch.randn(total, generator=generator, dtype=torch.float32)
        twin = copy.deepcopy(model)
        parameters = dict(twin.named_parameters())
        with torch.no_grad():
            for name in trainable:
                p = parameters[name]
                z, noise = noise[: p.numel()].reshape(p.shape), noise[p.numel() :]
                p += sign * std(p) * z.to(p.dtype)
        yield twin


# ε-sharpness ------------------------------------------------------------------------------


def lbfgsb_maximum(objective: DatasetObjective, half_widths: np.ndarray) -> float:
    """max L(θ + ε) over |ε_i| ≤ half_widths_i by scipy's L-BFGS-B from ε = 0."""

    def negative(x: np.ndarray) -> tuple[float, np.ndarray]:
        loss, gradient = objective.gradient(
            objective.perturbed(unflatten(torch.from_numpy(x), objective.parameters))
        )
        return -loss, -flatten(gradient).numpy()

    result = minimize(
        negative,
        np.zeros_like(half_widths),
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(-half_widths, half_widths, strict=True)),
        options={"maxiter": 500, "ftol": 1e-15, "gtol": 1e-12},
    )
    return -float(result.fun)


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("epsilon", [1e-3, 5e-4])
def test_epsilon_sharpness_reaches_the_lbfgsb_maximum_inside_the_box(index, epsilon):
    model, data = case(index)
    objective = DatasetObjective(model, data)
    scale = {name: p.abs() + 1 for name, p in objective.parameters.items()}
    found = worst_case_perturbation(objective, scale, radius=epsilon)
    reference = lbfgsb_maximum(objective, epsilon * flatten(scale).numpy())
    rise, reference_rise = found.perturbed_loss - found.loss, reference - found.loss
    assert reference_rise > 0
    # Both stop at local maxima; on these networks they agree to ±0.2 % of the rise.
    assert rise >= reference_rise * (1 - 5e-3)
    # The perturbation lies in the box and the loss there is the one reported.
    for name, p in objective.parameters.items():
        assert (found.perturbation[name].abs() <= epsilon * (p.abs() + 1) * (1 + 1e-12)).all()
    perturbed = objective.loss(objective.perturbed(found.perturbation))
    assert perturbed == pytest.approx(found.perturbed_loss, rel=1e-12)
    assert found.loss == pytest.approx(slow_loss(model, data), rel=1e-12)
    # The registered measure is this ascent in Keskar's units.
    result = measure("epsilon_sharpness", model, data, epsilon=epsilon)
    assert result.value == pytest.approx(100 * rise / (1 + found.loss), rel=1e-10)
    assert result.details["perturbed_loss"] == pytest.approx(found.perturbed_loss, rel=1e-12)
    certificate = result.certificate
    assert certificate["steps"] == 20 and 0 <= certificate["best_step"] <= 20
    assert -1e-12 <= certificate["relative_frank_wolfe_gap"] <= 2
    assert 0 < certificate["on_boundary"] <= 1


def test_epsilon_sharpness_of_a_linear_layer_matches_the_first_order_closed_form():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3)).double().eval()
    inputs = torch.randn(20, 4, dtype=torch.float64)
    labels = torch.randint(3, (20,))
    epsilon = 1e-7
    result = measure("epsilon_sharpness", model, (inputs, labels), epsilon=epsilon, steps=3)
    loss = nn.functional.cross_entropy(model(inputs), labels)
    gradients = torch.autograd.grad(loss, list(model.parameters()))
    linear = sum(
        (g.abs() * epsilon * (p.detach().abs() + 1)).sum()
        for g, p in zip(gradients, model.parameters(), strict=True)
    )
    expected = 100 * float(linear) / (1 + loss.item())
    assert result.value == pytest.approx(expected, rel=1e-5)
    assert result.certificate["on_boundary"] == 1.0


# Adaptive sharpness -----------------------------------------------------------------------


@pytest.mark.parametrize("index", range(4))
def test_adaptive_average_equals_a_plain_loop_over_the_same_noise(index):
    model, data = case(index)
    rho, samples, seed = 0.05, 16, 7
    result = measure("adaptive_sharpness_average", model, data, rho=rho, samples=samples, seed=seed)

    def std(p):
        return rho * p.detach().abs()

    plus = [slow_loss(twin, data) for twin in noisy_copies(model, seed, samples, std)]
    minus = [slow_loss(twin, data) for twin in noisy_copies(model, seed, samples, std, -1.0)]
    losses = (np.array(plus) + np.array(minus)) / 2
    base = slow_loss(model, data)
    assert abs(result.value - (losses.mean() - base)) <= 1e-10
    standard_error = losses.std(ddof=1) / math.sqrt(samples)
    assert result.details["standard_error"] == pytest.approx(standard_error, rel=1e-8)
    # The pairs cancel the first-order term: far less spread than single draws.
    single_draw_error = np.std(plus, ddof=1) / math.sqrt(samples)
    assert result.details["standard_error"] < 0.5 * single_draw_error


@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("symmetry", sorted(TRANSFORMS))
def test_adaptive_measures_are_invariant_to_the_rescalings(symmetry, norm):
    for kind in ("mlp", "cnn"):
        model = network(kind, batchnorm=symmetry == "batchnorm", seed=11)
        data = labelled_data(kind, 11)
        twin = TRANSFORMS[symmetry](model, 5)
        before = measure("adaptive_sharpness", model, data, norm=norm)
        after = measure("adaptive_sharpness", twin, data, norm=norm)
        assert before.value > 0
        assert after.value == pytest.approx(before.value, rel=1e-6)
        assert after.certificate["best_step"] == before.certificate["best_step"]
        if norm == "inf":
            average = [
                measure("adaptive_sharpness_average", net, data, samples=10).value
                for net in (model, twin)
            ]
            assert average[1] == pytest.approx(average[0], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("index", range(4))
def test_worst_case_lies_above_the_average_case_at_the_same_radius(index):
    model, data = case(index)
    worst = measure("adaptive_sharpness", model, data, rho=0.01)
    average = measure("adaptive_sharpness_average", model, data, rho=0.01, samples=200)
    assert worst.value >= average.value + 2 * average.details["standard_error"]


def test_l2_ascent_ends_inside_the_ball_and_is_certified():
    model, data = case(2)
    result = measure("adaptive_sharpness", model, data, norm="2", rho=0.3, steps=30)
    assert result.details["rho"] == 0.3 and result.details["norm"] == "2"
    assert 0 < result.certificate["on_boundary"] <= 1 + 1e-12
    assert result.certificate["relative_frank_wolfe_gap"] < 0.05
    assert measure("adaptive_sharpness", model, data, norm=2).options["norm"] == 2
    default = measure("adaptive_sharpness", model, data, norm="2")
    assert default.details["rho"] == 0.5


# PAC-Bayes flatness -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "metric", "magnitude_aware"),
    [(0, "loss", False), (1, "error", False), (2, "error", True), (3, "loss", True)],
)
def test_pac_bayes_sigma_brackets_the_target_deviation(index, metric, magnitude_aware):
    model, data = fitted_case(index)
    samples, seed, tolerance, target, offset = 6, 3, 0.01, 0.1, 1e-3
    result = measure(
        "pac_bayes_flatness",
        model,
        data,
        metric=metric,
        samples=samples,
        seed=seed,
        magnitude_aware=magnitude_aware,
    )
    assert result.certificate["bracketed"]
    sigma = result.details["sigma"]
    assert result.value == pytest.approx(1 / sigma**2, rel=1e-12)
    evaluate = slow_loss if metric == "loss" else slow_error
    base = evaluate(model, data)

    def deviation(level: float) -> float:
        if magnitude_aware:

            def std(p):
                return (level**2 * p.detach().square() + offset**2).sqrt()
        else:

            def std(p):
                return level

        values = [evaluate(twin, data) for twin in noisy_copies(model, seed, samples, std)]
        return abs(float(np.mean(values)) - base)

    at_sigma = deviation(sigma)
    assert at_sigma <= target
    assert at_sigma == pytest.approx(result.details["deviation"], abs=1e-12)
    assert deviation(sigma * (1 + tolerance)) > target
    assert result.details["sigma_upper"] <= sigma * (1 + tolerance)


def test_monte_carlo_measures_are_reproducible_from_the_seed():
    model, data = case(1)
    for name, options in [
        ("adaptive_sharpness_average", {"samples": 8}),
        ("pac_bayes_flatness", {"samples": 4, "metric": "loss"}),
    ]:
        first = measure(name, model, data, seed=1, **options)
        again = measure(name, model, data, seed=1, **options)
        other = measure(name, model, data, seed=2, **options)
        assert again.value == first.value
        assert other.value != first.value


def test_pac_bayes_reports_an_unbracketed_search():
    # A margin of 2e6 on one example: noise up to σ = 1e4 never flips the prediction, so the
    # error never moves and the search runs into its upper limit.
    model = nn.Sequential(nn.Linear(2, 2, bias=False)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1e6, 0.0], [0.0, -1e6]], dtype=torch.float64))
    data = (torch.tensor([[1.0, 1.0]], dtype=torch.float64), torch.tensor([0]))
    with pytest.warns(RuntimeWarning, match="only marks the search limit"):
        result = measure("pac_bayes_flatness", model, data, samples=2)
    assert not result.certificate["bracketed"]
    assert result.details["deviation"] == 0
    assert result.details["sigma"] == result.details["sigma_upper"] > 1e3


# Bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PERTURBATION_MEASURES)
def test_measures_need_labels(name):
    model, (inputs, _) = case(0)
    with pytest.raises(DataError, match="depends on the labels"):
        measure(name, model, inputs)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("epsilon_sharpness", {"epsilon": 0.0}, "epsilon must be a finite number > 0"),
        ("epsilon_sharpness", {"steps": 0}, "steps must be a positive integer"),
        ("epsilon_sharpness", {"step_size": -1.0}, "step_size must be"),
        ("adaptive_sharpness", {"norm": "1"}, "norm must be 'inf' or '2'"),
        ("adaptive_sharpness", {"rho": math.inf}, "rho must be a finite number > 0"),
        ("adaptive_sharpness", {"steps": 2.5}, "steps must be a positive integer"),
        ("adaptive_sharpness_average", {"samples": 1}, "samples must be an integer ≥ 2"),
        ("adaptive_sharpness_average", {"rho": -0.1}, "rho must be"),
        ("adaptive_sharpness_average", {"seed": "x"}, "seed must be an integer"),
        ("pac_bayes_flatness", {"metric": "accuracy"}, "metric must be 'error' or 'loss'"),
        ("pac_bayes_flatness", {"target": 1.5}, r"target must be a number in \(0, 1\)"),
        ("pac_bayes_flatness", {"target": 0}, "target must be a finite number > 0"),
        ("pac_bayes_flatness", {"tolerance": 1.0}, r"tolerance must be a number in \(0, 1\)"),
        ("pac_bayes_flatness", {"samples": 0}, "samples must be a positive integer"),
        ("pac_bayes_flatness", {"magnitude_aware": 1}, "magnitude_aware must be True or False"),
        ("pac_bayes_flatness", {"offset": -1e-3}, "offset must be a finite number ≥ 0"),
    ],
)
def test_bad_options_name_the_option_and_its_range(name, options, message):
    model, data = case(0)
    with pytest.raises(MinsharpError, match=message):
        measure(name, model, data, **options)


def test_progress_bars_run(capsys):
    model, data = case(0)
    measure("adaptive_sharpness", model, data, steps=2, progress=True)
    measure("adaptive_sharpness_average", model, data, samples=2, progress=True)
    measure("pac_bayes_flatness", model, data, samples=1, metric="loss", progress=True)
    assert "ascent" in capsys.readouterr().err


@pytest.mark.parametrize("budget_bytes", [1 << 30, 0])
def test_noise_draws_repeat_on_every_pass_kept_or_drawn_anew(monkeypatch, budget_bytes):
    monkeypatch.setattr(budget, "MEMORY_BUDGET", budget_bytes)
    model, _ = case(0)
    parameters = {name: p.detach() for name, p in model.named_parameters()}
    draws = StandardNormalDraws(parameters, seed=5, samples=3, keep=True)
    first, second = list(draws), list(draws)
    assert len(first) == len(second) == len(draws) == 3
    for a, b in zip(first, second, strict=True):
        assert all(torch.equal(a[name], b[name]) for name in parameters)
    assert (first[1] is second[1]) == (budget_bytes > 0)  # kept only within the budget
    fresh = StandardNormalDraws(parameters, seed=5, samples=3, keep=True)
    next(iter(fresh))  # a pass stopped after one draw
    for a, b in zip(list(fresh), first, strict=True):
        assert all(torch.equal(a[name], b[name]) for name in parameters)
    assert not torch.equal(first[0][next(iter(parameters))], first[1][next(iter(parameters))])


@pytest.mark.parametrize("power", [2.0, 6.0])
@pytest.mark.parametrize("crossing", [0.0173, 0.05, 3.7])
def test_sigma_search_brackets_the_crossing_in_fewer_evaluations_than_bisection(power, crossing):
    target, tolerance = 0.1, 0.01

    def deviation(sigma: float) -> tuple[float, float]:
        return target * (sigma / crossing) ** power, 0.0

    search = _search_sigma(deviation, target, tolerance)
    assert search.bracketed
    assert search.lower <= crossing < search.upper <= search.lower * (1 + tolerance)
    # Bisection needs ⌈log2(log 2 / log 1.01)⌉ = 7 halvings after bracketing.
    outward = 1 + math.ceil(abs(math.log2(crossing / 0.1)))
    assert search.evaluations < outward + 7
    assert search.evaluations <= _most_evaluations(tolerance)

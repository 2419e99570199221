"""Normalized sharpness (theory §3): the solver against scipy on the original objectives, its
pruning of vanishing entries, its invariances and errors; the measures against a brute-force
diagonal and scipy on tiny float64 networks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from tests.symmetries import TRANSFORMS, labelled_data, network
from torch import nn

import minsharp
from minsharp.measures import measure, spec
from minsharp.measures.normalized_sharpness import layer_matrices, layer_normalized_sharpness
from minsharp.solvers.normalized import minimize_normalized_sharpness

OBJECTIVES = ("arxiv", "icml")
MEASURES = {"arxiv": "normalized_sharpness", "icml": "normalized_sharpness_icml"}


# ---------------------------------------------------------------------------------------------
# Independent references: scipy on the objectives as written in the paper, in log-space
# ---------------------------------------------------------------------------------------------


def reference_arxiv(h: np.ndarray, w2: np.ndarray) -> float:
    """``min Σ_ij h σ_i² σ'_j² + W² / (σ_i² σ'_j²)`` over ``x = log σ², y = log σ'²`` (BFGS)."""
    m, _ = h.shape

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        exponent = z[:m, None] + z[None, m:]
        up, down = h * np.exp(exponent), w2 * np.exp(-exponent)
        difference = up - down
        return up.sum() + down.sum(), np.concatenate([difference.sum(1), difference.sum(0)])

    start = np.zeros(sum(h.shape))
    found = minimize(objective, start, jac=True, method="BFGS", options={"gtol": 1e-13})
    return float(found.fun)


def reference_icml(h: np.ndarray, w2: np.ndarray) -> float:
    """``min_s √(Σ_i (Σ_j h_ij s_j)(Σ_j W_ij² / s_j))`` over ``b = log s`` (BFGS)."""

    def objective(b: np.ndarray) -> tuple[float, np.ndarray]:
        s = np.exp(b)
        A, B = h @ s, w2 @ (1 / s)
        root = np.sqrt(A @ B)
        gradient = s * (h.T @ B) - (w2.T @ A) / s
        return root, gradient / (2 * root)

    start = np.zeros(h.shape[1])
    found = minimize(objective, start, jac=True, method="BFGS", options={"gtol": 1e-14})
    return float(found.fun)


REFERENCES = {"arxiv": reference_arxiv, "icml": reference_icml}


def random_problem(seed: int, spread: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m, n = rng.integers(1, 7, size=2)
    return (
        np.exp(spread * rng.standard_normal((m, n))),
        np.exp(spread * rng.standard_normal((m, n))),
    )


def original_arxiv(h: np.ndarray, w2: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> float:
    exponent = rows[:, None] + columns[None, :]
    return float((h * np.exp(exponent) + w2 * np.exp(-exponent)).sum())


# ---------------------------------------------------------------------------------------------
# The solver alone
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("seed", range(12))
def test_solver_matches_scipy_on_the_original_objective(objective: str, seed: int) -> None:
    h, w2 = random_problem(seed)
    solution = minimize_normalized_sharpness(h, w2, objective=objective)
    reference = REFERENCES[objective](h, w2)
    assert solution.attained and solution.converged
    assert solution.relative_kkt <= 1e-10
    assert solution.value == pytest.approx(reference, rel=1e-8)
    assert solution.value <= reference * (1 + 1e-12)  # never above another feasible point
    assert solution.iterations <= 20


def test_returned_scales_give_the_value() -> None:
    h, w2 = random_problem(3, spread=3.0)
    solution = minimize_normalized_sharpness(h, w2, objective="arxiv")
    rows, columns = solution.row_log_scales, solution.column_log_scales
    assert original_arxiv(h, w2, rows, columns) == pytest.approx(solution.value, rel=1e-13)
    assert np.mean(columns) == pytest.approx(0.0, abs=1e-12)
    icml = minimize_normalized_sharpness(h, w2, objective="icml")
    s = np.exp(icml.column_log_scales)
    assert icml.row_log_scales is None
    assert np.sqrt((h @ s) @ (w2 @ (1 / s))) == pytest.approx(icml.value, rel=1e-13)


def test_one_row_has_the_cauchy_schwarz_closed_form() -> None:
    h, w2 = np.array([[1.0, 2.0, 3.0]]), np.array([[5.0, 1.0, 0.5]])
    solution = minimize_normalized_sharpness(h, w2)
    assert solution.value == pytest.approx(2 * np.sqrt(h * w2).sum(), rel=1e-14)
    icml = minimize_normalized_sharpness(h, w2, objective="icml")
    assert icml.value == pytest.approx(np.sqrt(h * w2).sum(), rel=1e-14)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_invariant_to_row_and_column_rescaling(objective: str) -> None:
    h, w2 = random_problem(5)
    rng = np.random.default_rng(0)
    r = np.exp(rng.standard_normal(h.shape[0]))[:, None]
    c = np.exp(rng.standard_normal(h.shape[1]))[None, :]
    before = minimize_normalized_sharpness(h, w2, objective=objective)
    after = minimize_normalized_sharpness(h / (r * c) ** 2, w2 * (r * c) ** 2, objective=objective)
    assert after.value == pytest.approx(before.value, rel=1e-12)
    # Global scales: NS(a h, b W²) = √(ab) NS(h, W²) for both versions.
    scaled = minimize_normalized_sharpness(4 * h, 9e6 * w2, objective=objective)
    assert scaled.value == pytest.approx(6e3 * before.value, rel=1e-12)


def with_vanishing_rows_and_columns(h0: np.ndarray, w0: np.ndarray):
    """``(h0, W0²)`` bordered by two rows and two columns whose contribution can vanish.

    Row m is a dead unit (no curvature) and column n+1 an input that is always zero (no
    curvature); row m+1 only has weight on column n+1 and column n only on row m, so they go
    in the second round of pruning.
    """
    m, n = h0.shape
    h, w2 = np.zeros((m + 2, n + 2)), np.zeros((m + 2, n + 2))
    h[:m, :n], w2[:m, :n] = h0, w0
    h[:m, n] = 1.0
    w2[m, :] = 1.0
    w2[:, n + 1] = 1.0
    h[m + 1, : n + 1] = 1.0
    return h, w2


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_dead_units_and_inputs_are_pruned_to_the_infimum(objective: str) -> None:
    h0, w0 = random_problem(7)
    h, w2 = with_vanishing_rows_and_columns(h0, w0)
    solution = minimize_normalized_sharpness(h, w2, objective=objective)
    kept = minimize_normalized_sharpness(h0, w0, objective=objective)
    assert not solution.attained and kept.attained
    assert (solution.pruned_rows, solution.pruned_columns, solution.blocks) == (2, 2, 1)
    assert solution.value == pytest.approx(kept.value, rel=1e-13)
    assert solution.relative_kkt <= 1e-10
    assert np.isnan(solution.column_log_scales[-2:]).all()
    assert not np.isnan(solution.column_log_scales[:-2]).any()
    # The infimum lies below what an optimiser of the full problem reaches, and close to it.
    reference = REFERENCES[objective](h, w2)
    assert solution.value <= reference * (1 + 1e-12)
    assert solution.value == pytest.approx(reference, rel=1e-4)


def test_a_dead_unit_is_a_limit_for_arxiv_but_exact_for_icml() -> None:
    h0, w0 = random_problem(8)
    h, w2 = np.vstack([h0, np.zeros(h0.shape[1])]), np.vstack([w0, np.ones(h0.shape[1])])
    for objective, attained in (("arxiv", False), ("icml", True)):
        # arXiv: σ² (0) + W²/σ² needs σ → ∞; ICML: A_i B_i = 0 · B_i at every s.
        solution = minimize_normalized_sharpness(h, w2, objective=objective)
        alone = minimize_normalized_sharpness(h0, w0, objective=objective)
        assert solution.attained is attained
        assert solution.pruned_rows == 1
        assert solution.value == pytest.approx(alone.value, rel=1e-13)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_entries_between_strong_components_vanish(objective: str) -> None:
    # No zero row or column, yet h_01 and W²_10 join two cycles one way only: both can be
    # driven to zero, leaving the two diagonal 1 × 1 problems.
    h = np.array([[1.0, 2.0], [0.0, 3.0]])
    w2 = np.array([[5.0, 0.0], [7.0, 11.0]])
    solution = minimize_normalized_sharpness(h, w2, objective=objective)
    assert not solution.attained
    assert solution.blocks == 2
    diagonal = np.sqrt([1.0 * 5.0, 3.0 * 11.0])
    expected = 2 * diagonal.sum() if objective == "arxiv" else np.sqrt(np.square(diagonal).sum())
    assert solution.value == pytest.approx(expected, rel=1e-14)
    assert solution.value <= REFERENCES[objective](h, w2) * (1 + 1e-12)


def test_disconnected_blocks_are_solved_separately_and_attained() -> None:
    a, b = random_problem(1), random_problem(2)
    h = torch.block_diag(torch.from_numpy(a[0]), torch.from_numpy(b[0]))
    w2 = torch.block_diag(torch.from_numpy(a[1]), torch.from_numpy(b[1]))
    for objective in OBJECTIVES:
        whole = minimize_normalized_sharpness(h, w2, objective=objective)
        parts = [minimize_normalized_sharpness(*p, objective=objective).value for p in (a, b)]
        expected = sum(parts) if objective == "arxiv" else np.sqrt(np.square(parts).sum())
        assert whole.attained and whole.blocks == 2
        assert whole.value == pytest.approx(expected, rel=1e-12)


def test_all_zero_curvature_gives_zero() -> None:
    solution = minimize_normalized_sharpness(np.zeros((3, 2)), np.ones((3, 2)))
    assert solution.value == 0.0
    assert not solution.attained
    assert solution.relative_kkt == 0.0


def test_iteration_cap_is_reported_not_hidden() -> None:
    h, w2 = random_problem(4, spread=3.0)
    capped = minimize_normalized_sharpness(h, w2, objective="icml", max_iterations=0)
    assert capped.iterations == 0
    assert not capped.converged
    assert capped.relative_kkt > 1e-12


@pytest.mark.parametrize(
    ("h", "w2", "options", "message"),
    [
        (-np.ones((2, 2)), np.ones((2, 2)), {}, "diag_hessian must be non-negative"),
        (np.ones((2, 2)), np.full((2, 2), np.nan), {}, "weight_squared holds non-finite"),
        (np.ones((2, 2)), np.ones((2, 3)), {}, r"same shape; got \(2, 2\) and \(2, 3\)"),
        (np.ones(3), np.ones(3), {}, "must be a 2-D matrix"),
        (np.ones((2, 2)), np.ones((2, 2)), {"objective": "ICML"}, "objective must be 'arxiv' or"),
        (np.ones((2, 2)), np.ones((2, 2)), {"tolerance": 0.0}, r"tolerance must be .* \(0, 1\)"),
        (np.ones((2, 2)), np.ones((2, 2)), {"max_iterations": -1}, "max_iterations must be"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(h, w2, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        minimize_normalized_sharpness(h, w2, **options)


# ---------------------------------------------------------------------------------------------
# Layers and measures
# ---------------------------------------------------------------------------------------------


def test_grouped_conv_is_block_diagonal_over_channels() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, 2, 2, generator=generator, dtype=torch.float64)
    diagonal = torch.rand(4, 3, 2, 2, generator=generator, dtype=torch.float64)
    h, w2 = layer_matrices(diagonal, weight, groups=2)
    assert h.shape == (4, 6)
    assert (h[:2, 3:] == 0).all() and (w2[2:, :3] == 0).all()
    assert torch.allclose(w2[2:, 3:], weight[2:].square().sum((2, 3)))
    for objective in OBJECTIVES:
        whole = layer_normalized_sharpness(diagonal, weight, groups=2, objective=objective)
        parts = [
            layer_normalized_sharpness(diagonal[g], weight[g], objective=objective).value
            for g in (slice(0, 2), slice(2, 4))
        ]
        expected = sum(parts) if objective == "arxiv" else np.sqrt(np.square(parts).sum())
        assert whole.attained
        assert whole.value == pytest.approx(expected, rel=1e-12)


def reference_measure(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, objective):
    """Per-layer NS from the brute-force diagonal and scipy, all-zero rows/columns pruned."""
    diagonal = minsharp.brute_force_hessian_diagonal(model, inputs, labels)
    values = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        h = diagonal[f"{name}.weight"].numpy()
        w2 = module.weight.detach().square().numpy()
        h, w2 = (m.reshape(m.shape[0], m.shape[1], -1).sum(-1) for m in (h, w2))
        while True:  # dead units (zero rows) and inputs never seen (zero columns)
            rows = (h.sum(1) > 0) & (w2.sum(1) > 0)
            columns = (h.sum(0) > 0) & (w2.sum(0) > 0)
            if rows.all() and columns.all():
                break
            h, w2 = h[rows][:, columns], w2[rows][:, columns]
        values[name] = REFERENCES[objective](h, w2)
    return values


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize(("kind", "batchnorm"), [("mlp", False), ("cnn", False), ("cnn", True)])
def test_measure_matches_brute_force_diagonal_and_scipy(kind, batchnorm, objective) -> None:
    model = network(kind, batchnorm=batchnorm, seed=1)
    inputs, labels = labelled_data(kind, seed=1, examples=20)
    result = measure(MEASURES[objective], model, (inputs, labels))
    reference = reference_measure(model, inputs, labels, objective)
    assert result.per_layer.keys() == reference.keys()
    for name, value in reference.items():
        assert result.per_layer[name] == pytest.approx(value, rel=1e-8), name
    assert result.value == pytest.approx(sum(reference.values()), rel=1e-8)
    assert result.certificate["max_relative_kkt"] <= 1e-10
    assert result.certificate["converged"]
    assert result.certificate["method"] == "newton-cg"
    assert set(result.details["solve_seconds"]) == set(reference)
    json.dumps(result.to_dict())


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_declared_invariances_hold(objective: str) -> None:
    name = MEASURES[objective]
    assert spec(name).invariances == {"layer", "neuron", "batchnorm"}
    for kind in ("mlp", "cnn"):
        model = network(kind, batchnorm=True, seed=2)
        data = labelled_data(kind, seed=2)
        before = measure(name, model, data).value
        for symmetry, transform in TRANSFORMS.items():
            after = measure(name, transform(model, seed=7), data).value
            assert after == pytest.approx(before, rel=1e-10), (kind, symmetry)


def test_measure_warns_when_the_iteration_cap_stops_it() -> None:
    model = network("mlp", batchnorm=False, seed=0)
    data = labelled_data("mlp", seed=0, examples=30)
    with pytest.warns(RuntimeWarning, match="max_iterations=0"):
        result = measure("normalized_sharpness_icml", model, data, max_iterations=0)
    assert not result.certificate["converged"]


def test_model_without_weights_is_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 2)).double()
    model[0].weight.requires_grad_(False)
    with pytest.raises(minsharp.ModelError, match="at least one Linear or conv weight"):
        measure("normalized_sharpness", model, torch.randn(4, 3, dtype=torch.float64))


@pytest.mark.parametrize(
    "module",
    [
        torch.nn.Linear(3, 4),
        torch.nn.Conv2d(4, 6, 3, groups=2),
        torch.nn.Conv1d(2, 2, 3, groups=2, bias=False),
        torch.nn.BatchNorm2d(5),
    ],
)
def test_each_rule_maps_its_weight_to_units_and_back(module: torch.nn.Module) -> None:
    from minsharp.curvature.rules import units_to_weight, weight_units

    weight = module.weight.detach()
    units = weight_units(module, weight)
    assert units.dim() == 3
    outputs = weight.shape[0]
    inputs = weight.shape[1] * getattr(module, "groups", 1) if weight.dim() > 1 else 1
    assert units.shape[:2] == (outputs, inputs)
    assert torch.equal(units_to_weight(module, units), weight)


def test_a_layer_type_without_a_rule_is_refused_not_misread() -> None:
    from minsharp.curvature.rules import weight_units
    from minsharp.errors import UnsupportedModuleError

    transposed = torch.nn.ConvTranspose2d(2, 4, 3)  # weight (C_in, C_out, k, k)
    with pytest.raises(UnsupportedModuleError, match=r"ConvTranspose2d.*Supported modules"):
        weight_units(transposed, transposed.weight)
    model = torch.nn.Sequential(transposed, torch.nn.Flatten(), torch.nn.LazyLinear(3))
    model(torch.randn(1, 2, 4, 4))
    with pytest.raises(UnsupportedModuleError, match="ConvTranspose2d"):
        measure("normalized_sharpness", model.eval(), torch.randn(2, 2, 4, 4))

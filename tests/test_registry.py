"""Every registered measure's invariance claims, proven on random networks.

For each measure and each symmetry of ``SYMMETRIES`` the measure is computed on small random
networks and on function-preserving rescaled copies of them (``tests/symmetries.py``):

* a declared invariance must hold to ``INVARIANT`` relative (float64);
* an undeclared one must move the value by more than ``MOVED`` on at least one network —
  or, where the measure cannot be applied to any network having that symmetry (Minimum
  Sharpness needs a chain, so no batch-norm), the measure must refuse those networks with a
  clear error rather than return a number.

A new measure cannot join the registry without its claims checked here.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tests.symmetries import TRANSFORMS, labelled_data, network

from minsharp.errors import ModelError
from minsharp.measures import SYMMETRIES, available, measure, spec

DOCS = Path(__file__).resolve().parents[1] / "docs" / "measures.md"
INVARIANT = 1e-6
MOVED = 1e-3

#: (kind, with batch-norm) of the networks each symmetry is tested on.
NETWORKS = {
    "layer": [("mlp", False), ("cnn", False), ("mlp", True)],
    "neuron": [("mlp", False), ("cnn", False), ("mlp", True)],
    "batchnorm": [("mlp", True), ("cnn", True)],
}

#: Options that keep the iterative measures quick on these tiny networks (the claims do not
#: depend on them).
FAST_OPTIONS: dict[str, dict[str, object]] = {
    "hutchinson_trace": {"samples": 20},
    "adaptive_sharpness_average": {"samples": 20},
    # The loss always rises with the noise, so the σ search brackets on every network.
    "pac_bayes_flatness": {"samples": 8, "metric": "loss"},
}


def applicable(name: str, batchnorm: bool) -> bool:
    requires = spec(name).requires
    return not ("chain" in requires and batchnorm) and not (
        "batchnorm" in requires and not batchnorm
    )


def relative_change(before: float, after: float) -> float:
    return abs(after - before) / max(abs(before), 1e-300)


@pytest.mark.parametrize("symmetry", SYMMETRIES)
@pytest.mark.parametrize("name", available())
def test_declared_invariances_hold_and_undeclared_ones_move(name: str, symmetry: str) -> None:
    declared = symmetry in spec(name).invariances
    options = FAST_OPTIONS.get(name, {})
    changes, refused = [], []
    for seed, (kind, batchnorm) in enumerate(NETWORKS[symmetry]):
        model = network(kind, batchnorm=batchnorm, seed=seed)
        data = labelled_data(kind, seed)
        if not applicable(name, batchnorm):
            with pytest.raises(ModelError):
                measure(name, model, data, **options)
            refused.append(kind)
            continue
        twin = TRANSFORMS[symmetry](model, seed + 100)
        before = measure(name, model, data, **options).value
        after = measure(name, twin, data, **options).value
        changes.append(relative_change(before, after))
    if declared:
        assert changes, f"{name} declares {symmetry} invariance but applies to no test network"
        assert max(changes) <= INVARIANT, (name, symmetry, changes)
    elif changes:
        assert max(changes) > MOVED, (
            f"{name} does not declare {symmetry} invariance, yet it did not move: {changes}. "
            "Declare the invariance (if it is true in general) or test a network that breaks it."
        )
    else:
        assert refused, (name, symmetry)


@pytest.mark.parametrize("name", available())
def test_every_measure_documents_itself(name: str) -> None:
    chosen = spec(name)
    assert chosen.summary and chosen.reference
    assert chosen.compute.__doc__ and len(chosen.compute.__doc__) > 80
    assert set(chosen.invariances) <= set(SYMMETRIES)


@pytest.mark.parametrize("name", available())
def test_every_measure_is_in_the_docs_table_with_its_invariances(name: str) -> None:
    rows = [
        line
        for line in DOCS.read_text(encoding="utf-8").splitlines()
        if line.startswith(f"| `{name}` |")
    ]
    assert len(rows) == 1, f"docs/measures.md needs one table row for {name}"
    declared = rows[0].split("|")[2]
    for symmetry in SYMMETRIES:
        assert (symmetry in declared) == (symmetry in spec(name).invariances), (name, declared)


def test_batchnorm_symmetry_is_exact_only_up_to_epsilon() -> None:
    """docs/measures.md: ``(c x − c μ)/√(c² σ² + ε)`` differs from ``(x − μ)/√(σ² + ε)`` by a
    relative ``≈ ε (1 − 1/c²) / (2σ²)``: below 5e-6 for ε = 1e-5, unit variance, c ≥ 1/√2."""
    eps = 1e-5
    norm = torch.nn.BatchNorm1d(4, eps=eps).double().eval()
    variance = torch.tensor([1.0, 1.0, 0.5, 2.0], dtype=torch.float64)
    factors = torch.tensor([0.5, 3.0, 10.0, 1e3], dtype=torch.float64)
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        norm.running_var.copy_(variance)
    inputs = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    twin = copy.deepcopy(norm)
    with torch.no_grad():
        twin.running_mean.mul_(factors)
        twin.running_var.mul_(factors.square())
        change = twin(inputs * factors) / norm(inputs) - 1  # β = 0, γ = 1: x̂ itself
    predicted = eps * (1 - 1 / factors.square()) / (2 * variance)
    torch.testing.assert_close(change, predicted.expand_as(change), rtol=1e-4, atol=1e-15)
    assert change[:, (variance == 1) & (factors >= 0.5**0.5)].abs().max() <= eps / 2
    assert change[:, factors < 0.5**0.5].abs().min() > eps / 2  # grows as 1/c² below

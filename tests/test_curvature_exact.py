"""Exactness of the curvature engine against the brute-force references, on random networks.

``hessian_diagonal`` / ``hessian_trace`` must agree with ``brute_force_hessian_diagonal`` (one
double-backward per entry) to 1e-9 relative in float64 on every network piecewise linear in
its parameters (``tests/networks.py``), whatever the batch size and the form of the data, and
with ``brute_force_ggn_diagonal`` on smooth networks when ``curvature="ggn"``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from tests.networks import (
    MAX_EXAMPLES,
    MAX_PARAMETERS,
    PIECEWISE_LINEAR,
    SEEDS,
    SMOOTH,
    Builder,
    Case,
    conv2d,
    count_trainable,
    residual,
    two_branch,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import minsharp
from minsharp.curvature import engine, patches

FLOAT64_RTOL = 1e-9
FLOAT32_RTOL = 1e-5
#: Absolute floor of the scale of a block, for blocks that are exactly zero (dead units).
ZERO_FLOOR = 1e-12

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

#: Shrinking a seed gives no simpler network, only a long search: report the failing draw.
SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
    "phases": [Phase.explicit, Phase.reuse, Phase.generate],
}


# ---------------------------------------------------------------------------------------------
# Comparison helpers: failures say which entry, its values, the scale and the tolerance
# ---------------------------------------------------------------------------------------------


def assert_diagonals_close(
    actual: Mapping[str, Tensor], expected: Mapping[str, Tensor], rtol: float, what: str = ""
) -> None:
    """Per parameter, ``max |actual − expected| ≤ rtol · max(max |expected|, ZERO_FLOOR)``."""
    assert set(actual) == set(expected), f"{what}: parameters {set(actual)} != {set(expected)}"
    problems = []
    for name, reference in expected.items():
        value = actual[name]
        assert value.shape == reference.shape, f"{what}: {name} shape {value.shape}"
        difference = (value.double() - reference.double()).abs()
        scale = max(reference.abs().max().item(), ZERO_FLOOR)
        if not difference.max().item() <= rtol * scale:
            worst = int(difference.argmax())
            problems.append(
                f"{name}{tuple(reference.shape)}: worst entry {worst}: got "
                f"{value.reshape(-1)[worst].item():.17g}, expected "
                f"{reference.reshape(-1)[worst].item():.17g}; max error "
                f"{difference.max().item():.3e} > {rtol:.0e} x scale {scale:.3e}; "
                f"norms got {value.double().norm().item():.6g} / expected "
                f"{reference.double().norm().item():.6g}"
            )
    assert not problems, f"{what}: diagonals differ:\n  " + "\n  ".join(problems)


def assert_traces_close(
    actual: Mapping[str, float], expected: Mapping[str, float], rtol: float, what: str = ""
) -> None:
    """Per parameter, ``|actual − expected| ≤ rtol · max(|expected|, ZERO_FLOOR)``."""
    assert set(actual) == set(expected), f"{what}: parameters {set(actual)} != {set(expected)}"
    problems = [
        f"{name}: got {actual[name]:.17g}, expected {value:.17g} (tolerance {rtol:.0e} relative)"
        for name, value in expected.items()
        if not abs(actual[name] - value) <= rtol * max(abs(value), ZERO_FLOOR)
    ]
    assert not problems, f"{what}: traces differ:\n  " + "\n  ".join(problems)


def traces_of(diagonal: Mapping[str, Tensor]) -> dict[str, float]:
    return {name: value.double().sum().item() for name, value in diagonal.items()}


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def reference(case: Case) -> dict[str, Tensor]:
    return minsharp.brute_force_hessian_diagonal(case.model, case.inputs, case.labels)


def every_builder(builders: list[Builder], **fixed: object) -> Callable[[Callable], Callable]:
    """Always run seed 0 of every builder, besides what hypothesis draws."""

    def decorate(test: Callable) -> Callable:
        for build in builders:
            test = example(build=build, seed=0, **fixed)(test)
        return test

    return decorate


# ---------------------------------------------------------------------------------------------
# Hessian diagonal and trace on random piecewise-linear networks
# ---------------------------------------------------------------------------------------------


@settings(max_examples=200, **SETTINGS)
@every_builder(PIECEWISE_LINEAR)
@given(build=st.sampled_from(PIECEWISE_LINEAR), seed=SEEDS)
def test_diagonal_matches_brute_force(build: Builder, seed: int) -> None:
    case = build(seed)
    result = minsharp.hessian_diagonal(case.model, case.inputs)
    assert list(result) == trainable_names(case.model)
    assert result.curvature == "hessian"
    assert result.num_examples == case.inputs.shape[0]
    assert all(value.dtype == torch.float64 for value in result.values())
    assert_diagonals_close(result, reference(case), FLOAT64_RTOL, f"{build.__name__}({seed})")


@settings(max_examples=100, **SETTINGS)
@every_builder(PIECEWISE_LINEAR)
@given(build=st.sampled_from(PIECEWISE_LINEAR), seed=SEEDS)
def test_trace_matches_brute_force(build: Builder, seed: int) -> None:
    case = build(seed)
    expected = traces_of(reference(case))
    traces = minsharp.hessian_trace(case.model, case.inputs)
    diagonal = minsharp.hessian_diagonal(case.model, case.inputs)
    what = f"{build.__name__}({seed})"
    assert list(traces) == trainable_names(case.model)
    assert traces.curvature == "hessian"
    assert traces.num_examples == case.inputs.shape[0]
    assert_traces_close(traces, expected, FLOAT64_RTOL, what)
    # The trace of the diagonal result is the same quantity, by another route.
    assert_traces_close(diagonal.trace(), expected, FLOAT64_RTOL, what + " diagonal.trace()")
    assert diagonal.trace().curvature == "hessian"
    assert traces.total == pytest.approx(sum(expected.values()), rel=FLOAT64_RTOL, abs=1e-300)
    assert diagonal.total == pytest.approx(traces.total, rel=FLOAT64_RTOL, abs=1e-300)


@settings(max_examples=100, **SETTINGS)
@every_builder(PIECEWISE_LINEAR)
@given(build=st.sampled_from(PIECEWISE_LINEAR), seed=SEEDS)
def test_float32_within_1e5_of_float64_reference(build: Builder, seed: int) -> None:
    case = build(seed)
    expected = reference(case)
    model32 = copy.deepcopy(case.model).float()
    inputs32 = case.inputs.float()
    what = f"{build.__name__}({seed}) in float32"
    diagonal = minsharp.hessian_diagonal(model32, inputs32)
    assert all(value.dtype == torch.float32 for value in diagonal.values())
    assert_diagonals_close(diagonal, expected, FLOAT32_RTOL, what)
    traces = minsharp.hessian_trace(model32, inputs32)
    assert_traces_close(traces, traces_of(expected), FLOAT32_RTOL, what)


@settings(max_examples=25, **SETTINGS)
@every_builder(PIECEWISE_LINEAR)
@given(build=st.sampled_from(PIECEWISE_LINEAR), seed=SEEDS)
def test_float32_over_several_batches_accumulates_in_float64(build: Builder, seed: int) -> None:
    # One batch's sums stay in float32; from the second batch on they are added in float64
    # and handed back in float32. The data twice over has the same mean Hessian.
    case = build(seed)
    expected = reference(case)
    model32 = copy.deepcopy(case.model).float()
    twice = [case.inputs.float(), case.inputs.float()]
    held: list[torch.dtype] = []
    accumulate = engine._accumulate

    def watched(sums: dict[str, Tensor], name: str, value: Tensor, dtype: torch.dtype) -> None:
        accumulate(sums, name, value, dtype)
        held.append(sums[name].dtype)

    what = f"{build.__name__}({seed}) in float32, two batches"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "_accumulate", watched)
        diagonal = minsharp.hessian_diagonal(model32, twice)
        traces = minsharp.hessian_trace(model32, twice)
    assert torch.float32 in held and torch.float64 in held
    assert all(value.dtype == torch.float32 for value in diagonal.values())
    assert_diagonals_close(diagonal, expected, FLOAT32_RTOL, what)
    assert_traces_close(traces, traces_of(expected), FLOAT32_RTOL, what)


def _data_forms(inputs: Tensor, labels: Tensor, split: int) -> dict[str, object]:
    dataset = TensorDataset(inputs, labels)
    return {
        "tensor X": inputs,
        "tuple (X, y)": (inputs, labels),
        "tuple (X,)": (inputs,),
        "list of (X, y) batches": [
            (inputs[:split], labels[:split]),
            (inputs[split:], labels[split:]),
        ],
        "list of X batches": [inputs[:split], inputs[split:]],
        "generator of X batches": (inputs[i : i + 2] for i in range(0, inputs.shape[0], 2)),
        "DataLoader, batches of 2": DataLoader(dataset, batch_size=2),
        "DataLoader, batches of 3, shuffled": DataLoader(dataset, batch_size=3, shuffle=True),
    }


@settings(max_examples=40, **SETTINGS)
@every_builder(PIECEWISE_LINEAR, split=2)
@given(build=st.sampled_from(PIECEWISE_LINEAR), seed=SEEDS, split=st.integers(0, 7))
def test_independent_of_batch_size_and_data_form(build: Builder, seed: int, split: int) -> None:
    case = build(seed)
    N = case.inputs.shape[0]
    expected = reference(case)
    expected_traces = traces_of(expected)
    for batch_size in sorted({1, 2, N, N + 5}):
        what = f"{build.__name__}({seed}), batch_size={batch_size}"
        diagonal = minsharp.hessian_diagonal(case.model, case.inputs, batch_size=batch_size)
        assert diagonal.num_examples == N
        assert_diagonals_close(diagonal, expected, FLOAT64_RTOL, what)
        traces = minsharp.hessian_trace(case.model, case.inputs, batch_size=batch_size)
        assert_traces_close(traces, expected_traces, FLOAT64_RTOL, what)
    for form, data in _data_forms(case.inputs, case.labels, min(split, N)).items():
        what = f"{build.__name__}({seed}), data as {form}"
        diagonal = minsharp.hessian_diagonal(case.model, data, batch_size=3)
        assert diagonal.num_examples == N, what
        assert_diagonals_close(diagonal, expected, FLOAT64_RTOL, what)
    for form, data in _data_forms(case.inputs, case.labels, min(split, N)).items():
        traces = minsharp.hessian_trace(case.model, data)
        assert_traces_close(traces, expected_traces, FLOAT64_RTOL, f"data as {form}")


# ---------------------------------------------------------------------------------------------
# Gram form and direct form of the weight trace (patches._weight_trace)
# ---------------------------------------------------------------------------------------------


def _uses_gram_form(classes: int, C: int, P: int, S: int) -> bool:
    """The engine's choice (patches.LayerSums._gram_is_cheaper), restated: K − 1 cotangents."""
    K = classes - 1
    return S * (K * C + P) < K * C * P


class _SequenceMean(nn.Module):
    def __init__(self, features: int, hidden: int, K: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, hidden)
        self.head = nn.Linear(hidden, K)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc(x)).mean(1))


def _form_cases() -> list[tuple[str, Callable[[], Case], tuple[int, int, int, int], bool]]:
    """Networks whose first layer has (classes, C, P, S) either side of the Gram/direct choice."""

    def conv2d_gram() -> Case:
        model = nn.Sequential(nn.Conv2d(3, 6, 2), nn.ReLU(), nn.Flatten(), nn.Linear(24, 3))
        return Case(model, torch.randn(5, 3, 3, 3), torch.tensor([0, 1, 2, 0, 1]))

    def grouped_conv2d_gram() -> Case:
        model = nn.Sequential(
            nn.Conv2d(4, 8, 2, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 4)
        )
        return Case(model, torch.randn(4, 4, 3, 3), torch.tensor([0, 1, 2, 3]))

    def conv1d_direct() -> Case:
        model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
        return Case(model, torch.randn(6, 1, 10), torch.tensor([0, 1, 2, 0, 1, 2]))

    def linear_gram() -> Case:
        return Case(_SequenceMean(5, 6, 4), torch.randn(5, 2, 5), torch.tensor([0, 1, 2, 3, 0]))

    def linear_direct() -> Case:
        return Case(_SequenceMean(2, 3, 2), torch.randn(5, 4, 2), torch.tensor([0, 1, 1, 0, 1]))

    return [
        ("conv2d, Gram form", conv2d_gram, (3, 6, 12, 4), True),
        ("grouped conv2d, Gram form", grouped_conv2d_gram, (4, 4, 8, 4), True),
        ("conv1d, direct form", conv1d_direct, (3, 2, 3, 8), False),
        ("linear on sequences, Gram form", linear_gram, (4, 6, 5, 2), True),
        ("linear on sequences, direct form", linear_direct, (2, 3, 2, 4), False),
    ]


@pytest.mark.parametrize(
    ("build", "shape", "gram"),
    [case[1:] for case in _form_cases()],
    ids=[case[0] for case in _form_cases()],
)
def test_gram_and_direct_trace_forms_agree(
    build: Callable[[], Case],
    shape: tuple[int, int, int, int],
    gram: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _uses_gram_form(*shape) == gram  # the case is on the intended side
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        case = build()
    model = case.model.double().eval()
    inputs = case.inputs.double()
    _, C, P, S = shape

    direct_calls: list[tuple[int, ...]] = []
    original = patches._per_cotangent_gradients

    def spy(captured: Tensor, rows: Tensor):
        direct_calls.append((*rows.shape[-2:], captured.shape[2]))
        return original(captured, rows)

    monkeypatch.setattr(patches, "_per_cotangent_gradients", spy)
    traces = minsharp.hessian_trace(model, inputs)
    assert ((C, S, P) in direct_calls) == (not gram), direct_calls
    expected = minsharp.brute_force_hessian_diagonal(model, inputs, case.labels)
    assert_traces_close(traces, traces_of(expected), FLOAT64_RTOL, "trace")
    # The diagonal always materialises the per-cotangent gradients (direct form).
    direct_calls.clear()
    diagonal = minsharp.hessian_diagonal(model, inputs)
    assert (C, S, P) in direct_calls
    assert_traces_close(traces, diagonal.trace(), FLOAT64_RTOL, "Gram vs direct")
    assert_diagonals_close(diagonal, expected, FLOAT64_RTOL, "diagonal")


@settings(max_examples=40, deadline=None)
@given(
    K=st.integers(1, 4),
    N=st.integers(1, 3),
    G=st.integers(1, 2),
    C=st.integers(1, 5),
    P=st.integers(1, 6),
    S=st.integers(1, 6),
    seed=SEEDS,
)
def test_patch_formulas_match_explicit_gradients(
    K: int, N: int, G: int, C: int, P: int, S: int, seed: int
) -> None:
    """patches.layer_sums vs materialised δ Uᵀ, for diagonals and traces (both trace forms)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(K, N, G, C, S, generator=generator, dtype=torch.float64)
    patches_ = torch.randn(N, G, P, S, generator=generator, dtype=torch.float64)
    gradients = torch.einsum("kngcs,ngps->kngcp", rows, patches_)
    expected_diagonal = gradients.square().sum((0, 1))
    expected_trace = gradients.square().sum()
    expected_bias = rows.sum(-1).square().sum((0, 1))

    for diagonal in (True, False):
        captured = patches.capture_patches(patches_, torch.empty(0), diagonal=diagonal)
        weight, bias = patches.layer_sums(captured, rows, weight=True, bias=True, diagonal=diagonal)
        expected_weight = expected_diagonal if diagonal else expected_trace
        expected_bias_sum = expected_bias if diagonal else expected_bias.sum()
        torch.testing.assert_close(weight, expected_weight, rtol=1e-12, atol=0)
        torch.testing.assert_close(bias, expected_bias_sum, rtol=1e-12, atol=0)


def test_direct_form_in_slices_of_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny memory cap the direct form runs example by example: same results."""
    case = conv2d(7)
    full_diagonal = minsharp.hessian_diagonal(case.model, case.inputs)
    full_trace = minsharp.hessian_trace(case.model, case.inputs)
    monkeypatch.setattr(patches, "DIRECT_FORM_ELEMENTS", 1)
    sliced_diagonal = minsharp.hessian_diagonal(case.model, case.inputs)
    sliced_trace = minsharp.hessian_trace(case.model, case.inputs)
    assert_diagonals_close(sliced_diagonal, full_diagonal, 1e-12, "sliced")
    assert_traces_close(sliced_trace, full_trace, 1e-12, "sliced")
    assert_diagonals_close(sliced_diagonal, reference(case), FLOAT64_RTOL, "sliced vs brute force")


# ---------------------------------------------------------------------------------------------
# Generalized Gauss–Newton on smooth networks
# ---------------------------------------------------------------------------------------------


@settings(max_examples=60, **SETTINGS)
@every_builder(SMOOTH)
@given(build=st.sampled_from(SMOOTH), seed=SEEDS)
def test_ggn_matches_brute_force_ggn(build: Builder, seed: int) -> None:
    case = build(seed)
    what = f"{build.__name__}({seed}), ggn"
    expected = minsharp.brute_force_ggn_diagonal(case.model, case.inputs)
    diagonal = minsharp.hessian_diagonal(case.model, case.inputs, curvature="ggn", batch_size=2)
    assert diagonal.curvature == "ggn"
    assert diagonal.trace().curvature == "ggn"
    assert_diagonals_close(diagonal, expected, FLOAT64_RTOL, what)
    traces = minsharp.hessian_trace(case.model, case.inputs, curvature="ggn")
    assert traces.curvature == "ggn"
    assert_traces_close(traces, traces_of(expected), FLOAT64_RTOL, what)


def test_ggn_differs_from_hessian_on_a_smooth_network() -> None:
    """The GGN test is meaningful: on a tanh network the true Hessian diagonal is different."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    inputs = 2 * torch.randn(6, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ggn = minsharp.hessian_diagonal(model, inputs, curvature="ggn")
    hessian = minsharp.brute_force_hessian_diagonal(model, inputs, labels)
    assert_diagonals_close(ggn, minsharp.brute_force_ggn_diagonal(model, inputs), FLOAT64_RTOL)
    assert (ggn["0.weight"] - hessian["0.weight"]).abs().max() > 1e-3
    # The last layer enters linearly: there GGN and Hessian blocks coincide.
    assert_diagonals_close({"2.weight": ggn["2.weight"]}, {"2.weight": hessian["2.weight"]}, 1e-9)


@settings(max_examples=10, **SETTINGS)
@given(build=st.sampled_from(PIECEWISE_LINEAR), seed=SEEDS)
def test_ggn_equals_hessian_on_piecewise_linear_networks(build: Builder, seed: int) -> None:
    case = build(seed)
    ggn_reference = minsharp.brute_force_ggn_diagonal(case.model, case.inputs)
    assert_diagonals_close(ggn_reference, reference(case), FLOAT64_RTOL, "references")
    ggn = minsharp.hessian_diagonal(case.model, case.inputs, curvature="ggn")
    assert ggn.curvature == "ggn"
    assert_diagonals_close(ggn, ggn_reference, FLOAT64_RTOL, "ggn")


# ---------------------------------------------------------------------------------------------
# Result containers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_by_layer_total_and_trace_are_consistent(seed: int) -> None:
    case = residual(seed)
    diagonal = minsharp.hessian_diagonal(case.model, case.inputs)
    traces = minsharp.hessian_trace(case.model, case.inputs)
    assert len(diagonal) == len(traces) == len(trainable_names(case.model))
    modules = dict(case.model.named_modules())
    for result in (diagonal, traces):
        by_layer = result.by_layer()
        flattened = {
            f"{module}.{local}" if module else local: value
            for module, values in by_layer.items()
            for local, value in values.items()
        }
        assert flattened.keys() == result.keys()
        for name, value in flattened.items():
            assert value is result[name]
        for module, values in by_layer.items():
            assert set(values) <= {"weight", "bias"}
            for local in values:
                assert getattr(modules[module], local).requires_grad
    assert traces.total == pytest.approx(sum(traces.values()), rel=1e-15)
    assert diagonal.total == pytest.approx(sum(d.sum().item() for d in diagonal.values()))
    as_trace = diagonal.trace()
    assert isinstance(as_trace, minsharp.CurvatureTrace)
    assert as_trace.num_examples == traces.num_examples
    assert_traces_close(as_trace, traces, FLOAT64_RTOL, "CurvatureDiagonal.trace()")
    assert as_trace.total == pytest.approx(traces.total, rel=FLOAT64_RTOL)


def test_root_module_parameters_and_frozen_layers() -> None:
    """A bare nn.Linear has parameters at the root; frozen parameters are left out."""
    torch.manual_seed(1)
    layer = nn.Linear(3, 4).double()
    inputs = torch.randn(5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0])
    diagonal = minsharp.hessian_diagonal(layer, inputs)
    assert diagonal.by_layer() == {"": {"weight": diagonal["weight"], "bias": diagonal["bias"]}}
    assert_diagonals_close(
        diagonal, minsharp.brute_force_hessian_diagonal(layer, inputs, labels), FLOAT64_RTOL
    )
    layer.bias.requires_grad_(False)
    traces = minsharp.hessian_trace(layer, inputs)
    assert list(traces) == ["weight"]
    assert traces["weight"] == pytest.approx(diagonal["weight"].sum().item(), rel=FLOAT64_RTOL)


# ---------------------------------------------------------------------------------------------
# Regressions: specific networks that once gave wrong numbers
# ---------------------------------------------------------------------------------------------


class _SequenceInplace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.fc(x)).flatten(1, -2).mean(1))


@pytest.mark.parametrize("shape", [(4, 3, 2), (4, 1, 2), (4, 2, 2, 2)])
def test_linear_on_sequences_followed_by_inplace_activation(shape: tuple[int, ...]) -> None:
    """A Linear layer with bias on (N, *T, F) inputs returns a view; an in-place op follows."""
    torch.manual_seed(0)
    model = _SequenceInplace().double()
    inputs = torch.randn(*shape, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    expected = minsharp.brute_force_hessian_diagonal(model, inputs, labels)
    assert expected["fc.weight"].abs().max() > 1e-3
    diagonal = minsharp.hessian_diagonal(model, inputs)
    assert_diagonals_close(diagonal, expected, FLOAT64_RTOL, f"inputs {shape}")
    traces = minsharp.hessian_trace(model, inputs)
    assert_traces_close(traces, traces_of(expected), FLOAT64_RTOL, f"inputs {shape}")


def test_float32_network_with_a_small_block_is_accepted() -> None:
    """A piecewise-linear float32 network whose ``b.2.weight`` block is ~1e-3 of the largest.

    Rounding in the probe's Hessian-vector product must not be taken for curvature of the
    activations (the network is piecewise linear in every parameter).
    """
    case = two_branch(59)
    model32 = copy.deepcopy(case.model).float()
    diagonal = minsharp.hessian_diagonal(model32, case.inputs.float())
    assert_diagonals_close(diagonal, reference(case), FLOAT32_RTOL, "two_branch(59) in float32")


@pytest.mark.parametrize("build", PIECEWISE_LINEAR + SMOOTH, ids=lambda build: build.__name__)
def test_builders_honour_their_contract(build: Builder) -> None:
    """Same seed, same case; the global RNG is left alone; sizes as promised."""
    state = torch.random.get_rng_state()
    first, second = build(11), build(11)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first.inputs, second.inputs)
    assert torch.equal(first.labels, second.labels)
    for (name, p), (_, q) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name
    for seed in range(20):
        model, inputs, labels = build(seed)
        assert not model.training
        assert 0 < count_trainable(model) <= MAX_PARAMETERS
        assert inputs.dtype == torch.float64
        assert 1 <= inputs.shape[0] <= MAX_EXAMPLES
        logits = model(inputs)
        assert logits.shape[1] in (2, 3, 4)
        assert labels.shape == (inputs.shape[0],)
        assert int(labels.min()) >= 0 and int(labels.max()) < logits.shape[1]
        assert all(p.dtype == torch.float64 for p in model.parameters())


class _SummedOutputs(nn.Module):
    """Two layers whose outputs are added: the backward hands both one cotangent tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Linear(4, 5), nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.left(x) + self.right(x)))


@pytest.mark.parametrize("diagonal", [True, False])
def test_layers_sharing_one_cotangent_tensor(diagonal: bool) -> None:
    torch.manual_seed(0)
    model = _SummedOutputs().double()
    inputs = torch.randn(6, 4, dtype=torch.float64)
    expected = minsharp.brute_force_hessian_diagonal(
        model, inputs, torch.zeros(6, dtype=torch.long)
    )
    if diagonal:
        assert_diagonals_close(minsharp.hessian_diagonal(model, inputs), expected, FLOAT64_RTOL, "")
    else:
        assert_traces_close(
            minsharp.hessian_trace(model, inputs), traces_of(expected), FLOAT64_RTOL, ""
        )

"""The engine's backward strategies give the same exact answer.

The engine pushes the K centred cotangents back either from the logits, or, when the logits
are the output of a Linear layer (the head), from the head's input with the head's own sums in
closed form (``cotangents.head_unit_squares`` / ``cotangents.head_cotangents``); it pushes
them a chunk of classes at a time (``cotangents.CHUNK_ELEMENTS``), in batches the memory
budget sizes (``budget``). Every combination must agree with the
brute-force diagonal, also with many classes (K large against the widths, where the head
shortcut matters), and with each other to rounding.
"""

from __future__ import annotations

import pytest
import torch
from tests.networks import conv2d, mlp
from tests.test_curvature_exact import (
    FLOAT64_RTOL,
    assert_diagonals_close,
    assert_traces_close,
    traces_of,
)
from torch import Tensor, nn

import minsharp
from minsharp.curvature import budget, cotangents, engine, patches
from minsharp.models import resnet20

#: Class counts much larger than the widths of the tiny networks below.
MANY_CLASSES = [2, 17, 60]

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same.:UserWarning")


def tiny_mlp(classes: int, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """A float64 ReLU MLP 5-4-3-K and 6 inputs."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.LeakyReLU(0.1), nn.Linear(3, classes)
    ).double()
    inputs = torch.randn(6, 5, dtype=torch.float64)
    return model.eval(), inputs, torch.randint(0, classes, (6,))


class ScaledLogits(nn.Module):
    """Logits that are not the output of a Linear layer: the generic path."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, classes))

    def forward(self, x: Tensor) -> Tensor:
        return 2.0 * self.body(x)


class ConvHead(nn.Module):
    """A convolution with max-pooling, then a Linear head on the flattened maps."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.head = nn.Linear(3 * 2 * 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def check_against_brute_force(model: nn.Module, inputs: Tensor, labels: Tensor) -> None:
    expected = minsharp.brute_force_hessian_diagonal(model, inputs, labels)
    diagonal = minsharp.hessian_diagonal(model, inputs)
    trace = minsharp.hessian_trace(model, inputs)
    assert_diagonals_close(diagonal, expected, FLOAT64_RTOL, "diagonal")
    assert_traces_close(trace, traces_of(expected), FLOAT64_RTOL, "trace")


@pytest.mark.parametrize("classes", MANY_CLASSES)
def test_head_shortcut_with_many_classes(classes: int) -> None:
    model, inputs, labels = tiny_mlp(classes)
    check_against_brute_force(model, inputs, labels)


@pytest.mark.parametrize("classes", MANY_CLASSES)
def test_generic_path_with_many_classes(classes: int) -> None:
    torch.manual_seed(1)
    model = ScaledLogits(classes).double().eval()
    inputs = torch.randn(5, 5, dtype=torch.float64)
    check_against_brute_force(model, inputs, torch.randint(0, classes, (5,)))


@pytest.mark.parametrize("classes", [3, 25])
def test_convolution_and_pooling_before_the_head(classes: int) -> None:
    torch.manual_seed(2)
    model = ConvHead(classes).double().eval()
    inputs = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    check_against_brute_force(model, inputs, torch.randint(0, classes, (4,)))


def test_the_head_is_found_only_where_it_gives_the_logits() -> None:
    model, inputs, _ = tiny_mlp(7)
    layers = engine.find_layers(model)
    with engine.autograd_enabled(), engine.recording(layers, 6, diagonal=False) as calls:
        logits = engine.run_forward(model, inputs)
    recorded = [(layer, calls[layer.name]) for layer in layers]
    head = engine._head(recorded, logits)
    assert head is not None and head[0].name == "4"
    assert engine._head(recorded[:-1], logits) is None  # the head not recorded: none found
    assert engine._head(recorded, 2.0 * logits) is None  # logits made after the head


@pytest.mark.parametrize("diagonal", [True, False])
@pytest.mark.parametrize(
    "build", [lambda: tiny_mlp(30)[:2], lambda: (conv2d(3).model, conv2d(3).inputs)]
)
def test_head_shortcut_agrees_with_the_generic_path(
    build: object, diagonal: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, inputs = build()  # type: ignore[operator]
    compute = minsharp.hessian_diagonal if diagonal else minsharp.hessian_trace
    shortcut = compute(model, inputs)
    monkeypatch.setattr(engine, "_head", lambda recorded, logits: None)
    generic = compute(model, inputs)
    if diagonal:
        assert_diagonals_close(shortcut, generic, 1e-12, "shortcut vs generic")
    else:
        assert_traces_close(shortcut, generic, 1e-12, "shortcut vs generic")


@pytest.mark.parametrize("chunk", [1, 50, 1 << 40])
@pytest.mark.parametrize("build", [mlp, conv2d], ids=["mlp", "conv2d"])
def test_every_chunk_size_gives_the_same_result(
    chunk: int, build: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One class per backward pass, a few, or all K in one vectorised pass."""
    case = build(4)  # type: ignore[operator]
    diagonal = minsharp.hessian_diagonal(case.model, case.inputs)
    trace = minsharp.hessian_trace(case.model, case.inputs)
    monkeypatch.setattr(cotangents, "CHUNK_ELEMENTS", chunk)
    assert_diagonals_close(
        minsharp.hessian_diagonal(case.model, case.inputs), diagonal, 1e-12, f"chunk {chunk}"
    )
    assert_traces_close(
        minsharp.hessian_trace(case.model, case.inputs), trace, 1e-12, f"chunk {chunk}"
    )


@pytest.mark.parametrize("groups", [1, 3])
def test_unsquared_inputs_give_the_squared_inputs_sums(
    groups: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keeping one-position inputs unsquared and squaring them a few examples at a time must
    # give the sums of squares formed at capture, weight and bias alike.
    generator = torch.Generator().manual_seed(groups)
    inputs = torch.randn(7, groups, 5, 1, generator=generator, dtype=torch.float64)
    rows = torch.randn(4, 7, groups, 3, 1, generator=generator, dtype=torch.float64)
    monkeypatch.setattr(patches, "SQUARES_ELEMENTS", 10)  # blocks of 2 examples, the last 1
    found = {}
    for unsquared in (False, True):
        sums = patches.LayerSums(
            patches.capture_patches(inputs, inputs, diagonal=True, unsquared=unsquared),
            classes=4,
            weight=True,
            bias=True,
            diagonal=True,
            unsquared=unsquared,
        )
        sums.add(rows)
        found[unsquared] = sums.result()
    for squared, unsquared in zip(found[False], found[True], strict=True):
        torch.testing.assert_close(unsquared, squared, rtol=1e-14, atol=0)


@pytest.mark.parametrize("classes", [2, 10, 15])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_class_probabilities_are_the_softmax(classes: int, dtype: torch.dtype) -> None:
    # Fewer than 16 classes take the written-out formula (more take torch's own softmax): it
    # must be the softmax, also where exp of the raw logits would overflow.
    generator = torch.Generator().manual_seed(classes)
    logits = torch.randn(50, classes, generator=generator, dtype=dtype) * 30
    logits[0] += 1e4
    found = cotangents.class_probabilities(logits)
    torch.testing.assert_close(found, logits.softmax(1), rtol=0, atol=4 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("classes", [2, 3, 9])
def test_head_formulas_in_closed_form(classes: int) -> None:
    """K − 1 cotangents factor ``diag p − p pᵀ``; ``Σ c² = p(1 − p)``; ``Wᵀ c`` as formed."""
    torch.manual_seed(3)
    probabilities = torch.randn(4, classes, dtype=torch.float64).softmax(1)
    # A confident prediction of the last class: the reflection's denominator stays ≥ 1.
    probabilities[0] = torch.full((classes,), 1e-30, dtype=torch.float64)
    probabilities[0, -1] = 1
    weight = torch.randn(classes, 5, dtype=torch.float64)
    count = cotangents.cotangent_count(classes)
    assert count == classes - 1
    explicit = cotangents.class_cotangents(probabilities, slice(0, count))  # (K − 1, N, K)
    outer = torch.einsum("knc,knd->ncd", explicit, explicit)
    expected = torch.diag_embed(probabilities) - probabilities[:, :, None] * probabilities[:, None]
    torch.testing.assert_close(outer, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(
        cotangents.head_unit_squares(probabilities)[:, 0],
        explicit.square().sum(0),
        rtol=1e-12,
        atol=1e-15,
    )
    pulled = cotangents.head_cotangents(weight, probabilities)
    torch.testing.assert_close(pulled(slice(0, count)), explicit @ weight, rtol=1e-12, atol=1e-14)
    if count > 2:
        torch.testing.assert_close(
            pulled(slice(1, 3)), pulled(slice(0, count))[1:3], rtol=0, atol=0
        )
        torch.testing.assert_close(
            cotangents.class_cotangents(probabilities, slice(1, 3)), explicit[1:3], rtol=0, atol=0
        )


@pytest.mark.parametrize("diagonal", [True, False])
@pytest.mark.parametrize("build", [mlp, conv2d], ids=["mlp", "conv2d"])
def test_batches_sized_by_the_memory_budget(
    diagonal: bool, build: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``batch_size=None`` splits the data as the budget says; the sums do not change.

    A budget of a few examples' worth forces even batches of 1–3 examples (and, from the
    tensor budget alone, of one), against the brute-force diagonal.
    """
    case = build(0)  # type: ignore[operator]  # 6 and 4 examples
    layers = engine.find_layers(case.model)
    with engine.autograd_enabled():
        need = budget.footprint(
            case.model,
            layers,
            case.inputs[:3],
            diagonal=diagonal,
            forward=lambda inputs: engine.run_forward(case.model, inputs),
        )
    itemsize = case.inputs.element_size()
    expected = minsharp.brute_force_hessian_diagonal(case.model, case.inputs, case.labels)
    compute = minsharp.hessian_diagonal if diagonal else minsharp.hessian_trace
    seen: list[int] = []
    original = engine._batch_sums
    monkeypatch.setattr(
        engine, "_batch_sums", lambda *args: seen.append(args[2].shape[0]) or original(*args)
    )
    for examples in (1, 2, 3):
        seen.clear()
        monkeypatch.setattr(budget, "MEMORY_BUDGET", examples * itemsize * need.elements)
        result = compute(case.model, case.inputs)
        assert max(seen) == budget.even_split(case.inputs.shape[0], examples), seen
        assert max(seen) - min(seen) <= 1, seen
        assert sum(seen) == case.inputs.shape[0]
        check = assert_diagonals_close if diagonal else assert_traces_close
        check(result, expected if diagonal else traces_of(expected), FLOAT64_RTOL, "budget")
    monkeypatch.setattr(budget, "MEMORY_BUDGET", 1 << 40)
    monkeypatch.setattr(budget, "TENSOR_BUDGET", itemsize * need.widest)
    seen.clear()
    compute(case.model, case.inputs)
    assert set(seen) == {1}


def test_the_default_batch_takes_small_data_whole() -> None:
    """A few thousand MLP examples fit the budget: one batch, not batches of 256."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    layers = engine.find_layers(model)
    probe = torch.randn(8, 20)
    chain = engine.linear_relu_chain(model, layers, probe)
    assert chain is not None
    with engine.autograd_enabled():
        measured = engine._auto_batch_size(model, layers, probe, True, None)
        from_widths = engine._auto_batch_size(model, layers, probe, True, chain)
    assert measured == from_widths > 5000
    assert budget.even_split(1000, 600) == 500
    assert budget.even_split(1001, 500) == 334
    assert budget.even_split(10, 256) == 10


@pytest.mark.parametrize("batchnorm", [True, False])
def test_resnet20_against_the_jacobian_reference(batchnorm: bool) -> None:
    """Residual sums, projection shortcuts, eval-mode batch-norm, average pooling.

    The network is piecewise linear in each parameter, so the Hessian diagonal is the
    Gauss–Newton diagonal, which ``brute_force_ggn_diagonal`` forms from full Jacobians.
    """
    torch.manual_seed(5)
    model = resnet20(2, 3, batchnorm=batchnorm).double()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # running statistics away from 0 and 1
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    model.eval()
    inputs = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    expected = minsharp.brute_force_ggn_diagonal(model, inputs)
    assert_diagonals_close(minsharp.hessian_diagonal(model, inputs), expected, 1e-9, "diagonal")
    assert_traces_close(minsharp.hessian_trace(model, inputs), traces_of(expected), 1e-9, "trace")

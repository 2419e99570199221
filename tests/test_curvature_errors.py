"""Bad input to the curvature engine: a clear minsharp error, and the model handed back as given.

Every rejection is pinned with ``pytest.raises(..., match=...)`` on a distinctive part of the
message, for both ``hessian_diagonal`` and ``hessian_trace``, and followed by a check that the
model is untouched: same parameter and buffer values, same training flag on every module, the
``.grad`` set beforehand still there, no hooks left behind, grad mode unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import minsharp
from minsharp import (
    DataError,
    MinsharpError,
    ModelError,
    NotPiecewiseLinearError,
    UnsupportedModuleError,
)
from minsharp.tensors import finite_flags

ENGINES = [minsharp.hessian_diagonal, minsharp.hessian_trace]
ENGINE_IDS = ["diagonal", "trace"]


# ---------------------------------------------------------------------------------------------
# "The model is untouched": snapshot before, compare after
# ---------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    state: dict[str, Tensor]
    parameters: dict[str, nn.Parameter]
    training: dict[str, bool]
    grads: dict[str, Tensor | None]
    requires_grad: dict[str, bool]
    hooks: dict[str, tuple[int, int, int]]
    grad_enabled: bool


def _hook_counts(module: nn.Module) -> tuple[int, int, int]:
    return (
        len(module._forward_hooks),
        len(module._forward_pre_hooks),
        len(module._backward_hooks),
    )


def prepare(model: nn.Module) -> Snapshot:
    """Give every parameter a known ``.grad`` (some None), then record the model's state."""
    for i, (_, parameter) in enumerate(model.named_parameters()):
        if i % 3 != 2:
            parameter.grad = torch.full_like(parameter, 0.25 * (i + 1))
    return Snapshot(
        state={name: value.detach().clone() for name, value in model.state_dict().items()},
        parameters=dict(model.named_parameters()),
        training={name: module.training for name, module in model.named_modules()},
        grads={
            name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()
        },
        requires_grad={name: p.requires_grad for name, p in model.named_parameters()},
        hooks={name: _hook_counts(module) for name, module in model.named_modules()},
        grad_enabled=torch.is_grad_enabled(),
    )


def assert_untouched(model: nn.Module, before: Snapshot) -> None:
    state = model.state_dict()
    assert state.keys() == before.state.keys()
    for name, value in before.state.items():
        torch.testing.assert_close(
            state[name], value, rtol=0, atol=0, equal_nan=True, msg=f"{name} changed"
        )
    parameters = dict(model.named_parameters())
    assert parameters.keys() == before.parameters.keys()
    for name, parameter in parameters.items():
        assert parameter is before.parameters[name], f"{name} was replaced"
        assert parameter.is_leaf, f"{name} is no longer a leaf"
        assert parameter.requires_grad == before.requires_grad[name], f"{name} requires_grad"
        expected = before.grads[name]
        if expected is None:
            assert parameter.grad is None, f"{name}.grad was set"
        else:
            assert parameter.grad is not None, f"{name}.grad was cleared"
            assert torch.equal(parameter.grad, expected), f"{name}.grad changed"
    for name, module in model.named_modules():
        assert module.training == before.training[name], f"training flag of {name!r} changed"
        assert _hook_counts(module) == before.hooks[name], f"hooks left on {name!r}"
    assert not nn.modules.module._global_forward_hooks, "global forward hooks left"
    assert torch.is_grad_enabled() == before.grad_enabled


def check_rejected(
    model: nn.Module,
    data: object,
    error: type[Exception],
    match: str,
    **kwargs: object,
) -> list[str]:
    """Both engines raise ``error`` matching ``match``; the model is untouched each time."""
    messages = []
    before = prepare(model)
    for engine in ENGINES:
        with pytest.raises(error, match=match) as raised:
            engine(model, data, **kwargs)
        assert_untouched(model, before)
        messages.append(str(raised.value))
    return messages


def _X(*shape: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def _seeded_model(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().double()


# ---------------------------------------------------------------------------------------------
# Networks that are not piecewise linear in some parameters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "middle",
    [nn.Tanh, nn.GELU, nn.Sigmoid, lambda: nn.LayerNorm(4, elementwise_affine=False)],
    ids=["tanh", "gelu", "sigmoid", "layernorm"],
)
def test_smooth_network_is_not_piecewise_linear(middle: Callable[[], nn.Module]) -> None:
    model = _seeded_model(lambda: nn.Sequential(nn.Linear(3, 4), middle(), nn.Linear(4, 3)))
    model.eval()
    messages = check_rejected(
        model, 2 * _X(6, 3), NotPiecewiseLinearError, r"not piecewise linear[\s\S]*0\.weight"
    )
    for message in messages:
        assert "curvature='ggn'" in message  # the remedy
        # The last layer enters the logits linearly: it must not be blamed.
        assert "2.weight" not in message
        assert "2.bias" not in message
    # The same network is accepted for the generalized Gauss–Newton matrix.
    before = prepare(model)
    assert minsharp.hessian_trace(model, 2 * _X(6, 3), curvature="ggn").curvature == "ggn"
    assert_untouched(model, before)


def test_not_piecewise_linear_error_is_a_model_error() -> None:
    assert issubclass(NotPiecewiseLinearError, ModelError)
    assert issubclass(UnsupportedModuleError, ModelError)
    assert issubclass(ModelError, MinsharpError)
    assert issubclass(DataError, MinsharpError)
    assert issubclass(MinsharpError, ValueError)


# ---------------------------------------------------------------------------------------------
# Trainable parameters in modules without a rule
# ---------------------------------------------------------------------------------------------


class _SubclassedLinear(nn.Linear):
    pass


@pytest.mark.parametrize(
    ("build", "inputs"),
    [
        (
            lambda: nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 3)),
            torch.tensor([[1, 2], [3, 4], [5, 9]]),
        ),
        (lambda: nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 3)), _X(5, 3)),
        (lambda: nn.Sequential(_SubclassedLinear(3, 4), nn.ReLU(), nn.Linear(4, 3)), _X(5, 3)),
    ],
    ids=["embedding", "prelu", "linear-subclass"],
)
def test_modules_without_a_fast_rule_are_measured_and_left_untouched(
    build: Callable[[], nn.Module], inputs: Tensor
) -> None:
    """Once refused (no rule), now measured: the generic rule, or a subclass's fast rule."""
    model = _seeded_model(build)
    before = prepare(model)
    for engine in ENGINES:
        found = engine(model, inputs)
        assert set(found) == {name for name, p in model.named_parameters() if p.requires_grad}
        assert_untouched(model, before)


def test_layernorm_after_a_layer_is_refused_for_the_hessian_only() -> None:
    model = _seeded_model(lambda: nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 3)))
    check_rejected(model, _X(5, 3), NotPiecewiseLinearError, r"0\.weight in 0 \(Linear\)")
    assert set(minsharp.hessian_trace(model, _X(5, 3), curvature="ggn")) >= {"1.weight", "1.bias"}


def test_batchnorm_without_running_statistics_is_refused() -> None:
    model = _seeded_model(
        lambda: nn.Sequential(
            nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 3)
        ).eval()
    )
    check_rejected(model, _X(5, 3), ModelError, "without running statistics")


def test_frozen_unsupported_modules_are_fine() -> None:
    """The remedy the message gives works: freeze them, measure the rest."""
    model = _seeded_model(
        lambda: nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 3))
    ).eval()
    model[1].requires_grad_(False)
    inputs = _X(5, 3)
    before = prepare(model)
    traces = minsharp.hessian_trace(model, inputs)
    assert set(traces) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert_untouched(model, before)


# ---------------------------------------------------------------------------------------------
# Bad data
# ---------------------------------------------------------------------------------------------


def _mlp() -> nn.Module:
    return _seeded_model(lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3)))


@pytest.mark.parametrize(
    "data",
    [
        torch.empty(0, 3, dtype=torch.float64),
        (torch.empty(0, 3), torch.empty(0, dtype=torch.long)),
        [],
        [torch.empty(0, 3)],
        DataLoader(TensorDataset(torch.empty(0, 3), torch.empty(0, dtype=torch.long))),
    ],
    ids=["tensor-0-rows", "tuple-0-rows", "empty-list", "list-of-empty", "empty-dataloader"],
)
def test_empty_data(data: object) -> None:
    check_rejected(_mlp(), data, DataError, "holds no examples")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs(bad: float) -> None:
    inputs = _X(5, 3)
    inputs[3, 1] = bad
    check_rejected(_mlp(), inputs, DataError, r"batch 0 contains NaN or infinite inputs")
    # In a later batch too, after the first has been measured.
    check_rejected(_mlp(), [_X(4, 3), inputs], DataError, r"batch 1 contains NaN or infinite")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"x": _X(3, 3)}, r"got a dict; expected a tensor X"),
        ("inputs", r"got a str; expected a tensor X"),
        (42, r"got a int; expected a tensor X"),
        ([[1.0, 2.0, 3.0]], r"batch 0 is a list"),
        ([_X(2, 3), "oops"], r"batch 1 is a str"),
        (torch.tensor(1.0), r"0-d tensor"),
    ],
    ids=["dict", "str", "int", "list-of-lists", "bad-second-batch", "0-d"],
)
def test_malformed_data(data: object, match: str) -> None:
    check_rejected(_mlp(), data, DataError, match)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, "8"])
def test_bad_batch_size(batch_size: object) -> None:
    check_rejected(
        _mlp(), _X(5, 3), DataError, "batch_size must be a positive integer", batch_size=batch_size
    )


def test_unknown_curvature() -> None:
    match = r"curvature must be 'hessian' or 'ggn'; got 'foo'"
    check_rejected(_mlp(), _X(5, 3), MinsharpError, match, curvature="foo")


# ---------------------------------------------------------------------------------------------
# Bad models
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "index", "value"),
    [("0.weight", (1, 2), float("nan")), ("2.bias", (1,), float("inf"))],
)
def test_non_finite_parameters_are_named(name: str, index: tuple[int, ...], value: float) -> None:
    model = _mlp()
    with torch.no_grad():
        dict(model.named_parameters())[name][index] = value
    check_rejected(
        model, _X(5, 3), ModelError, rf"non-finite \(NaN or inf\)[^\n]*{re.escape(name)}"
    )


def test_finite_flags_survive_sums_past_float32_range() -> None:
    # The one-round-trip check casts each sum to float32; a finite float64 tensor whose sum
    # overflows there must still count as finite, and each non-finite one be found.
    huge = torch.full((3,), 1e300, dtype=torch.float64)
    bad = torch.tensor([1.0, float("nan")], dtype=torch.float64)
    assert finite_flags([huge, torch.ones(2, dtype=torch.float64)]) == [True, True]
    assert finite_flags([torch.ones(2, dtype=torch.float64), bad, huge]) == [True, False, True]
    assert finite_flags([torch.ones(2), torch.tensor([float("inf")])]) == [True, False]


def test_wrong_input_shape_is_reported() -> None:
    model = _mlp()
    check_rejected(model, _X(5, 4), ModelError, r"input batch of shape \(5, 4\)")
    # A bad later batch fails inside the measured pass: hooks must still come off.
    check_rejected(model, [_X(5, 3), _X(2, 4)], ModelError, r"input batch of shape \(2, 4\)")


class _FoldsTheBatch(nn.Module):
    """Moves the sequence axis into the batch axis before its Linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.reshape(-1, 3)).reshape(x.shape[0], -1)


def test_layer_input_without_leading_example_axis() -> None:
    check_rejected(
        _seeded_model(_FoldsTheBatch), _X(4, 2, 3), ModelError, r"first axis is not the batch"
    )


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc(torch.relu(self.fc(x)))))


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


class _AlsoFunctional(nn.Module):
    """Calls its Linear module and also uses the weight through F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc(x) + F.linear(x, self.fc.weight)))


class _OnlyFunctional(nn.Module):
    """Never calls its Linear module: the weight is used through F.linear only."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(F.linear(x, self.fc.weight, self.fc.bias)))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (_Twice, r"module fc ran twice|used more than once[^\n]*fc\.weight"),
        (_Tied, r"b\.weight is the same tensor as a\.weight \(tied weights\)"),
        (_AlsoFunctional, r"fc\.weight"),
        (_OnlyFunctional, r"fc\.weight"),
    ],
    ids=["module-called-twice", "tied-parameter", "module-and-functional", "functional-only"],
)
def test_weight_sharing_is_rejected(build: Callable[[], nn.Module], match: str) -> None:
    model = _seeded_model(build)
    messages = check_rejected(model, _X(5, 3), ModelError, match)
    for message in messages:
        assert "weight sharing" in message or "tied weights" in message


@pytest.mark.parametrize(
    ("build", "module"),
    [
        (lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)), "BatchNorm1d"),
        (lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 3)), "Dropout"),
        (
            lambda: nn.Sequential(
                nn.Conv2d(1, 2, 2), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3)
            ),
            "BatchNorm2d",
        ),
    ],
    ids=["batchnorm", "dropout", "batchnorm2d"],
)
def test_training_mode_is_rejected(build: Callable[[], nn.Module], module: str) -> None:
    model = _seeded_model(build).train()
    for submodule in model.modules():
        if isinstance(submodule, nn.modules.batchnorm._BatchNorm):
            submodule.requires_grad_(False)
    inputs = _X(5, 1, 3, 3) if module == "BatchNorm2d" else _X(5, 3)
    check_rejected(model, inputs, ModelError, rf"1 \({module}\)[\s\S]*Call model\.eval\(\)")
    # The remedy works, and the model stays in eval mode afterwards.
    model.eval()
    before = prepare(model)
    minsharp.hessian_diagonal(model, inputs)
    assert_untouched(model, before)


class _Reshaped(nn.Module):
    def __init__(self, outputs: int, reshape: Callable[[Tensor], object]) -> None:
        super().__init__()
        self.fc = nn.Linear(3, outputs)
        self.reshape = reshape

    def forward(self, x: Tensor) -> object:
        return self.reshape(self.fc(x))


@pytest.mark.parametrize(
    ("outputs", "reshape", "match"),
    [
        (3, lambda z: z.unsqueeze(-1), r"logits of shape \(N, K\)[^\n]*got \(5, 3, 1\)"),
        (3, lambda z: z.sum(1), r"logits of shape \(N, K\)[^\n]*got \(5,\)"),
        (1, lambda z: z, r"K ≥ 2 classes; got \(5, 1\)"),
        (3, lambda z: (z, z), r"logits of shape \(N, K\)[^\n]*got tuple"),
        (3, lambda z: z[:2], r"returned 2 rows of logits for 5 examples"),
    ],
    ids=["3-d", "1-d", "one-class", "tuple", "too-few-rows"],
)
def test_bad_model_output(outputs: int, reshape: Callable[[Tensor], object], match: str) -> None:
    model = _seeded_model(lambda: _Reshaped(outputs, reshape))
    check_rejected(model, _X(5, 3), ModelError, match)


def test_non_finite_logits() -> None:
    model = _mlp()
    with torch.no_grad():
        model[2].weight.fill_(1e308)
    check_rejected(model, 1e3 * _X(5, 3), ModelError, r"non-finite logits")


def test_not_a_module_and_nothing_to_measure() -> None:
    with pytest.raises(ModelError, match=r"must be a torch\.nn\.Module; got a function"):
        minsharp.hessian_trace(lambda x: x, _X(5, 3))
    model = _mlp().requires_grad_(False)
    check_rejected(model, _X(5, 3), ModelError, r"no trainable parameters")


# ---------------------------------------------------------------------------------------------
# Accepted inputs that must still leave the model as it was
# ---------------------------------------------------------------------------------------------


class _Counter(nn.Module):
    """Counts its calls in buffers: once in place, once by reassignment."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.tensor(5.0))
        self.register_buffer("history", torch.zeros(3))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.history = self.history + x.detach().abs().mean()
        return x


def test_buffers_updated_in_forward_are_restored() -> None:
    model = _seeded_model(
        lambda: nn.Sequential(nn.Linear(3, 4), _Counter(), nn.ReLU(), nn.Linear(4, 3))
    )
    inputs = _X(6, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    expected = minsharp.brute_force_hessian_diagonal(model, inputs, labels)
    with torch.no_grad():
        model[1].calls.fill_(5.0)
        model[1].history.zero_()
    before = prepare(model)
    diagonal = minsharp.hessian_diagonal(model, inputs, batch_size=2)
    assert_untouched(model, before)
    assert model[1].calls.item() == 5.0
    assert torch.equal(model[1].history, torch.zeros(3))
    for name, value in expected.items():
        torch.testing.assert_close(diagonal[name], value, rtol=1e-9, atol=1e-15)
    minsharp.hessian_trace(model, inputs)
    assert_untouched(model, before)


def test_successful_call_hands_model_back() -> None:
    """Training flags (no mode-dependent modules: train mode is fine), grads, user hooks."""
    model = _mlp().train()
    calls: list[int] = []
    handle = model[0].register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        before = prepare(model)
        minsharp.hessian_diagonal(model, _X(5, 3))
        minsharp.hessian_trace(model, _X(5, 3), progress=True)
        assert_untouched(model, before)
        assert calls, "the user's own hook was removed or skipped"
        calls.clear()
        model(_X(2, 3))
        assert calls == [1]
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("model_dtype", "data_dtype"),
    [
        (torch.float64, torch.float64),
        (torch.float64, torch.float32),
        (torch.float32, torch.float64),
        (torch.float32, torch.float32),
    ],
)
def test_results_in_the_model_dtype(model_dtype: torch.dtype, data_dtype: torch.dtype) -> None:
    model = _mlp().to(model_dtype)
    inputs = _X(5, 3).to(data_dtype)
    labels = torch.tensor([0, 1, 2, 0, 1])
    before = prepare(model)
    diagonal = minsharp.hessian_diagonal(model, inputs)
    assert_untouched(model, before)
    assert all(value.dtype == model_dtype for value in diagonal.values())
    expected = minsharp.brute_force_hessian_diagonal(model, inputs.to(model_dtype), labels)
    tolerance = 1e-9 if model_dtype == torch.float64 else 1e-5
    for name, value in expected.items():
        scale = value.abs().max().item()
        torch.testing.assert_close(diagonal[name], value, rtol=0, atol=tolerance * scale)
    traces = minsharp.hessian_trace(model, inputs)
    assert all(isinstance(value, float) for value in traces.values())


def test_works_inside_no_grad() -> None:
    model = _mlp()
    inputs = _X(5, 3)
    expected = minsharp.hessian_diagonal(model, inputs)
    expected_trace = minsharp.hessian_trace(model, inputs).total
    with torch.no_grad():
        before = prepare(model)
        diagonal = minsharp.hessian_diagonal(model, inputs)
        total = minsharp.hessian_trace(model, inputs).total
        assert not torch.is_grad_enabled()
        assert_untouched(model, before)
    for name, value in expected.items():
        torch.testing.assert_close(diagonal[name], value, rtol=1e-12, atol=0)
    assert total == pytest.approx(expected_trace, rel=1e-12)


def test_inside_inference_mode_works_or_explains() -> None:
    """Under ``torch.inference_mode()`` autograd cannot run: work anyway, or say so clearly."""
    model = _mlp()
    inputs = _X(5, 3)
    expected = minsharp.hessian_trace(model, inputs).total
    before = prepare(model)
    with torch.inference_mode():
        try:
            total = minsharp.hessian_trace(model, inputs).total
        except MinsharpError as error:
            assert "inference" in str(error)
        else:
            assert total == pytest.approx(expected, rel=1e-12)
    assert_untouched(model, before)

"""The shortcut that skips the probe for Sequentials that are piecewise linear by construction."""

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_internals

import minsharp
from minsharp.curvature.guard import known_piecewise_linear
from minsharp.models import resnet20


def _chain() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Sequential(nn.Linear(8, 3))
    )


class _Subclass(nn.Sequential):
    def forward(self, x):
        return torch.tanh(super().forward(x))


def test_plain_sequential_of_known_modules_is_recognised():
    assert known_piecewise_linear(_chain())


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)),
        _Subclass(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        nn.Sequential(*[nn.Linear(3, 3)] * 2),  # one instance used twice
        nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 2)),
    ],
    ids=["smooth activation", "subclass with own forward", "repeated instance", "unknown module"],
)
def test_anything_else_is_not(model):
    assert not known_piecewise_linear(model)


def test_a_hook_that_bends_the_output_sends_the_model_to_the_probe():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    model[0].register_forward_hook(lambda module, args, output: torch.tanh(output))
    assert not known_piecewise_linear(model)
    with pytest.raises(minsharp.NotPiecewiseLinearError, match=r"0\.weight"):
        minsharp.hessian_trace(model, torch.randn(5, 3, dtype=torch.float64))


def test_a_forward_set_on_an_instance_sends_the_model_to_the_probe():
    # The module's class says ReLU; its own forward says tanh. Judged by its class the model
    # skipped the probe and got a silently wrong trace (1.33 against the Hessian's 1.53).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    model[1].forward = torch.tanh
    assert not known_piecewise_linear(model)
    with pytest.raises(minsharp.NotPiecewiseLinearError, match=r"0\.weight"):
        minsharp.hessian_trace(model, torch.randn(6, 4, dtype=torch.float64))


def test_a_global_hook_disables_the_shortcut():
    handle = module_internals.register_module_forward_hook(lambda module, args, output: None)
    try:
        assert not known_piecewise_linear(_chain())
    finally:
        handle.remove()
    assert known_piecewise_linear(_chain())


def test_a_repeated_instance_is_refused_as_weight_sharing():
    layer = nn.Linear(3, 3)
    model = nn.Sequential(layer, nn.ReLU(), layer, nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(minsharp.ModelError, match=r"ran twice|more than once"):
        minsharp.hessian_trace(model, torch.randn(4, 3))


class _Residual(nn.Module):
    """A residual block whose forward joins known modules; ``mode`` bends it when asked."""

    def __init__(self, mode: str = "plain") -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)
        self.mode = mode

    def forward(self, x):
        y = torch.relu(self.fc(x)) + x
        if self.mode == "product":
            y = y * y
        elif self.mode == "functional":
            y = y + torch.nn.functional.linear(x, self.fc.weight)
        elif self.mode == "smooth":
            y = torch.tanh(y)
        return self.head(y.flatten(1))


def test_a_traced_forward_of_known_pieces_is_recognised():
    """torch.fx sees a ResNet's residual sums, ReLUs and flattening: no probe needed."""
    assert known_piecewise_linear(_Residual())
    assert known_piecewise_linear(resnet20(1, 3).eval())


@pytest.mark.parametrize("mode", ["product", "functional", "smooth"])
def test_a_traced_forward_with_anything_else_goes_to_the_probe(mode):
    torch.manual_seed(0)
    model = _Residual(mode).double()
    assert not known_piecewise_linear(model)
    inputs = torch.randn(5, 3, dtype=torch.float64)
    if mode == "functional":
        with pytest.raises(minsharp.ModelError, match="more than once"):
            minsharp.hessian_trace(model, inputs)
    else:
        with pytest.raises(minsharp.NotPiecewiseLinearError, match=r"fc\.weight"):
            minsharp.hessian_trace(model, inputs)


def test_a_forward_fx_cannot_trace_goes_to_the_probe():
    class Branching(_Residual):
        def forward(self, x):
            return self.head(x) if x.sum() > 0 else self.head(-x)  # data-dependent

    assert not known_piecewise_linear(Branching())

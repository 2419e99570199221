"""The shortcut that skips the probe for Sequentials that are piecewise linear by construction."""

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_internals

import minsharp
from minsharp.curvature.guard import known_piecewise_linear


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

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.chains import assert_untouched, chain_case, random_alphas, snapshot
from torch import nn

import minsharp
from minsharp.symmetry.layerwise import chain_layers


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_rescale_keeps_function_and_scales_as_stated(seed):
    model, inputs = chain_case(seed)
    before = snapshot(model)
    order = chain_layers(model, inputs)
    alphas = random_alphas(len(order), seed)
    twin = minsharp.rescale(model, alphas, inputs)
    assert_untouched(model, before)
    torch.testing.assert_close(twin(inputs), model(inputs), rtol=1e-10, atol=1e-10)
    original, scaled = dict(model.named_modules()), dict(twin.named_modules())
    cumulative = 1.0
    for name, alpha in zip(order, alphas, strict=True):
        cumulative *= alpha
        torch.testing.assert_close(scaled[name].weight, alpha * original[name].weight)
        if original[name].bias is not None:
            torch.testing.assert_close(scaled[name].bias, cumulative * original[name].bias)


class Reversed(nn.Module):
    """Registers its layers in the opposite order to the one forward uses."""

    def __init__(self):
        super().__init__()
        self.last = nn.Linear(4, 2)
        self.first = nn.Linear(3, 4)

    def forward(self, x):
        return self.last(torch.relu(self.first(x)))


def test_chain_layers_follow_forward_order_not_registration():
    assert chain_layers(Reversed(), torch.randn(2, 3)) == ["first", "last"]


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(h + torch.relu(self.b(h)))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(torch.relu(self.a(x)))))


def _with_statistics(norm):
    """A chain with eval-mode batch-norm whose running mean is not zero (then it is affine)."""
    norm.running_mean.normal_()
    return nn.Sequential(nn.Linear(3, 4), norm, nn.ReLU(), nn.Linear(4, 2)).eval()


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (Residual(), "residual or parallel branches"),
        (nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), "not a chain"),
        (_with_statistics(nn.BatchNorm1d(4)), r"outside the chain.*BatchNorm1d"),
        (Twice(), "called twice"),
    ],
)
def test_non_chain_models_are_explained(model, match):
    model = model.double()
    inputs = torch.randn(5, 3, dtype=torch.float64)
    before = snapshot(model)
    num_layers = sum(isinstance(m, nn.Linear) for m in model.modules())
    with pytest.raises(minsharp.NotAChainError, match=match):
        minsharp.rescale(model, random_alphas(num_layers, 0), inputs)
    assert_untouched(model, before)


@pytest.mark.parametrize(
    ("alphas", "match"),
    [
        ([2.0, 2.0], "product of alphas must be 1"),
        ([1.0], "one factor per Linear/Conv layer"),
        ([-1.0, -1.0], "finite and positive"),
        ([float("nan"), 1.0], "finite and positive"),
        (["a", 1.0], "sequence of numbers"),
    ],
)
def test_bad_alphas(alphas, match):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(minsharp.MinsharpError, match=match):
        minsharp.rescale(model, alphas, torch.randn(2, 3))

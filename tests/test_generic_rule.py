"""The generic exact rule (theory §1a): modules without a fast rule, and layers as users write them.

Every value is compared in float64 with the brute-force GGN diagonal of
``minsharp.curvature.brute_force_ggn_diagonal`` (full per-example Jacobians), and, where the
network is piecewise linear in the parameter, with the brute-force Hessian diagonal.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from tests.networks import embedding_classifier
from torch import Tensor, nn
from torch.nn.utils import parametrizations

import minsharp
from minsharp.curvature import brute_force_ggn_diagonal, brute_force_hessian_diagonal
from minsharp.curvature.generic import GenericLayer
from minsharp.curvature.layers import Layer, find_layers
from minsharp.curvature.rules import fast_rule
from minsharp.errors import ModelError, NotPiecewiseLinearError


def _x(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _model(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build().double().eval()


def _assert_matches(found: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert set(found) == set(expected)
    for name, value in expected.items():
        assert found[name].shape == value.shape, name
        torch.testing.assert_close(found[name], value, rtol=1e-9, atol=1e-12, msg=name)


class _Scaled(nn.Module):
    """A module holding a parameter itself, used twice in its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor([1.5, -0.5, 0.7]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain + self.gain.square()


class _TanhLinear(nn.Linear):
    """A Linear subclass with its own forward: the generic rule, not the Linear rule."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(super().forward(x))


class _NamedLinear(nn.Linear):
    """A Linear subclass that keeps Linear's forward: the fast rule."""


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.Identity(), nn.Sequential(nn.ReLU()))

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)


SMOOTH_CASES = {
    "layernorm": lambda: nn.Sequential(
        nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 3)
    ),
    "own parameter": lambda: nn.Sequential(nn.Linear(3, 3), _Scaled(), nn.Linear(3, 2)),
    "subclass with own forward": lambda: nn.Sequential(_TanhLinear(3, 4), nn.Linear(4, 3)),
    "weight norm": lambda: nn.Sequential(
        parametrizations.weight_norm(nn.Linear(3, 4)), nn.ReLU(), nn.Linear(4, 3)
    ),
    "spectral norm": lambda: nn.Sequential(
        parametrizations.spectral_norm(nn.Linear(3, 4)), nn.ReLU(), nn.Linear(4, 3)
    ),
    "prelu": lambda: nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 3)),
}


@pytest.mark.parametrize("name", sorted(SMOOTH_CASES))
@pytest.mark.parametrize("diagonal", [True, False])
def test_ggn_of_modules_without_a_fast_rule_matches_brute_force(name: str, diagonal: bool) -> None:
    model = _model(SMOOTH_CASES[name])
    inputs = _x(6, 3)
    expected = brute_force_ggn_diagonal(model, inputs)
    if diagonal:
        found = minsharp.hessian_diagonal(model, inputs, curvature="ggn")
        assert found.curvature == "ggn"
        _assert_matches(dict(found), expected)
    else:
        found_trace = minsharp.hessian_trace(model, inputs, curvature="ggn")
        for parameter, value in expected.items():
            assert found_trace[parameter] == pytest.approx(float(value.sum()), rel=1e-9, abs=1e-14)


def test_layernorm_and_embedding_ggn_diagonals_match_brute_force() -> None:
    model, tokens, _ = embedding_classifier(3)
    ggn = minsharp.hessian_diagonal(model, tokens, curvature="ggn")
    assert ggn.curvature == "ggn"
    _assert_matches(dict(ggn), brute_force_ggn_diagonal(model, tokens))
    assert float(ggn["embedding.weight"].abs().sum()) > 0  # rows of used tokens are measured
    with pytest.raises(NotPiecewiseLinearError, match=r"embedding\.weight in embedding"):
        minsharp.hessian_diagonal(model, tokens)  # LayerNorm after the embedding curves


@pytest.mark.parametrize("norm", [True, False])
def test_hessian_of_generic_parameters_where_the_network_is_piecewise_linear(norm: bool) -> None:
    """In LayerNorm's γ, β and in an embedding followed by ReLU only, Hessian = GGN, exact."""
    model, tokens, labels = embedding_classifier(4, norm=norm)
    if norm:
        model.embedding.requires_grad_(False)
    hessian = minsharp.hessian_diagonal(model, tokens)
    assert hessian.curvature == "hessian"
    _assert_matches(dict(hessian), brute_force_hessian_diagonal(model, tokens, labels))
    assert ("norm.weight" in hessian) is norm and ("embedding.weight" in hessian) is not norm


def test_hessian_is_refused_where_the_network_curves_in_a_generic_parameter() -> None:
    model = _model(SMOOTH_CASES["own parameter"])
    with pytest.raises(NotPiecewiseLinearError, match=r"1\.gain in 1 \(_Scaled\)"):
        minsharp.hessian_trace(model, _x(6, 3))


def test_subclasses_keeping_the_forward_keep_the_fast_rule() -> None:
    model = _model(lambda: nn.Sequential(_NamedLinear(3, 4), nn.ReLU(), _Block(), nn.Linear(4, 3)))
    assert fast_rule(model[0]) is fast_rule(nn.Linear(1, 1))
    assert fast_rule(_TanhLinear(1, 1)) is None
    assert fast_rule(parametrizations.weight_norm(nn.Linear(2, 2))) is None
    layers = find_layers(model)
    assert all(isinstance(layer, Layer) for layer in layers)
    assert [layer.name for layer in layers] == ["0", "2.inner.0", "3"]
    inputs = _x(5, 3)
    labels = torch.tensor([0, 1, 2, 0, 1])
    _assert_matches(
        dict(minsharp.hessian_diagonal(model, inputs)),
        brute_force_hessian_diagonal(model, inputs, labels),
    )


def test_attention_is_one_generic_layer_with_its_output_projection() -> None:
    """``nn.MultiheadAttention`` uses ``out_proj``'s parameters directly: they go with it."""
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    layers = {found.name: found for found in find_layers(layer.eval())}
    attention = layers["self_attn"]
    assert isinstance(attention, GenericLayer)
    assert set(attention.parameter_names) == {
        "self_attn.in_proj_weight",
        "self_attn.in_proj_bias",
        "self_attn.out_proj.weight",
        "self_attn.out_proj.bias",
    }
    assert isinstance(layers["linear1"], Layer) and isinstance(layers["norm1"], GenericLayer)


def test_parametrized_layers_are_measured_on_their_original_parameters() -> None:
    model = _model(SMOOTH_CASES["weight norm"])
    found = minsharp.hessian_trace(model, _x(6, 3), curvature="ggn")
    assert {"0.parametrizations.weight.original0", "0.parametrizations.weight.original1"} <= set(
        found
    )


def test_a_module_coupling_the_examples_is_refused() -> None:
    class BatchCentred(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3))

        def forward(self, x: Tensor) -> Tensor:
            return (x - x.mean(0)) * self.gain

    model = _model(lambda: nn.Sequential(nn.Linear(3, 3), BatchCentred(), nn.Linear(3, 2)))
    with pytest.raises(ModelError, match=r"module 1 \(BatchCentred\).*examples are coupled"):
        minsharp.hessian_trace(model, _x(6, 3), curvature="ggn")


def test_a_generic_parameter_used_outside_its_module_is_refused() -> None:
    class Leaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(3)
            self.head = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.norm(x) + self.norm.weight)

    with pytest.raises(ModelError, match=r"outside their module's forward: norm\.weight"):
        minsharp.hessian_trace(_model(Leaky), _x(6, 3), curvature="ggn")


def test_a_root_module_holding_parameters_is_one_generic_layer() -> None:
    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(2, 3))
            self.shift = nn.Parameter(torch.randn(2))

        def forward(self, x: Tensor) -> Tensor:
            return torch.tanh(x @ self.weight.T) + self.shift

    model = _model(Root)
    inputs = _x(5, 3)
    _assert_matches(
        dict(minsharp.hessian_diagonal(model, inputs, curvature="ggn")),
        brute_force_ggn_diagonal(model, inputs),
    )


class _TimeMajorAttention(nn.Module):
    """``nn.MultiheadAttention`` with its default ``batch_first=False``: examples on axis 1."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        sequence = x.transpose(0, 1)  # (S, N, E)
        mixed, _ = self.attention(sequence, sequence, sequence)
        return self.head(mixed.mean(0))


def test_attention_with_examples_on_the_second_axis_matches_brute_force() -> None:
    model = _model(_TimeMajorAttention)
    inputs = _x(5, 3, 4)
    _assert_matches(
        dict(minsharp.hessian_diagonal(model, inputs, curvature="ggn")),
        brute_force_ggn_diagonal(model, inputs),
    )


def test_spectral_norm_in_training_mode_is_refused_and_weight_norm_is_not() -> None:
    """Spectral norm updates its power iteration in every training-mode forward."""
    spectral = SMOOTH_CASES["spectral norm"]()
    with pytest.raises(ModelError, match=r"training mode.*0 \(ParametrizedLinear\)"):
        minsharp.hessian_trace(spectral.double().train(), _x(6, 3), curvature="ggn")
    weight_norm = SMOOTH_CASES["weight norm"]().double().train()
    inputs = _x(6, 3)
    found = minsharp.hessian_trace(weight_norm, inputs, curvature="ggn")
    expected = brute_force_ggn_diagonal(weight_norm.eval(), inputs)
    assert found.total == pytest.approx(sum(float(v.sum()) for v in expected.values()), rel=1e-9)

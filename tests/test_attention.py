"""Attention networks (issue 15): every measure works on an ``nn.TransformerEncoderLayer``.

On CPU the fused attention kernel has no double backward; the Hessian-vector product and
the guard's probe run on the math kernel, the generic rule measures attention, LayerNorm and
the encoder's other modules exactly. References are computed independently here, in float64:
the dense Hessian by ``torch.autograd.functional.hessian`` and the GGN trace from
per-example Jacobians, both by plain autograd, not ``torch.func``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from tests.networks import transformer_classifier
from torch import Tensor, nn
from torch.autograd.functional import hessian
from torch.autograd.functional import jacobian as jacobian_of
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import minsharp
from minsharp import objective
from minsharp.curvature import brute_force_hessian_diagonal, engine
from minsharp.errors import MinsharpError, NoSecondDerivativeError, NotPiecewiseLinearError


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _flat_function(model: nn.Module, inputs: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``θ ↦ logits`` on a flat vector of the trainable parameters (math attention kernel)."""
    named = _trainable(model)

    def logits(flat: Tensor) -> Tensor:
        values, offset = {}, 0
        for name, p in named.items():
            values[name] = flat[offset : offset + p.numel()].reshape(p.shape)
            offset += p.numel()
        return functional_call(model, values, (inputs,))

    return logits, torch.cat([p.reshape(-1) for p in named.values()])


def _dense_hessian(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    logits, flat = _flat_function(model, inputs)
    # Reverse over reverse: ``torch.func.hessian`` (forward over reverse) takes the encoder
    # layer's inference fast path, its parameters not requiring grad there, and is wrong.
    with sdpa_kernel(SDPBackend.MATH):
        return hessian(lambda theta: F.cross_entropy(logits(theta), labels), flat)


def _brute_force_ggn_trace(model: nn.Module, inputs: Tensor) -> float:
    """``(1/N) Σ_n Tr(J_nᵀ (diag p_n − p_n p_nᵀ) J_n)``, ``J_n`` by plain autograd."""
    total = 0.0
    for example in inputs:
        logits, flat = _flat_function(model, example.unsqueeze(0))
        with sdpa_kernel(SDPBackend.MATH):
            jacobian = jacobian_of(logits, flat)[0]  # (K, |θ|)
            p = logits(flat)[0].softmax(0)
        curvature = torch.diag(p) - torch.outer(p, p)
        total += float(torch.trace(jacobian.T @ curvature @ jacobian))
    return total / inputs.shape[0]


def test_top_eigenvalue_matches_the_dense_hessian() -> None:
    model, inputs, labels = transformer_classifier(0)
    expected = float(torch.linalg.eigvalsh(_dense_hessian(model, inputs, labels))[-1])
    result = minsharp.measure(
        "top_eigenvalue", model, (inputs, labels), tolerance=1e-10, max_iterations=200
    )
    assert result.value == pytest.approx(expected, rel=1e-5)


def test_hutchinson_trace_and_quotient_flatness_run() -> None:
    model, inputs, labels = transformer_classifier(1)
    trace = minsharp.measure("hutchinson_trace", model, (inputs, labels), samples=4)
    dense = _dense_hessian(model, inputs, labels)
    # The estimate is unbiased; with 4 probes it is within a few standard errors of Tr H.
    assert abs(trace.value - float(dense.trace())) < 6 * trace.details["standard_error"] + 1e-9
    flatness = minsharp.measure("quotient_flatness", model, (inputs, labels), max_iterations=30)
    assert torch.isfinite(torch.tensor(flatness.value))


def test_ggn_trace_matches_brute_force() -> None:
    model, inputs, _ = transformer_classifier(2)
    found = minsharp.hessian_trace(model, inputs, curvature="ggn")
    assert found.curvature == "ggn"
    assert "encoder.self_attn.in_proj_weight" in found
    assert found.total == pytest.approx(_brute_force_ggn_trace(model, inputs), rel=1e-8)


def test_the_default_hessian_trace_is_refused() -> None:
    model, inputs, _ = transformer_classifier(3)
    with pytest.raises(NotPiecewiseLinearError, match=r"encoder\.self_attn\.in_proj_weight"):
        minsharp.hessian_trace(model, inputs)


def test_frozen_layernorm_and_attention_give_an_error_or_the_right_number() -> None:
    """The remaining parameters sit before a (frozen) LayerNorm: refused, or exact with GGN."""
    model, inputs, _ = transformer_classifier(4)
    model.encoder.norm1.requires_grad_(False)
    model.encoder.norm2.requires_grad_(False)
    model.encoder.self_attn.requires_grad_(False)
    with pytest.raises(NotPiecewiseLinearError, match=r"encoder\.linear1\.weight") as refused:
        minsharp.hessian_trace(model, inputs)
    assert isinstance(refused.value, MinsharpError)
    found = minsharp.hessian_trace(model, inputs, curvature="ggn")
    assert set(found) == {name for name, p in model.named_parameters() if p.requires_grad}
    assert found.total == pytest.approx(_brute_force_ggn_trace(model, inputs), rel=1e-8)


def test_without_the_math_kernel_the_raw_torch_error_becomes_a_minsharp_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fused kernel's missing double backward, as users met it, now says what to do."""
    model, inputs, labels = transformer_classifier(5)
    monkeypatch.setattr(objective, "math_attention", contextlib.nullcontext)
    monkeypatch.setattr(engine, "math_attention", contextlib.nullcontext)
    with pytest.raises(NoSecondDerivativeError, match="curvature='ggn'") as refused:
        minsharp.measure("top_eigenvalue", model, (inputs, labels))
    assert isinstance(refused.value.__cause__, RuntimeError)
    with pytest.raises(NoSecondDerivativeError, match="curvature='ggn'"):
        minsharp.hessian_trace(model, inputs)


def test_the_hessian_where_the_encoder_is_piecewise_linear_matches_brute_force() -> None:
    """The last LayerNorm's γ, β and the head enter the logits linearly: Hessian = GGN."""
    model, inputs, labels = transformer_classifier(6)
    model.encoder.requires_grad_(False)
    model.encoder.norm2.requires_grad_(True)
    found = minsharp.hessian_diagonal(model, inputs)
    assert found.curvature == "hessian"
    expected = brute_force_hessian_diagonal(model, inputs, labels)
    assert (
        set(found)
        == set(expected)
        == {"encoder.norm2.weight", "encoder.norm2.bias", "head.weight", "head.bias"}
    )
    for name, value in expected.items():
        torch.testing.assert_close(found[name], value, rtol=1e-9, atol=1e-12)


def test_the_hessian_trace_measure_takes_the_ggn_option() -> None:
    model, inputs, labels = transformer_classifier(6)
    result = minsharp.measure("hessian_trace", model, (inputs, labels), curvature="ggn")
    assert result.details["curvature"] == "ggn" and result.options["curvature"] == "ggn"
    assert result.value == pytest.approx(_brute_force_ggn_trace(model, inputs), rel=1e-8)
    with pytest.raises(NotPiecewiseLinearError):
        minsharp.measure("hessian_trace", model, (inputs, labels))


def test_neuron_minimum_sharpness_with_ggn_frees_the_feed_forward_units() -> None:
    from tests.group_networks import brute_diagonal, classes_of, scipy_minimum

    from minsharp.symmetry.graph import discover

    model, inputs, labels = transformer_classifier(7, examples=6)
    result = minsharp.measure(
        "minimum_sharpness", model, (inputs, labels), symmetry="neuron", curvature="ggn"
    )
    assert result.details["num_units"] == 16  # the encoder's feed-forward units, no others
    group = discover(model, inputs[:4])
    with sdpa_kernel(SDPBackend.MATH):
        diagonal = brute_diagonal(model, inputs, ggn=True)
    reference = scipy_minimum(diagonal, group.edges, classes_of(group))
    assert result.value == pytest.approx(reference, rel=1e-7)
    twin = result.rescaled(model)
    twin_trace = minsharp.hessian_trace(twin, inputs, curvature="ggn").total
    assert twin_trace == pytest.approx(result.value, rel=1e-8)
    assert result.value < minsharp.hessian_trace(model, inputs, curvature="ggn").total

"""The hand-written pull-back of Linear–ReLU chains (``minsharp.curvature.chain``).

It must give what the general autograd path gives, to rounding in float64, and what the
brute-force Hessian gives; take only the models it is written for; and size its batches as
the measured footprint would.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import minsharp
from minsharp import ModelError
from minsharp.curvature import budget, chain, engine, patches
from minsharp.curvature.layers import find_layers
from minsharp.curvature.recording import run_forward
from minsharp.curvature.reference import brute_force_hessian_diagonal


def _chain(seed: int, *, flatten: bool = False, classes: int = 3) -> tuple[nn.Module, torch.Tensor]:
    """A float64 chain of 2–4 Linear layers (random widths, biases, ReLUs), and inputs."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the layers' initial weights
    depth = int(torch.randint(2, 5, (), generator=generator))
    widths = [int(w) for w in torch.randint(2, 7, (depth,), generator=generator)] + [classes]
    modules: list[nn.Module] = [nn.Flatten()] if flatten else []
    for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        bias = bool(torch.rand((), generator=generator) < 0.7)
        modules.append(nn.Linear(width_in, width_out, bias=bias))
        if index < depth - 1:
            modules.append(nn.ReLU(inplace=bool(torch.rand((), generator=generator) < 0.5)))
    model = nn.Sequential(*modules).double().eval()
    shape = (9, 1, widths[0]) if flatten else (9, widths[0])
    return model, torch.randn(*shape, generator=generator, dtype=torch.float64)


def _general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "linear_relu_chain", lambda *arguments: None)


@pytest.fixture
def chain_batches(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per batch that went down the chain by hand."""
    taken: list[bool] = []
    by_hand = chain.LinearReluChain.batch_sums

    def counted(*arguments, **options):
        taken.append(True)
        return by_hand(*arguments, **options)

    monkeypatch.setattr(chain.LinearReluChain, "batch_sums", counted)
    return taken


@pytest.mark.parametrize("seed", range(12))
def test_chain_equals_the_general_path_and_brute_force(seed, monkeypatch, chain_batches):
    model, inputs = _chain(seed, flatten=seed % 3 == 0)
    fast_diagonal = minsharp.hessian_diagonal(model, inputs)
    fast_trace = minsharp.hessian_trace(model, inputs)
    assert len(chain_batches) == 2  # both calls went down the chain by hand
    labels = torch.zeros(inputs.shape[0], dtype=torch.long)  # the Hessian ignores labels
    brute = brute_force_hessian_diagonal(model, inputs, labels)
    _general_path(monkeypatch)
    slow_diagonal = minsharp.hessian_diagonal(model, inputs)
    slow_trace = minsharp.hessian_trace(model, inputs)
    for name, value in fast_diagonal.items():
        scale = max(brute[name].abs().max().item(), 1e-12)
        assert (value - slow_diagonal[name]).abs().max().item() <= 1e-13 * scale, name
        assert (value - brute[name]).abs().max().item() <= 1e-10 * scale, name
    for name, value in fast_trace.by_parameter.items():
        assert value == pytest.approx(slow_trace.by_parameter[name], rel=1e-13, abs=1e-15)


def test_dead_units_and_exact_zero_preactivations_match_autograd(monkeypatch, chain_batches):
    # A unit whose pre-activation is exactly 0 on every example: ReLU's derivative there is
    # 0 for autograd, and the mask 1[h > 0] must agree.
    model, inputs = _chain(3)
    with torch.no_grad():
        model[0].weight[0].zero_()
        if model[0].bias is not None:
            model[0].bias[0] = 0.0
    fast = minsharp.hessian_diagonal(model, inputs)
    assert chain_batches
    _general_path(monkeypatch)
    slow = minsharp.hessian_diagonal(model, inputs)
    for name, value in fast.items():
        torch.testing.assert_close(value, slow[name], rtol=1e-13, atol=1e-15)


def test_classes_in_several_chunks_give_the_same_sums(monkeypatch, chain_batches):
    model, inputs = _chain(5, classes=7)
    whole = minsharp.hessian_diagonal(model, inputs)
    chunks: list[int] = []
    produce = chain.chain_cotangents

    def counted(*arguments):
        for found in produce(*arguments):
            chunks.append(found[0].shape[0])
            yield found

    monkeypatch.setattr(chain, "chain_cotangents", counted)
    monkeypatch.setattr(chain, "CHUNK_ELEMENTS", inputs.shape[0] * 30)  # a few classes each
    chunked = minsharp.hessian_diagonal(model, inputs)
    assert len(chain_batches) == 2 and len(chunks) > 1 and sum(chunks) == 6  # K − 1 cotangents
    for name, value in whole.items():
        torch.testing.assert_close(value, chunked[name], rtol=1e-13, atol=1e-15)


def test_a_later_batch_of_the_wrong_width_is_refused(chain_batches):
    # The chain is recognised on the first batch; its forward by hand must refuse, as the
    # model itself would, a later batch whose rows do not fit the first Linear.
    model, inputs = _chain(2)
    batches = [inputs, torch.randn(4, inputs.shape[1] + 1, dtype=torch.float64)]
    with pytest.raises(ModelError, match=r"model forward failed on an input batch of shape"):
        minsharp.hessian_diagonal(model, batches)
    assert chain_batches


def test_inputs_that_require_grad_give_the_general_paths_diagonal(monkeypatch, chain_batches):
    # The chain's products write into buffers (out=), which autograd refuses for inputs
    # that require grad: the chain must work on a detached view of them.
    model, inputs = _chain(4)
    fast = minsharp.hessian_diagonal(model, inputs.clone().requires_grad_())
    assert chain_batches
    _general_path(monkeypatch)
    slow = minsharp.hessian_diagonal(model, inputs)
    for name, value in fast.items():
        torch.testing.assert_close(value, slow[name], rtol=1e-13, atol=1e-15)


def test_autocast_takes_the_general_path(chain_batches):
    model, inputs = _chain(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = minsharp.hessian_diagonal(model.float(), inputs.float())
    assert not chain_batches
    assert all(torch.isfinite(value).all() for value in found.values())


def test_inputs_squared_in_blocks_of_examples_give_the_same_diagonal(monkeypatch, chain_batches):
    # The chain keeps each Linear's inputs unsquared and squares them a block at a time;
    # blocks of 2 rows (the last one short: N = 9) must give the one-block sums.
    model, inputs = _chain(7, flatten=True)
    whole = minsharp.hessian_diagonal(model, inputs)
    widest = max(module.in_features for module in model if isinstance(module, nn.Linear))
    monkeypatch.setattr(patches, "SQUARES_ELEMENTS", 2 * widest)
    blocked = minsharp.hessian_diagonal(model, inputs)
    assert len(chain_batches) == 2
    for name, value in whole.items():
        torch.testing.assert_close(value, blocked[name], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("diagonal", [False, True])
def test_footprint_from_the_widths_is_the_measured_one(seed, flatten, diagonal):
    model, inputs = _chain(seed, flatten=flatten)
    layers = find_layers(model)
    found = chain.linear_relu_chain(model, layers, inputs[:2])
    assert found is not None
    measured = budget.footprint(
        model, layers, inputs[:2], diagonal=diagonal, forward=lambda x: run_forward(model, x)
    )
    assert found.footprint(diagonal=diagonal) == measured


def _hooked() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    model[1].register_forward_hook(lambda module, args, output: output * 2)
    return model


def _backward_hooked() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    model[1].register_full_backward_hook(lambda module, grad_in, grad_out: (grad_in[0] * 2,))
    return model


def _forward_replaced() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    model[1].forward = lambda x: torch.nn.functional.leaky_relu(x, 0.3)
    return model


class _Subclass(nn.Sequential):
    pass


@pytest.mark.parametrize(
    "model, inputs",
    [
        (nn.Sequential(nn.Linear(4, 5), nn.ReLU6(), nn.Linear(5, 3)), torch.randn(2, 4)),
        (nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.ReLU(), nn.Linear(5, 3)), torch.randn(2, 4)),
        (nn.Sequential(nn.Linear(4, 5), nn.ReLU()), torch.randn(2, 4)),
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), torch.randn(2, 4)),
        (nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), torch.randn(2, 6, 4)),
        (nn.Sequential(nn.Flatten(2), nn.Linear(4, 3)), torch.randn(2, 1, 2, 2)),
        (_hooked(), torch.randn(2, 4)),
        (_backward_hooked(), torch.randn(2, 4)),
        (_forward_replaced(), torch.randn(2, 4)),
        (_Subclass(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), torch.randn(2, 4)),
    ],
    ids=[
        "relu6",
        "two relus",
        "no head",
        "single linear",
        "3-d input",
        "partial flatten",
        "hook",
        "backward hook",
        "forward replaced",
        "subclass",
    ],
)
def test_other_models_take_the_general_path(model, inputs):
    assert chain.linear_relu_chain(model, find_layers(model), inputs) is None


def test_a_frozen_layer_takes_the_general_path():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    model[0].requires_grad_(False)
    assert chain.linear_relu_chain(model, find_layers(model), torch.randn(2, 4)) is None


def test_nested_sequentials_are_one_chain():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 5), nn.ReLU()), nn.Linear(5, 3))
    found = chain.linear_relu_chain(model, find_layers(model), torch.randn(2, 4))
    assert found is not None
    assert [layer.module for layer in found.layers] == [model[0][0], model[1]]

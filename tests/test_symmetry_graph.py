"""Symmetry discovery from the fx graph: units, ties, pins and parameter edges (theory §7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.group_networks import Branchy, ResidualMLP, bn_mlp, build, grouped_cnn, transformer
from torch import nn

from minsharp.errors import MinsharpError
from minsharp.symmetry.graph import discover


def _free(group, module):
    first, count = group.units[module]
    return [group.find(unit) != 0 for unit in range(first, first + count)]


def test_mlp_edges_by_hand():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 4)).double()
    group = discover(model, torch.randn(2, 3, dtype=torch.float64))
    dst, src = group.edges["0.weight"]
    assert np.broadcast_to(dst, (2, 3)).tolist() == [[1, 1, 1], [2, 2, 2]]
    assert np.broadcast_to(src, (2, 3)).tolist() == [[0] * 3] * 2  # the inputs are ground
    dst, src = group.edges["2.weight"]
    assert np.broadcast_to(src, (4, 2)).tolist() == [[1, 2]] * 4
    assert _free(group, "0") == [True, True]
    assert _free(group, "2") == [False] * 4  # the logits are pinned


def test_residual_sum_ties_units():
    model, inputs = build("residual_mlp")
    group = discover(model, inputs)
    first0, _ = group.units["fc0"]
    first1, _ = group.units["fc1"]
    assert [group.find(first0 + i) for i in range(5)] == [group.find(first1 + i) for i in range(5)]


def test_batchnorm_pins_its_inputs_and_frees_its_channels():
    group = discover(bn_mlp(True).double().eval(), torch.randn(3, 4, dtype=torch.float64))
    assert _free(group, "0") == [False] * 5
    assert _free(group, "1") == [True] * 5
    assert set(group.edges) >= {"1.weight", "1.bias"}


def test_grouped_conv_reads_only_its_group():
    group = discover(grouped_cnn().double().eval(), torch.randn(2, 2, 4, 4, dtype=torch.float64))
    first_in, _ = group.units["0"]
    _, src = group.edges["2.weight"]  # 4 → 6 channels in 2 groups
    assert (
        src[:, :, 0, 0].tolist()
        == [[first_in + 0, first_in + 1]] * 3 + [[first_in + 2, first_in + 3]] * 3
    )
    first_mid, _ = group.units["2"]
    _, src = group.edges["4.weight"]  # depthwise
    assert src[:, 0, 0, 0].tolist() == list(range(first_mid, first_mid + 6))


def test_flatten_gives_each_channel_its_block():
    model, inputs = build("residual_block")
    group = discover(model, inputs)
    first, _ = group.units["stem"]
    _, src = group.edges["head.weight"]
    assert [group.find(int(u)) for u in src[0]] == [
        group.find(first + c) for c in range(3) for _ in range(4)
    ]


@pytest.mark.parametrize("activation", [nn.Hardtanh, nn.GELU, nn.Tanh])
def test_not_positively_homogeneous_activations_pin(activation):
    model = nn.Sequential(
        nn.Linear(3, 4), activation(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)
    )
    group = discover(model.double(), torch.randn(2, 3, dtype=torch.float64))
    assert _free(group, "0") == [False] * 4
    assert _free(group, "2") == [True] * 5


def test_module_called_twice_is_pinned():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.square, self.head = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.fc(x))
            return self.head(torch.relu(self.square(torch.relu(self.square(h)))))

    group = discover(Twice().double(), torch.randn(2, 3, dtype=torch.float64))
    assert _free(group, "fc") == [False] * 4
    assert "square" not in group.units


def test_transformer_frees_only_feed_forward_units():
    model = transformer().double().eval()
    group = discover(model, torch.randn(2, 3, 3, dtype=torch.float64))
    assert _free(group, "1.linear1") == [True] * 7
    assert _free(group, "0") == [False] * 6
    assert not any(name.startswith("1.self_attn") for name in group.edges)


def test_untraceable_model_is_refused_with_the_reason():
    with pytest.raises(MinsharpError, match="data-dependent control flow"):
        discover(Branchy().double(), torch.randn(2, 4, dtype=torch.float64))


def test_layer_subgroup_ties_each_module():
    model = ResidualMLP().double()
    group = discover(model, torch.randn(2, 4, dtype=torch.float64))
    group.tie_layers()
    first, count = group.units["fc0"]
    assert len({group.find(first + i) for i in range(count)}) == 1

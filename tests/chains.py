"""Seeded random chain networks (positively homogeneous layers only) for symmetry tests."""

from __future__ import annotations

import itertools
import random

import torch
from torch import Tensor, nn


def chain_case(seed: int, *, bias: bool | None = None) -> tuple[nn.Module, Tensor]:
    """A float64 chain ReLU/LeakyReLU MLP or CNN with its inputs, drawn from ``seed``."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    use_bias = rng.random() < 0.5 if bias is None else bias
    activation = nn.ReLU if rng.random() < 0.7 else (lambda: nn.LeakyReLU(0.1))
    if rng.random() < 0.5:
        widths = [rng.randint(2, 6) for _ in range(rng.randint(2, 5))] + [rng.randint(2, 4)]
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths[:-1]):
            layers += [nn.Linear(width_in, width_out, bias=use_bias), activation()]
        layers.append(nn.Linear(widths[-2], widths[-1], bias=use_bias))
        inputs = torch.randn(rng.randint(3, 9), widths[0])
    else:
        channels = rng.randint(1, 3)
        pool = nn.MaxPool2d(2) if rng.random() < 0.5 else nn.AvgPool2d(2)
        layers = [
            nn.Conv2d(channels, 3, 3, padding=1, bias=use_bias),
            activation(),
            pool,
            nn.Conv2d(3, 2, 2, stride=2, bias=use_bias),
            activation(),
            nn.Flatten(),
            nn.Linear(2 * 2 * 2, rng.randint(2, 4), bias=use_bias),
        ]
        inputs = torch.randn(rng.randint(3, 6), channels, 8, 8)
    model = nn.Sequential(*layers).double().eval()
    if use_bias:  # default biases are tiny; make their traces matter
        with torch.no_grad():
            for module in model:
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_(0, 0.5)
    return model, inputs.double()


def random_alphas(num_layers: int, seed: int, spread: float = 1.0) -> list[float]:
    """Log-normal factors with product exactly 1 (up to rounding)."""
    logs = torch.randn(
        num_layers, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    logs = (logs - logs.mean()) * spread
    return logs.exp().tolist()


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Copies of all parameters and buffers, to check a model came back untouched."""
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, Tensor]) -> None:
    """Parameters/buffers equal ``before`` and no forward hooks are left behind."""
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    for module in model.modules():
        assert not module._forward_hooks, f"hook left on {module}"

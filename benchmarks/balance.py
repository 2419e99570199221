"""Full-group (neuron-wise) Minimum Sharpness: solver cost and the neuron-vs-layer gap.

On the paper MLP 784-512-128-512-10 (MNIST test images, N examples, float32) at
initialisation and after a brief SGD run, and on a small ResNet-style block net (no
``resnet20`` in the model zoo on this branch): the balancing solver's time, iterations and
imbalance, the layer- and neuron-wise values, and the cost of the whole neuron-wise measure
relative to one ``hessian_diagonal`` pass (theory §7).

    python benchmarks/balance.py [--examples 1000] [--output benchmarks/results/balance.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minsharp.curvature import hessian_diagonal
from minsharp.data import load_mnist_split
from minsharp.measures.neuron_sharpness import group_minimum_sharpness
from minsharp.models import paper_mlp

MNIST = Path("/work/shared/data/mnist")


class BlockNet(nn.Module):
    """stem conv, two residual conv-BN blocks (16 channels), pooled, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(16, 16, 3, padding=1),
                nn.BatchNorm2d(16),
                nn.ReLU(),
                nn.Conv2d(16, 16, 3, padding=1),
                nn.BatchNorm2d(16),
            )
            for _ in range(2)
        )
        self.pool, self.head = nn.AdaptiveAvgPool2d(2), nn.Linear(16 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of ``x`` (N, 1, 28, 28)."""
        h = torch.relu(self.stem(x))
        for block in self.blocks:
            h = torch.relu(h + block(h))
        return self.head(torch.flatten(self.pool(h), 1))


def brief_sgd(model: nn.Module, images: Tensor, labels: Tensor, steps: int) -> nn.Module:
    """``steps`` SGD steps (lr 0.1, batch 128) on the given images."""
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, images.shape[0], (128,), generator=generator)
        optimiser.zero_grad()
        F.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimiser.step()
    return model.eval()


def row(name: str, model: nn.Module, data: Tensor) -> str:
    """One table row: diagonal time, neuron/layer values and solver figures."""
    hessian_diagonal(model, data[:64])  # warm-up
    start = time.perf_counter()
    hessian_diagonal(model, data)
    diagonal_seconds = time.perf_counter() - start
    neuron = group_minimum_sharpness(model, data)
    layer = group_minimum_sharpness(model, data, symmetry="layer")
    gap = 1 - neuron.value / layer.value
    c, ratio = neuron.certificate, neuron.seconds / diagonal_seconds
    return (
        f"| {name} | {neuron.num_units} | {layer.value:.6g} | {neuron.value:.6g} | {gap:.1%} "
        f"| {c.iterations} | {c.max_relative_imbalance:.1e} | {neuron.solver_seconds:.3f} "
        f"| {diagonal_seconds:.3f} | {neuron.seconds:.3f} | {ratio:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/balance.md"))
    options = parser.parse_args()
    images, labels = load_mnist_split(MNIST, "test")
    data = images[: options.examples].reshape(options.examples, -1)
    torch.manual_seed(0)
    rows = [row("paper MLP, init", paper_mlp().eval(), data)]
    trained = brief_sgd(paper_mlp(), images.reshape(len(images), -1), labels, options.steps)
    rows.append(row(f"paper MLP, {options.steps} SGD steps", trained, data))
    torch.manual_seed(0)
    block = brief_sgd(BlockNet(), images.reshape(-1, 1, 28, 28), labels, options.steps // 3)
    rows.append(row("residual BN block net", block, data.reshape(-1, 1, 28, 28)[:256]))
    header = (
        f"# Full-group Minimum Sharpness (benchmarks/balance.py)\n\n"
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, float32, N = {options.examples} MNIST test images "
        "(256 for the block net). Default options (symmetry='neuron', curvature='hessian').\n"
        "Times in seconds; 'ratio' = whole neuron-wise measure / one hessian_diagonal pass.\n\n"
        "| network | free units | layer MS | neuron MS | gap | solver iterations "
        "| max imbalance | solver s | diagonal s | measure s | ratio |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    options.output.write_text(header + "\n".join(rows) + "\n")
    print(options.output.read_text())


if __name__ == "__main__":
    main()

"""Minimum Sharpness over the rescaling group: solver cost and the neuron-vs-layer gap.

For the paper MLP 784-512-128-512-10 (1152 free units) and ResNet-20 with batch-norm
(He et al. 2016; MNIST images padded to 32×32 and repeated on 3 channels), each at
initialisation and after a brief SGD run on later test images: layer- and neuron-wise
Minimum Sharpness (theory §7) as the README calls them (``minsharp.minimum_sharpness(model,
data, symmetry=…)``, default options), the balancing solver's iterations, imbalance and
time, and the whole neuron-wise measure's time as a ratio to one ``hessian_diagonal`` pass on
the same data, timed in interleaved rounds.

    python benchmarks/balance.py [--examples 1000] [--resnet-examples 256] [--quick]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

import common
import minsharp
from minsharp.models import paper_mlp, resnet20
from minsharp.training import TrainingConfig

DEFAULT_OUTPUT = common.RESULTS_DIR / "balance.md"
#: The paper MLP's target: the neuron-wise measure at most this many diagonal passes.
TARGET_RATIO = 1.5


@dataclass(frozen=True, kw_only=True)
class Settings(common.BaseSettings):
    """Sizes of the run; ``--quick`` shrinks everything to a smoke test."""

    examples: int = 1000
    resnet_examples: int = 256
    mlp_epochs: int = 8
    resnet_epochs: int = 1
    training_stop: int = 10000
    """Training uses test images 5000 … training_stop − 1, never the measured ones."""
    repeats: int = 3

    @classmethod
    def of(cls, quick: bool, examples: int, resnet_examples: int) -> Settings:
        """The settings of a full run of these sizes, or of a ``--quick`` one."""
        if quick:
            return cls(
                quick=True,
                examples=64,
                resnet_examples=8,
                mlp_epochs=1,
                resnet_epochs=1,
                training_stop=5256,
                repeats=1,
            )
        return cls(examples=examples, resnet_examples=resnet_examples)


def as_resnet_input(images: Tensor) -> Tensor:
    """(N, 1, 28, 28) → (N, 3, 32, 32): zero-padded by 2 and repeated on 3 channels."""
    return F.pad(images, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()


def training(epochs: int) -> TrainingConfig:
    """SGD as the studies train (momentum 0.9), batch 128, lr 0.05, for ``epochs``."""
    return TrainingConfig(epochs=epochs, batch_size=128, lr=0.05, seed=0)


def measured_row(name: str, model: nn.Module, data: Tensor, settings: Settings) -> list[object]:
    """One table row: free units, both values, the gap, solver figures and the cost ratio."""
    functions: dict[str, Callable[[], object]] = {
        "diagonal": lambda: minsharp.hessian_diagonal(model, data),
        "neuron": lambda: minsharp.minimum_sharpness(model, data, symmetry="neuron"),
    }
    timings, _ = common.timed_rounds(
        functions,
        repeats=settings.repeats,
        max_rounds=4 * settings.repeats,
        max_other_cores=settings.max_other_cores,
        warmup=1,
    )
    neuron = timings["neuron"].result
    layer = minsharp.minimum_sharpness(model, data)
    diagonal_s, measure_s = timings["diagonal"].median, timings["neuron"].median
    certificate, details = neuron.certificate, neuron.details
    return [
        name,
        data.shape[0],
        details["num_units"],
        f"{layer.value:.6g}",
        f"{neuron.value:.6g}",
        f"{1 - neuron.value / layer.value:.1%}",
        certificate["iterations"],
        f"{certificate['max_relative_imbalance']:.1e}",
        f"{details['solver_seconds']:.3f}",
        common.seconds(diagonal_s),
        common.seconds(measure_s),
        f"{measure_s / diagonal_s:.2f}",
    ]


def main() -> int:
    parser = common.base_parser(__doc__, DEFAULT_OUTPUT)
    parser.add_argument("--examples", type=int, default=1000, help="paper MLP examples")
    parser.add_argument("--resnet-examples", type=int, default=256, help="ResNet-20 examples")
    args = parser.parse_args()
    settings = Settings.of(args.quick, args.examples, args.resnet_examples)
    run = common.Run(args, settings.threads)
    images, labels = common.mnist_test_images(args.mnist, 10000)
    flat = images.reshape(len(images), -1)
    mlp_data = flat[: settings.examples]
    resnet_images = as_resnet_input(images)
    resnet_data = resnet_images[: settings.resnet_examples]
    rows = []
    cases = [
        ("paper MLP, init", lambda: paper_mlp(), mlp_data, 0, flat),
        ("paper MLP, trained", lambda: paper_mlp(), mlp_data, settings.mlp_epochs, flat),
        ("ResNet-20 + BN, init", lambda: resnet20(3, 10), resnet_data, 0, resnet_images),
        (
            "ResNet-20 + BN, trained",
            lambda: resnet20(3, 10),
            resnet_data,
            settings.resnet_epochs,
            resnet_images,
        ),
    ]
    for name, build, data, epochs, training_images in cases:
        model = common.untrained(build)
        if epochs:
            config = training(epochs)
            common.train_on_test_images(
                model, training_images, labels, slice(5000, settings.training_stop), config
            )
            steps = epochs * -(-(settings.training_stop - 5000) // config.batch_size)
            name = f"{name} ({steps} SGD steps)"
        rows.append(measured_row(name, model, data, settings))
        common.print_row(rows[-1])
    header = [
        "network",
        "N",
        "free units",
        "layer MS",
        "neuron MS",
        "gap",
        "solver iterations",
        "max imbalance",
        "solver s",
        "hessian_diagonal",
        "neuron MS measure",
        "ratio",
    ]
    notes = [
        "data: the first N MNIST test images (ResNet-20: padded to 32×32, 3 channels); "
        f"trained nets: SGD on test images 5000–{settings.training_stop - 1}, batch 128, "
        "lr 0.05, momentum 0.9",
        "ratio: the whole neuron-wise measure (probe, graph discovery, check, diagonal, "
        f"solver) over one hessian_diagonal pass, medians of interleaved rounds; target for "
        f"the paper MLP: ≤ {TARGET_RATIO}",
        "gap: 1 − neuron/layer; the layer-wise value is the paper's Minimum Sharpness on the MLP",
    ]
    body = common.markdown_table(header, rows) + "\n"
    return run.finish(
        "Minimum Sharpness over the rescaling group (benchmarks/balance.py)",
        "float32",
        notes,
        body,
    )


if __name__ == "__main__":
    sys.exit(main())

"""What tracking sharpness during training costs: a plain loop against the same loop with a tracker.

Model: ``minsharp.models.paper_mlp`` (784-512-128-512-10, ReLU, biases), the same initial
weights for both loops; data: the first 8 000 MNIST test images (flattened, [−1, 1]) and their
labels, minibatches of 128 in a seeded order; SGD with momentum 0.9, lr 0.05, float32,
2 threads. The tracked loop calls ``SharpnessTracker(probe, every=E).after_step(model, step)``
after every optimiser step, with its defaults (exact Hessian trace and Minimum Sharpness) on a
fixed probe of the first 1 000 training images; the table gives the overhead for
E ∈ {100, 1000}. Both loops run the same number of steps, alternately, and the medians over
repeats are compared.

Usage::

    python benchmarks/tracking_overhead.py                                  # full run
    python benchmarks/tracking_overhead.py --quick --output /tmp/track.md   # seconds
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import common
from minsharp.models import paper_mlp
from minsharp.training.tracking import SharpnessTracker

DEFAULT_OUTPUT = common.RESULTS_DIR / "tracking_overhead.md"

HEADER = [
    "tracked every",
    "steps",
    "measurements",
    "plain loop (s)",
    "tracked loop (s)",
    "overhead",
    "one measurement (ms)",
    "one measurement / one training step",
]


@dataclass(frozen=True)
class Settings(common.BaseSettings):
    """What one run measures."""

    examples: int
    probe: int
    batch: int
    steps: int
    every: tuple[int, ...]
    repeats: int


FULL = Settings(examples=8000, probe=1000, batch=128, steps=1000, every=(100, 1000), repeats=3)
QUICK = Settings(examples=256, probe=64, batch=32, steps=20, every=(10,), repeats=1, quick=True)


def train(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    settings: Settings,
    tracker: SharpnessTracker | None,
) -> float:
    """Seconds for ``settings.steps`` SGD steps, with ``tracker.after_step`` after each."""
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    batches = len(labels) // settings.batch
    started = time.perf_counter()
    for step in range(1, settings.steps + 1):
        chosen = order[(step % batches) * settings.batch :][: settings.batch]
        optimiser.zero_grad()
        F.cross_entropy(model(inputs[chosen]), labels[chosen]).backward()
        optimiser.step()
        if tracker is not None:
            tracker.after_step(model, step)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(__doc__, DEFAULT_OUTPUT).parse_args(argv)
    settings = QUICK if args.quick else FULL
    run = common.Run(args, settings.threads)
    images, labels = common.mnist_test_images(args.mnist, settings.examples)
    inputs = images.flatten(1)
    probe = inputs[: settings.probe]
    torch.manual_seed(0)
    initial = paper_mlp().state_dict()
    rows = []
    for every in settings.every:
        plain, tracked, measured = [], [], []
        for _ in range(settings.repeats):
            for with_tracker in (False, True):
                model = paper_mlp()
                model.load_state_dict(initial)
                tracker = SharpnessTracker(probe, every=every) if with_tracker else None
                seconds = train(model, inputs, labels, settings, tracker)
                (tracked if with_tracker else plain).append(seconds)
                if tracker is not None:
                    measured += [
                        sum(row[f"{name}_seconds"] for name in tracker.measures)
                        for row in tracker.rows
                    ]
        step_seconds = statistics.median(plain) / settings.steps
        measurement = statistics.median(measured)
        overhead = statistics.median(tracked) / statistics.median(plain) - 1
        row = [
            every,
            settings.steps,
            settings.steps // every,
            f"{statistics.median(plain):.2f}",
            f"{statistics.median(tracked):.2f}",
            f"{overhead:+.1%}",
            f"{measurement * 1e3:.1f}",
            f"{measurement / step_seconds:.1f}",
        ]
        rows.append(row)
        common.print_row(row)
    notes = [
        f"model: `minsharp.models.paper_mlp()`; {settings.examples} MNIST test images "
        f"({args.mnist}), batch {settings.batch}, SGD momentum 0.9, lr 0.05",
        f"tracker: `SharpnessTracker(probe, every=E)` with its default measures "
        f"(hessian_trace, minimum_sharpness) on a fixed probe of {settings.probe} training "
        "images, called after every optimiser step",
        f"timing: {settings.repeats} repeats of the plain and the tracked loop, alternately; "
        "medians; 'one measurement' is the median of the measures' own times per tracked step",
    ]
    title = "Overhead of tracking sharpness during training"
    return run.finish(title, "float32", notes, common.markdown_table(HEADER, rows))


if __name__ == "__main__":
    sys.exit(main())

"""Scaling of the exact trace and diagonal with N, width, depth and K, against a training step.

Model: ``minsharp.models.mlp(784, hidden, K)`` (ReLU), untrained, on the first N MNIST test
images, float32. Each axis varies one quantity from the base point (N = 1000, two hidden
layers of 100, K = 10): the number of examples N, the width of both hidden layers, the number
of hidden layers (of width 256), and the number of classes K. At every point: the median wall
time of one training step (zero_grad, forward, mean cross-entropy, backward), of
``hessian_trace`` and of ``hessian_diagonal`` (one batch of N), timed in interleaved rounds
with contention filtering (as ``cost_ratio.py``), their ratio to the training step, and the
peak memory of one call of each.

Usage::

    python benchmarks/scaling.py                                   # full run
    python benchmarks/scaling.py --quick --output /tmp/scaling.md  # seconds

A full run took 49 s on 2 cores (the committed table).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace

import torch

import common
from minsharp.models import count_parameters

DEFAULT_OUTPUT = common.RESULTS_DIR / "scaling.md"
WORKLOADS = ("training", "trace", "diagonal")


@dataclass(frozen=True)
class Point:
    """One network and data size."""

    examples: int
    hidden: tuple[int, ...]
    classes: int


@dataclass(frozen=True)
class Settings(common.BaseSettings):
    """What one run measures."""

    base: Point
    examples: tuple[int, ...]
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    depth_width: int
    classes: tuple[int, ...]
    budget_s: float  # timed rounds per point stop after about this long
    max_repeats: int


FULL = Settings(
    base=Point(1000, (100, 100), 10),
    examples=(250, 1000, 4000, 10000),
    widths=(32, 128, 512, 2048),
    depths=(1, 2, 4, 8),
    depth_width=256,
    classes=(10, 100, 1000, 4000),
    budget_s=8.0,
    max_repeats=20,
)
QUICK = Settings(
    base=Point(32, (16, 16), 10),
    examples=(16, 32),
    widths=(8, 16),
    depths=(1, 2),
    depth_width=16,
    classes=(10, 30),
    budget_s=0.2,
    max_repeats=2,
    quick=True,
)


HEADER = [
    "axis",
    "value",
    "N",
    "hidden",
    "K",
    "params",
    "rounds kept",
    "training step (ms)",
    "hessian_trace (ms)",
    "hessian_diagonal (ms)",
    "trace / step",
    "diagonal / step",
    "peak MiB: step",
    "peak MiB: trace",
    "peak MiB: diagonal",
    "max other load (cores)",
]


def axes(settings: Settings) -> dict[str, list[tuple[object, Point]]]:
    """For each axis, (value, point) pairs varying that one quantity from the base."""
    base = settings.base
    return {
        "N": [(n, replace(base, examples=n)) for n in settings.examples],
        "width": [(w, replace(base, hidden=(w, w))) for w in settings.widths],
        "depth": [(d, replace(base, hidden=(settings.depth_width,) * d)) for d in settings.depths],
        "K": [(k, replace(base, classes=k)) for k in settings.classes],
    }


def measure_point(
    point: Point, images: torch.Tensor, settings: Settings
) -> tuple[dict[str, common.Timing], dict[str, float | None], int, int]:
    """Timings and peak memory of the three workloads; rounds kept and made."""
    inputs = images[: point.examples].flatten(1)
    model, functions = common.training_and_curvature(inputs, point.hidden, point.classes)
    start = time.perf_counter()
    for function in functions.values():
        function()  # warm-up
    one_round = time.perf_counter() - start
    memory = {name: common.peak_memory_mib(f)[1] for name, f in functions.items()}
    repeats = int(max(3, min(settings.max_repeats, settings.budget_s / max(one_round, 1e-6))))
    timings, rounds = common.timed_rounds(
        functions,
        repeats=repeats,
        max_rounds=5 * repeats,
        max_other_cores=settings.max_other_cores,
    )
    return timings, memory, rounds, count_parameters(model)


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(__doc__, DEFAULT_OUTPUT).parse_args(argv)
    settings = QUICK if args.quick else FULL
    run = common.Run(args, settings.threads)
    largest = max(*settings.examples, settings.base.examples)
    images, _ = common.mnist_test_images(args.mnist, largest)

    rows, curves = [], {}
    for axis, points in axes(settings).items():
        for value, point in points:
            timings, memory, rounds, parameters = measure_point(point, images, settings)
            median = {name: timings[name].median for name in WORKLOADS}
            curves.setdefault(axis, []).append((value, median))
            kept = len(timings["training"].kept)
            rows.append(
                [
                    axis,
                    value,
                    point.examples,
                    "-".join(str(h) for h in point.hidden),
                    point.classes,
                    parameters,
                    f"{kept} of {rounds}",
                    *(f"{median[name] * 1e3:.2f}" for name in WORKLOADS),
                    f"{median['trace'] / median['training']:.2f}×",
                    f"{median['diagonal'] / median['training']:.2f}×",
                    *("—" if memory[name] is None else f"{memory[name]:.0f}" for name in WORKLOADS),
                    f"{max(t.max_other_cores for t in timings.values()):.2f}",
                ]
            )
            common.print_row(rows[-1])

    figure = plot(curves, args.output)
    base = settings.base
    notes = [
        f"model: `minsharp.models.mlp(784, hidden, K)`, ReLU, untrained (torch.manual_seed(0)); "
        f"base point N = {base.examples}, hidden {list(base.hidden)}, K = {base.classes}; the "
        f"depth axis uses hidden layers of width {settings.depth_width}",
        f"data: the first N MNIST test images ({args.mnist}), normalised to [−1, 1], "
        "flattened; random labels for the training step",
        "timing: one warm-up call each, then rounds of the three workloads in rotating order "
        f"(`common.timed_rounds`, as in `cost_ratio.py`), about {settings.budget_s:g} s of "
        f"rounds per point (3 to {settings.max_repeats} kept); a round during which other "
        f"processes kept more than {settings.max_other_cores} cores busy is discarded; medians "
        "over kept rounds",
        "ours: default options (the engine sizes its batches from its memory budget)",
        common.MEMORY_METHOD,
    ]
    body = common.markdown_table(HEADER, rows)
    body += common.figure_link(figure, "time against N, width, depth and K")
    title = "Scaling of the exact curvature with N, width, depth and K"
    return run.finish(title, "float32", notes, body)


def plot(curves: dict[str, list], output: object) -> object | None:
    if not curves:
        return None
    plt = common.pyplot()
    figure, panels = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.5))  # type: ignore[attr-defined]
    for panel, (axis, points) in zip(panels, curves.items(), strict=True):
        values = [value for value, _ in points]
        for name, style in zip(WORKLOADS, ("k--", "o-", "s-"), strict=True):
            panel.plot(values, [m[name] for _, m in points], style, label=name)
        panel.set_xscale("log")
        panel.set_yscale("log")
        panel.set_xlabel(axis)
    panels[0].set_ylabel("median time (s)")
    panels[0].legend(fontsize=7)
    return common.save_figure(figure, output, "time")  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())

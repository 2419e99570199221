"""Cost of the exact trace and diagonal relative to one training step on the same data.

Model: ``minsharp.models.mlp(784, [100, 100], K)`` (ReLU), untrained; data: the first N = 1000
MNIST test images, flattened; float32, 2 threads. The training step is what one SGD iteration
costs before the update: ``zero_grad``, forward, mean cross-entropy, ``.backward()`` to the
parameters. Ours: ``hessian_trace`` / ``hessian_diagonal`` with ``batch_size = N`` (the same
single batch). The three are timed interleaved, after a warm-up, and the medians compared.
Bars (K = 10): trace ≤ 2×, diagonal ≤ 2.5× one training step. K = 100 (a random 100-class
output layer on the same inputs, random labels) is an extra row with no bar.

Usage::

    python benchmarks/cost_ratio.py                                # full run
    python benchmarks/cost_ratio.py --quick --output /tmp/cost.md  # seconds
    python benchmarks/cost_ratio.py --profile  # also profile ours even when the bars are met

A full run took 14 s on 2 idle cores (``benchmarks/results/cost_ratio.md``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import common
from minsharp.models import count_parameters

DEFAULT_OUTPUT = common.RESULTS_DIR / "cost_ratio.md"

#: Largest acceptable ratio to one training step, for K = 10.
BARS = {"trace": 2.0, "diagonal": 2.5}
#: The class count the bars apply to.
BAR_CLASSES = 10
#: The table's columns.
HEADER = [
    "K",
    "N",
    "params",
    "rounds kept",
    "max other load (cores)",
    "training step (ms)",
    "hessian_trace (ms)",
    "trace / step (median)",
    "trace / step (min)",
    f"trace bar ≤ {BARS['trace']:g}×",
    "hessian_diagonal (ms)",
    "diagonal / step (median)",
    "diagonal / step (min)",
    f"diagonal bar ≤ {BARS['diagonal']:g}×",
]


@dataclass(frozen=True)
class Settings(common.BaseSettings):
    """What one run measures."""

    examples: int
    hidden: tuple[int, ...]
    classes: tuple[int, ...]
    warmup: int  # untimed rounds
    repeats: int  # timed rounds kept
    max_rounds: int  # timed rounds made at most (contended ones are discarded)


FULL = Settings(
    examples=1000, hidden=(100, 100), classes=(10, 100), warmup=5, repeats=50, max_rounds=500
)
QUICK = Settings(
    examples=32, hidden=(16, 16), classes=(10, 100), warmup=1, repeats=3, max_rounds=3, quick=True
)


def profile_table(function: Callable[[], object], rows: int = 15) -> str:
    """torch.profiler's operator table (by self CPU time) over five calls of ``function``."""
    from torch.profiler import ProfilerActivity, profile

    function()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(5):
            function()
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__, DEFAULT_OUTPUT)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="append torch.profiler tables of ours even if the bars are met",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    run = common.Run(args, settings.threads)

    images, _ = common.mnist_test_images(args.mnist, settings.examples)
    inputs = images.flatten(1)
    rows = []
    to_profile: dict[str, Callable[[], object]] = {}
    for classes in settings.classes:
        model, functions = common.training_and_curvature(inputs, settings.hidden, classes)
        timings, rounds = common.timed_rounds(
            functions,
            warmup=settings.warmup,
            repeats=settings.repeats,
            max_rounds=settings.max_rounds,
            max_other_cores=settings.max_other_cores,
        )
        median = {name: timing.median for name, timing in timings.items()}
        fastest = {name: min(timing.kept or timing.discarded) for name, timing in timings.items()}
        kept = len(timings["training"].kept)
        row: list[object] = [
            classes,
            inputs.shape[0],
            count_parameters(model),
            f"{kept} of {rounds}",
            f"{max(t.max_other_cores for t in timings.values()):.2f}",
            f"{median['training'] * 1e3:.2f}",
        ]
        for name in ("trace", "diagonal"):
            ratio = median[name] / median["training"]
            if classes == BAR_CLASSES:
                verdict = common.verdict(ratio <= BARS[name])
                if verdict == "MISS" or args.profile:
                    to_profile[f"{name}, K = {classes}"] = functions[name]
            else:
                verdict = "n/a (no bar)"
            row += [
                f"{median[name] * 1e3:.2f}",
                f"{ratio:.2f}×",
                f"{fastest[name] / fastest['training']:.2f}×",
                verdict,
            ]
        rows.append(row)
        common.print_row(row)

    notes = [
        f"model: `minsharp.models.mlp({inputs.shape[1]}, {list(settings.hidden)}, K)`, ReLU, "
        "untrained (torch.manual_seed(0)); random labels in 0..K−1 for the training step",
        f"data: the first N MNIST test images ({args.mnist}), normalised to [−1, 1], flattened",
        "training step: `model.zero_grad()`, forward, `F.cross_entropy` (mean), `.backward()`",
        "ours: `minsharp.hessian_trace` / `minsharp.hessian_diagonal` with batch_size = N (one "
        "batch); each call includes the engine's piecewise-linearity probe on 8 examples",
        f"timing: {settings.warmup} warm-up rounds, then rounds of the three workloads in "
        f"rotating order until {settings.repeats} rounds are kept (at most "
        f"{settings.max_rounds} made); a round during which other processes kept more than "
        f"{settings.max_other_cores} cores busy (from /proc/stat) is discarded; times are "
        "medians over kept rounds; the verdict compares the ratio of medians with the bar "
        "(computed by the script); the ratio of minimum times is shown as a cross-check",
        f"bars apply to K = {BAR_CLASSES}; the K = 100 row is extra information",
    ]

    profiles = ""
    for label, function in to_profile.items():
        if settings.max_other_cores is not None:
            common.wait_until_quiet(max(args.wait_quiet, 60.0))
        monitor = common.OtherLoad()
        table = profile_table(function)
        load = monitor.cores() or 0.0
        profiles += (
            f"\n## torch.profiler: {label} (5 calls, by self CPU time; other processes used "
            f"{load:.2f} cores meanwhile)\n\n```\n{table}```\n"
        )

    title = "Cost of the exact curvature relative to one training step"
    return run.finish(title, "float32", notes, common.markdown_table(HEADER, rows) + profiles)


if __name__ == "__main__":
    sys.exit(main())

"""Cost of the exact trace and diagonal relative to one training step on the same data.

Model: ``minsharp.models.mlp(784, [100, 100], K)`` (ReLU), untrained; data: the first N = 1000
MNIST test images, flattened; float32, 2 threads. The training step is what one SGD iteration
costs before the update: ``zero_grad``, forward, mean cross-entropy, ``.backward()`` to the
parameters. Ours: ``hessian_trace`` / ``hessian_diagonal`` with ``batch_size = N`` (the same
single batch). The three are timed interleaved, after a warm-up, and the medians compared.
Bars (K = 10): trace ≤ 2×, diagonal ≤ 2.5× one training step. K = 100 (a random 100-class
output layer on the same inputs, random labels) is an extra row with no bar.

Usage::

    python benchmarks/cost_ratio.py                                   # about a minute
    python benchmarks/cost_ratio.py --quick --output /tmp/cost.md      # seconds
    python benchmarks/cost_ratio.py --profile    # also profile ours even when the bars are met
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import common
import minsharp
from minsharp.models import count_parameters, mlp

DEFAULT_OUTPUT = common.RESULTS_DIR / "cost_ratio.md"

#: Largest acceptable ratio to one training step, for K = 10.
BARS = {"trace": 2.0, "diagonal": 2.5}
#: The class count the bars apply to.
BAR_CLASSES = 10


@dataclass(frozen=True)
class Settings:
    """What one run measures."""

    examples: int
    hidden: tuple[int, ...]
    classes: tuple[int, ...]
    warmup: int  # untimed rounds
    repeats: int  # timed rounds kept
    max_rounds: int  # timed rounds made at most (contended ones are discarded)
    threads: int
    max_other_cores: float | None  # a round with more load from other processes is discarded


FULL = Settings(
    examples=1000,
    hidden=(100, 100),
    classes=(10, 100),
    warmup=5,
    repeats=50,
    max_rounds=500,
    threads=common.THREADS,
    max_other_cores=common.QUIET_CORES,
)
QUICK = Settings(
    examples=32,
    hidden=(16, 16),
    classes=(10, 100),
    warmup=1,
    repeats=3,
    max_rounds=3,
    threads=1,  # immune to stalls from other processes (see common.QUICK_NOTE)
    max_other_cores=None,
)


def measure(
    functions: dict[str, Callable[[], object]], settings: Settings
) -> tuple[dict[str, common.Timing], int]:
    """Wall times of each function over interleaved rounds (rotating order).

    A round during which other processes kept more than ``settings.max_other_cores`` cores
    busy is discarded as a whole, so that every kept round compares the three workloads under
    the same quiet conditions. Returns the timings and the number of rounds made.
    """
    for _ in range(settings.warmup):
        for function in functions.values():
            function()
    timings = {name: common.Timing() for name in functions}
    names = list(functions)
    rounds = 0
    while rounds < settings.max_rounds and len(timings[names[0]].kept) < settings.repeats:
        shift = rounds % len(names)
        monitor = common.OtherLoad()
        times = {name: common.time_once(functions[name]) for name in names[shift:] + names[:shift]}
        other = monitor.cores()
        for name, seconds in times.items():
            timings[name].add(seconds, other, settings.max_other_cores)
        rounds += 1
    return timings, rounds


def workloads(model: nn.Module, inputs: Tensor, labels: Tensor) -> dict[str, Callable[[], object]]:
    """The training step and our two computations, on the same single batch."""
    n = inputs.shape[0]

    def training_step() -> None:
        model.zero_grad()
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()

    return {
        "training": training_step,
        "trace": lambda: minsharp.hessian_trace(model, inputs, batch_size=n),
        "diagonal": lambda: minsharp.hessian_diagonal(model, inputs, batch_size=n),
    }


def profile_table(function: Callable[[], object], rows: int = 15) -> str:
    """torch.profiler's operator table (by self CPU time) over five calls of ``function``."""
    from torch.profiler import ProfilerActivity, profile

    function()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(5):
            function()
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0], DEFAULT_OUTPUT)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="append torch.profiler tables of ours even if the bars are met",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    common.setup_torch(settings.threads)
    quiet_note = common.wait_until_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    started = time.perf_counter()
    other_load = common.OtherLoad()

    images, _ = common.mnist_test_images(args.mnist, settings.examples)
    inputs = images.flatten(1)
    rows = []
    to_profile: dict[str, Callable[[], object]] = {}
    for classes in settings.classes:
        torch.manual_seed(0)
        model = mlp(inputs.shape[1], list(settings.hidden), classes)
        labels = torch.randint(0, classes, (inputs.shape[0],))
        functions = workloads(model, inputs, labels)
        timings, rounds = measure(functions, settings)
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
                verdict = "PASS" if ratio <= BARS[name] else "MISS"
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
        print(" | ".join(str(cell) for cell in row), flush=True)

    header = [
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
    if args.quick:
        notes.insert(0, common.QUICK_NOTE)

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

    elapsed = time.perf_counter() - started
    notes.append(f"total script time: {elapsed:.0f} s; {common.load_note()}")
    notes.append(other_load.describe())
    if quiet_note:
        notes.append(quiet_note)
    text = common.machine_header(
        "Cost of the exact curvature relative to one training step", "float32", notes
    )
    text += "\n" + common.markdown_table(header, rows) + profiles
    common.write_atomically(args.output, text)
    print(f"wrote {args.output} in {elapsed:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

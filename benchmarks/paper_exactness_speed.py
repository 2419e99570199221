"""Exactness and speed of the curvature engine in the Minimum Sharpness paper's setting.

Ibayashi, Hamaguchi & Imaizumi (2021), Fig. 1 (theory §6): untrained SmallMLP 784-20-20-10 and
SmallCNN, the first n ∈ {10, 100, 1000} MNIST test images normalised by (x − 0.5)/0.5, float32.
Our ``hessian_diagonal`` and ``hessian_trace`` against ``brute_force_hessian_diagonal`` (one
double-backward per parameter entry): median wall times, Tr H from each, the largest entrywise
relative difference of the diagonals, and the speed-up. The same comparison in float64 for
n ∈ {10, 100} shows that the two agree to rounding.

Usage::

    python benchmarks/paper_exactness_speed.py                             # full run
    python benchmarks/paper_exactness_speed.py --quick --output /tmp/x.md  # seconds

A full run took 14 minutes on 2 idle cores (``benchmarks/results/paper_exactness_speed.md``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import common
import minsharp
from minsharp.models import count_parameters, mlp, small_cnn, small_mlp

DEFAULT_OUTPUT = common.RESULTS_DIR / "paper_exactness_speed.md"


@dataclass(frozen=True)
class Settings(common.BaseSettings):
    """What one run measures."""

    models: dict[str, Callable[[], nn.Module]]
    float32_sizes: tuple[int, ...]
    float64_sizes: tuple[int, ...]
    crop: slice | None  # pixel rows/columns kept (quick mode), None for full 28×28 images
    ours_repeats: int  # timed calls of ours, after one warm-up
    ours_budget_s: float  # ...but stop after this many seconds (at least 3 calls)
    brute_repeat_below_s: float  # repeat the brute force (3 runs) only if one run is faster
    brute_retry_below_s: float  # make a contended single brute-force run again (twice at
    # most) if it took less than this


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 10),
    )


FULL = Settings(
    models={"SmallMLP 784-20-20-10": small_mlp, "SmallCNN": small_cnn},
    float32_sizes=(10, 100, 1000),
    float64_sizes=(10, 100),
    crop=None,
    ours_repeats=10,
    ours_budget_s=15.0,
    brute_repeat_below_s=5.0,
    brute_retry_below_s=200.0,
)

QUICK = Settings(
    models={
        "tiny MLP 64-8-8-10": lambda: mlp(64, [8, 8], 10),
        "tiny CNN (conv3×3 1→4, pool 2, linear 36→10)": _tiny_cnn,
    },
    float32_sizes=(4,),
    float64_sizes=(4,),
    crop=slice(10, 18),
    ours_repeats=3,
    ours_budget_s=1.0,
    brute_repeat_below_s=0.5,
    brute_retry_below_s=5.0,
    quick=True,
)


def max_relative_difference(ours: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> float:
    """Largest ``|ours − ref| / |ref|`` over all entries of all parameters (in float64).

    Entries where the reference is exactly zero count as 0 if ours is zero too, else inf.
    """
    worst = 0.0
    for name, ref in reference.items():
        a = ours[name].detach().double().reshape(-1)
        b = ref.detach().double().reshape(-1)
        nonzero = b != 0
        if nonzero.any():
            worst = max(worst, ((a[nonzero] - b[nonzero]).abs() / b[nonzero].abs()).max().item())
        if (a[~nonzero] != 0).any():
            return float("inf")
    return worst


def compare(
    model: nn.Module, inputs: Tensor, labels: Tensor, settings: Settings, wait_quiet_s: float
) -> dict[str, object]:
    """Times and traces of ours and the brute force on one (model, data) pair."""
    n = inputs.shape[0]

    def diagonal() -> minsharp.CurvatureDiagonal:
        return minsharp.hessian_diagonal(model, inputs, batch_size=n)

    def trace() -> minsharp.CurvatureTrace:
        return minsharp.hessian_trace(model, inputs, batch_size=n)

    if wait_quiet_s > 0:
        common.wait_until_quiet(wait_quiet_s)
    timing = {
        "repeats": settings.ours_repeats,
        "budget_s": settings.ours_budget_s,
        "max_other_cores": settings.max_other_cores,
        "max_total_s": 4 * settings.ours_budget_s,
    }
    diagonal_timing = common.timed_calls(diagonal, **timing, min_repeats=3)
    trace_timing = common.timed_calls(trace, **timing, min_repeats=3)
    ours_diagonal: minsharp.CurvatureDiagonal = diagonal_timing.result  # type: ignore[assignment]
    ours_trace: minsharp.CurvatureTrace = trace_timing.result  # type: ignore[assignment]

    brute: dict[str, Tensor] = {}

    def brute_force() -> None:
        brute.update(minsharp.brute_force_hessian_diagonal(model, inputs, labels))

    if wait_quiet_s > 0:
        common.wait_until_quiet(wait_quiet_s)
    brute_timing = common.Timing()
    while True:
        brute_timing.call(brute_force, settings.max_other_cores)
        made = len(brute_timing.kept) + len(brute_timing.discarded)
        fastest = min(brute_timing.kept + brute_timing.discarded)
        if fastest < settings.brute_repeat_below_s:
            wanted, attempts = 3, 6
        else:
            wanted, attempts = 1, 3 if fastest < settings.brute_retry_below_s else 1
        if len(brute_timing.kept) >= wanted or made >= attempts:
            break
        if wait_quiet_s > 0 and brute_timing.discarded:
            common.wait_until_quiet(wait_quiet_s)

    brute_total = sum(float(d.double().sum()) for d in brute.values())
    return {
        "diagonal": diagonal_timing,
        "trace": trace_timing,
        "brute": brute_timing,
        "brute_total": brute_total,
        "diagonal_total": ours_diagonal.total,
        "trace_total": ours_trace.total,
        "trace_rel": abs(ours_trace.total - brute_total) / abs(brute_total),
        "diagonal_rel": max_relative_difference(ours_diagonal.by_parameter, brute),
    }


PRECISION_LABELS = {
    torch.float32: "float32 (the paper's precision)",
    torch.float64: "float64 (exactness check)",
}

HEADER = [
    "model",
    "params",
    "n",
    "ours: diagonal (s)",
    "ours: trace (s)",
    "brute force (s)",
    "timed runs (diagonal / trace / brute)",
    "speed-up diagonal",
    "speed-up trace",
    "Tr H brute force",
    "Tr H ours (diagonal)",
    "Tr H ours (trace)",
    "rel. diff Tr H (trace vs brute)",
    "max rel. diff diag H",
    "other load (cores): diagonal / trace / brute",
]


def run_dtype(
    settings: Settings, images: Tensor, labels: Tensor, dtype: torch.dtype, wait_quiet_s: float
) -> list[list]:
    """One table: every model at every size for ``dtype``, each line printed as it comes."""
    sizes = settings.float32_sizes if dtype == torch.float32 else settings.float64_sizes
    rows = []
    for name, build in settings.models.items():
        model = common.untrained(build, dtype)
        for n in sizes:
            result = compare(model, images[:n].to(dtype), labels[:n], settings, wait_quiet_s)
            diagonal, trace, brute = result["diagonal"], result["trace"], result["brute"]
            load = " / ".join(f"{t.max_other_cores:.2f}" for t in (diagonal, trace, brute))
            rows.append(
                [
                    name,
                    count_parameters(model),
                    n,
                    common.seconds(diagonal.median),
                    common.seconds(trace.median),
                    common.seconds(brute.median),
                    f"{diagonal.runs} / {trace.runs} / {brute.runs}",
                    f"{brute.median / diagonal.median:.0f}×",
                    f"{brute.median / trace.median:.0f}×",
                    f"{result['brute_total']:.9g}",
                    f"{result['diagonal_total']:.9g}",
                    f"{result['trace_total']:.9g}",
                    f"{result['trace_rel']:.1e}",
                    f"{result['diagonal_rel']:.1e}",
                    load,
                ]
            )
            common.print_row(rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(__doc__, DEFAULT_OUTPUT).parse_args(argv)
    settings = QUICK if args.quick else FULL
    run = common.Run(args, settings.threads)
    images, labels = common.mnist_test_images(
        args.mnist, max(settings.float32_sizes + settings.float64_sizes), settings.crop
    )

    notes = [
        f"data: the first n MNIST test images ({args.mnist}), normalised to [−1, 1]"
        + (f", cropped to {images.shape[-2]}×{images.shape[-1]} pixels" if settings.crop else ""),
        "models: untrained, torch.manual_seed(0) before building each; eval mode",
        "ours: `minsharp.hessian_diagonal` / `minsharp.hessian_trace` with batch_size = n (one "
        f"pass), median of up to {settings.ours_repeats} timed calls after 1 warm-up call "
        f"(fewer, but ≥ 3, when they exceed {settings.ours_budget_s:g} s); each call includes "
        "the engine's piecewise-linearity probe",
        "brute force: `minsharp.brute_force_hessian_diagonal` (one double-backward per "
        "parameter entry), no warm-up; median of 3 runs when one run takes < "
        f"{settings.brute_repeat_below_s:g} s, otherwise a **single run**",
        "contention: a timed call during which other processes kept more than "
        f"{settings.max_other_cores} cores busy (from /proc/stat) is discarded and made again "
        f"(for ours: up to 5× the repeats and {4 * settings.ours_budget_s:g} s in all; a single "
        "brute-force run: made again, twice at most, if its fastest run took < "
        f"{settings.brute_retry_below_s:g} s); 'timed runs' shows 'kept of made' when some "
        "were discarded; 'other load' is the largest load from other processes during a call "
        "the median uses (everything above the threshold means no quiet call was obtained)",
        "speed-up = brute-force time / our time; Tr H brute force = sum of its diagonal",
        "max rel. diff diag H = max over all entries of |ours − brute| / |brute| (entries where "
        "both are exactly 0 count as 0)",
    ]

    sections = []
    for dtype in (torch.float32, torch.float64):
        rows = run_dtype(settings, images, labels, dtype, args.wait_quiet)
        label = PRECISION_LABELS[dtype]
        sections.append(f"## {label}\n\n" + common.markdown_table(HEADER, rows))

    if run.quiet_note:
        run.quiet_note += f"; before each model/size it waits again, up to {args.wait_quiet:g} s"
    return run.finish(
        "Exactness and speed: exact engine vs brute-force Hessian diagonal (paper Fig. 1)",
        "float32 (paper) and float64 (exactness check)",
        notes,
        "\n".join(sections),
    )


if __name__ == "__main__":
    sys.exit(main())

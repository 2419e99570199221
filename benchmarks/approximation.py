"""The stochastic finite-difference diagonal estimators of the paper's Appendix G, against ours.

The baselines of the Minimum Sharpness paper estimated ``diag H`` without the exact engine
(theory §3): ``diag H ≈ (1/S) Σ_s v_s ⊙ (∇L(θ + r v_s) − ∇L(θ − r v_s)) / (2r)`` with central
differences of the gradient of the mean cross-entropy over all N examples, step r = 1e-5, and
directions ``v_s`` Gaussian (the arXiv version of normalized sharpness) or Rademacher (the ICML
version). Both are unbiased up to the O(r²) difference error, since ``E[v vᵀ] = I``. They are
re-implemented here only.

For SmallMLP and SmallCNN (untrained, the paper's Fig. 1 setting, n = 1000 MNIST test images,
float32 as in the paper, float64 as a control) the script draws up to S samples and reports,
at S ∈ {1, 3, 10, 30, ...}, the relative error ``‖d̂ − d‖₂ / ‖d‖₂`` of the estimated diagonal
against ours and the relative error of its sum (Tr H), with the time spent; our exact diagonal
and its time are the reference.

Usage::

    python benchmarks/approximation.py                                  # full run
    python benchmarks/approximation.py --quick --output /tmp/approx.md  # seconds

A full run took 93 s on 2 cores (the committed table).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad

import common
import minsharp
from minsharp.models import mlp, small_cnn, small_mlp

DEFAULT_OUTPUT = common.RESULTS_DIR / "approximation.md"
#: The finite-difference step of the paper's code.
STEP = 1e-5
DIRECTIONS = ("gaussian", "rademacher")


@dataclass(frozen=True)
class Settings(common.BaseSettings):
    """What one run measures."""

    models: dict[str, Callable[[], nn.Module]]
    examples: int
    crop: slice | None
    max_samples: int
    budget_s: float  # per model, dtype and direction: stop drawing after this long
    dtypes: tuple[torch.dtype, ...]


FULL = Settings(
    models={"SmallMLP 784-20-20-10": small_mlp, "SmallCNN": small_cnn},
    examples=1000,
    crop=None,
    max_samples=1000,
    budget_s=15.0,
    dtypes=(torch.float32, torch.float64),
)
QUICK = Settings(
    models={"tiny MLP 64-8-8-10": lambda: mlp(64, [8, 8], 10)},
    examples=16,
    crop=slice(10, 18),
    max_samples=10,
    budget_s=2.0,
    dtypes=(torch.float32,),
    quick=True,
)


HEADER = [
    "model",
    "dtype",
    "directions",
    "samples S",
    "estimator time (s)",
    "rel. error of diag (‖d̂ − d‖₂/‖d‖₂)",
    "rel. error of Tr H",
    "ours exact (s)",
    "estimator / ours (time)",
    "other load (cores)",
]


def checkpoints(limit: int) -> list[int]:
    """1, 3, 10, 30, ... up to ``limit``."""
    points, value = [], 1
    while value <= limit:
        points += [point for point in (value, 3 * value) if point <= limit]
        value *= 10
    return points


def loss_gradient(model: nn.Module, inputs: Tensor) -> Callable[[dict[str, Tensor]], dict]:
    """``θ ↦ ∇L(θ)`` for the mean cross-entropy at the model's own predictions' labels.

    The labels are the argmax of the logits at the given parameters: any fixed labels give
    the same Hessian (theory §1), and these keep the gradient small next to ``r H v``.
    """
    with torch.no_grad():
        labels = model(inputs).argmax(1)
    buffers = dict(model.named_buffers())

    def loss(parameters: dict[str, Tensor]) -> Tensor:
        logits = functional_call(model, {**parameters, **buffers}, (inputs,))
        return F.cross_entropy(logits, labels)

    return grad(loss)


def direction(like: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, dtype=like.dtype)
    return (torch.randint(0, 2, like.shape, generator=generator) * 2 - 1).to(like.dtype)


def estimate(
    model: nn.Module, inputs: Tensor, kind: str, settings: Settings, exact: Tensor
) -> list[tuple[int, float, float, float]]:
    """Draw samples; at each checkpoint (S, seconds, diagonal error, trace error).

    The seconds are those of drawing and differencing alone: the errors reported at the
    checkpoints are computed off the clock.
    """
    gradient = loss_gradient(model, inputs)
    parameters = {name: p.detach() for name, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    total = {name: torch.zeros_like(p) for name, p in parameters.items()}
    wanted = checkpoints(settings.max_samples)
    results = []
    gradient(parameters)  # warm-up: the first call of torch.func pays set-up costs
    elapsed = 0.0
    for sample in range(1, settings.max_samples + 1):
        start = time.perf_counter()
        v = {name: direction(p, kind, generator) for name, p in parameters.items()}
        plus = gradient({n: p + STEP * v[n] for n, p in parameters.items()})
        minus = gradient({n: p - STEP * v[n] for n, p in parameters.items()})
        for name in total:
            total[name] += v[name] * (plus[name] - minus[name]) / (2 * STEP)
        elapsed += time.perf_counter() - start
        if sample in wanted or elapsed > settings.budget_s:
            flat = torch.cat([t.reshape(-1) for t in total.values()]).double() / sample
            error = float((flat - exact).norm() / exact.norm())
            trace_error = float(abs(flat.sum() - exact.sum()) / exact.sum())
            results.append((sample, elapsed, error, trace_error))
        if elapsed > settings.budget_s:
            break
    return results


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(__doc__, DEFAULT_OUTPUT).parse_args(argv)
    settings = QUICK if args.quick else FULL
    run = common.Run(args, settings.threads)
    images, _ = common.mnist_test_images(args.mnist, settings.examples, settings.crop)

    rows, curves = [], {}
    for name, build in settings.models.items():
        for dtype in settings.dtypes:
            model = common.untrained(build, dtype)
            inputs = images.to(dtype)
            timing = common.timed_calls(
                lambda model=model, inputs=inputs: minsharp.hessian_diagonal(
                    model, inputs, batch_size=inputs.shape[0]
                ),
                repeats=5,
                max_other_cores=None,
            )
            diagonal: minsharp.CurvatureDiagonal = timing.result  # type: ignore[assignment]
            exact = torch.cat([diagonal[n].reshape(-1) for n, _ in model.named_parameters()])
            exact = exact.double()
            for kind in DIRECTIONS:
                monitor = common.OtherLoad()
                points = estimate(model, inputs, kind, settings, exact)
                curves[(name, str(dtype).removeprefix("torch."), kind)] = (points, timing.median)
                for samples, seconds, error, trace_error in points:
                    rows.append(
                        [
                            name,
                            str(dtype).removeprefix("torch."),
                            kind,
                            samples,
                            common.seconds(seconds),
                            f"{error:.2e}",
                            f"{trace_error:.2e}",
                            common.seconds(timing.median),
                            f"{seconds / timing.median:.0f}×",
                            f"{monitor.cores() or 0.0:.2f}",
                        ]
                    )
                    common.print_row(rows[-1])

    figure_path = plot(curves, args.output)
    notes = [
        f"data: the first {settings.examples} MNIST test images ({args.mnist}), normalised to "
        "[−1, 1]; models untrained (torch.manual_seed(0)), eval mode",
        f"estimator (theory §3, re-implemented here only): central differences with r = {STEP:g} "
        "of the full-batch gradient (torch.func.grad of the mean cross-entropy, labels = the "
        "model's own argmax), along Gaussian or Rademacher directions (seed 0), averaged; "
        f"stops at {settings.max_samples} samples or after {settings.budget_s:g} s per curve; "
        "its time leaves out the errors computed at the checkpoints",
        "reference: our exact `hessian_diagonal` in the same dtype; 'ours exact' is its "
        "median over 5 calls after a warm-up (not contention-filtered)",
        "in float32 the difference of two gradients r = 1e-5 apart keeps only a few digits, "
        "which bounds the accuracy the estimator can reach whatever the number of samples",
    ]
    body = common.markdown_table(HEADER, rows)
    body += common.figure_link(figure_path, "error against samples and time")
    title = "Finite-difference diagonal estimators (paper App. G) against the exact diagonal"
    return run.finish(title, "float32 (paper) and float64", notes, body)


def plot(curves: dict, output: object) -> object | None:
    if not curves:
        return None
    plt = common.pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))  # type: ignore[attr-defined]
    for (model, dtype, kind), (points, exact_seconds) in curves.items():
        samples = [p[0] for p in points]
        seconds = [p[1] for p in points]
        errors = [p[2] for p in points]
        label = f"{model}, {dtype}, {kind}"
        left.plot(samples, errors, marker="o", label=label)
        (line,) = right.plot(seconds, errors, marker="o", label=label)
        right.axvline(exact_seconds, color=line.get_color(), linestyle=":", linewidth=0.8)
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_ylabel("relative error of diag H")
    left.set_xlabel("samples S")
    right.set_xlabel("time (s); dotted: our exact diagonal's time (error 0)")
    right.legend(fontsize=6)
    return common.save_figure(figure, output, "error")  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())

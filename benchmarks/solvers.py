"""Minimum Sharpness: our Newton solve over the layer scales against the authors' gradient steps.

Minimum Sharpness (theory §2) minimises over the layer-wise scales α (Π α_l = 1) the trace
``F(u) = Σ_{l<L} T^W_l e^{−2u_l} + Σ_{l<L} T^b_l e^{−2 Σ_{m≤l} u_m} + T^W_L e^{2 Σ_{m<L} u_m}
+ T^b_L`` of the rescaled network, ``u_l = log α_l``, from the exact per-layer traces. Ours:
``minsharp.measures.minimum_sharpness.solve_scales`` (closed form without biases, Newton with a
line search otherwise). The authors' procedure, re-implemented here only: 10 000 steps of SGD
with learning rate 1 on ``F(u) / F(0)`` from u = 0 (the scale-normalised objective, as their
code does), in float64, and the same with learning rate 0.1.

Networks: SmallMLP, the paper's MLP, SmallCNN and LeNet (``minsharp.models``), at
initialisation and after a short training with the paper's optimiser on MNIST test images
1000..9999; traces over the first 1000 test images (float64). Both answers are judged by the
same certificate, the relative gradient norm ``‖∇_u F‖₂ / F`` at the scales they return, and
by their values. (Normalized sharpness, the other solver: ``normalized_sharpness_solver.py``.)

Usage::

    python benchmarks/solvers.py                                   # full run
    python benchmarks/solvers.py --quick --output /tmp/solvers.md  # seconds

A full run took 54 s on 2 cores (the committed table).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import common
import minsharp
from minsharp.models import lenet, mlp, paper_mlp, small_cnn, small_mlp
from minsharp.solvers.chain import ScaleSolution, solve_scales
from minsharp.symmetry.layerwise import chain_layers
from minsharp.training import TrainingConfig

DEFAULT_OUTPUT = common.RESULTS_DIR / "solvers.md"


@dataclass(frozen=True)
class Settings(common.BaseSettings):
    """What one run measures."""

    models: dict[str, Callable[[], nn.Module]]
    trained: tuple[str, ...]  # the models also measured after training
    examples: int
    crop: slice | None
    training: TrainingConfig
    training_images: slice
    steps: int
    learning_rates: tuple[float, ...]
    repeats: int


FULL = Settings(
    models={
        "SmallMLP": small_mlp,
        "paper MLP": paper_mlp,
        "SmallCNN": small_cnn,
        "LeNet": lenet,
    },
    trained=("SmallMLP", "paper MLP", "SmallCNN"),
    examples=1000,
    crop=None,
    training=TrainingConfig(epochs=5, batch_size=1024, lr=0.1),
    training_images=slice(1000, 10000),
    steps=10_000,
    learning_rates=(1.0, 0.1),
    repeats=20,
)
QUICK = Settings(
    models={"tiny MLP 64-8-8-10": lambda: mlp(64, [8, 8], 10)},
    trained=("tiny MLP 64-8-8-10",),
    examples=32,
    crop=slice(10, 18),
    training=TrainingConfig(epochs=1, batch_size=64, lr=0.1),
    training_images=slice(1000, 1256),
    steps=200,
    learning_rates=(1.0, 0.1),
    repeats=2,
    quick=True,
)


HEADER = [
    "model",
    "state",
    "layers L",
    "Tr H",
    "ours: method",
    "ours: Newton steps",
    "ours: solve (ms)",
    "ours: MS",
    "ours: ‖∇_u F‖/F",
    "SGD step",
    "authors' SGD: s",
    "authors' SGD: MS",
    "authors' SGD: ‖∇_u F‖/F",
    "SGD / ours − 1",
    "SGD time / ours",
    "max other load (cores)",
]


def objective(weight: Tensor, bias: Tensor, u: Tensor) -> Tensor:
    """``F(u)`` of theory §2 for traces ``weight``, ``bias`` (L,) and log-scales u (L − 1,)."""
    cumulative = torch.cumsum(u, 0)
    return (
        (weight[:-1] * (-2 * u).exp()).sum()
        + (bias[:-1] * (-2 * cumulative).exp()).sum()
        + weight[-1] * (2 * cumulative[-1]).exp()
        + bias[-1]
    )


def certificate(weight: Tensor, bias: Tensor, u: Tensor) -> tuple[float, float]:
    """``F(u)`` and ``‖∇_u F‖₂ / F`` (float64, autograd)."""
    point = u.detach().clone().requires_grad_()
    value = objective(weight, bias, point)
    (gradient,) = torch.autograd.grad(value, point)
    return float(value.detach()), float(gradient.norm()) / float(value.detach())


def authors_procedure(
    weight: Tensor, bias: Tensor, steps: int, lr: float
) -> tuple[Tensor, float, float]:
    """SGD with a fixed step on ``F(u) / F(0)`` from u = 0: the final u, seconds, other load."""
    u = torch.zeros(weight.shape[0] - 1, dtype=torch.float64, requires_grad=True)
    seconds, other = common.scaled_descent(lambda: objective(weight, bias, u), [u], steps, lr)
    return u.detach(), seconds, other


def layer_traces(model: nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Per chain layer ``T^W_l`` and ``T^b_l`` (float64), in forward order."""
    order = chain_layers(model, inputs[:8])
    layers = minsharp.hessian_trace(model, inputs, batch_size=inputs.shape[0]).by_layer()
    weight = torch.tensor([layers[name]["weight"] for name in order], dtype=torch.float64)
    bias = torch.tensor([layers[name].get("bias", 0.0) for name in order], dtype=torch.float64)
    return weight, bias


def compare(
    label: str, state: str, model: nn.Module, inputs: Tensor, settings: Settings
) -> list[list[object]]:
    weight, bias = layer_traces(model, inputs)
    weights, biases = weight.tolist(), bias.tolist()
    timing = common.timed_calls(
        lambda: solve_scales(weights, biases),
        repeats=settings.repeats,
        max_other_cores=settings.max_other_cores,
    )
    solution: ScaleSolution = timing.result  # type: ignore[assignment]
    if solution.alphas is not None:
        ours_u = torch.tensor([math.log(a) for a in solution.alphas[:-1]], dtype=torch.float64)
        ours_value, ours_kkt = certificate(weight, bias, ours_u)
    else:
        ours_value, ours_kkt = solution.value, float("nan")
    rows = []
    for lr in settings.learning_rates:
        gd_u, gd_seconds, gd_other = authors_procedure(weight, bias, settings.steps, lr)
        gd_value, gd_kkt = certificate(weight, bias, gd_u)
        finite = math.isfinite(gd_value)
        rows.append(
            [
                label,
                state,
                weight.shape[0],
                f"{float(weight.sum() + bias.sum()):.6g}",
                solution.certificate.method,
                solution.certificate.iterations,
                f"{timing.median * 1e3:.3f}",
                f"{ours_value:.12g}",
                f"{ours_kkt:.1e}",
                f"{lr:g}",
                f"{gd_seconds:.2f}",
                f"{gd_value:.12g}" if finite else "diverged",
                f"{gd_kkt:.1e}" if finite else "—",
                f"{gd_value / ours_value - 1:.1e}" if finite else "—",
                f"{gd_seconds / timing.median:.0f}×",
                f"{max(timing.max_other_cores, gd_other):.2f}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(__doc__, DEFAULT_OUTPUT).parse_args(argv)
    settings = QUICK if args.quick else FULL
    run = common.Run(args, settings.threads)
    images, labels = common.mnist_test_images(
        args.mnist, settings.training_images.stop, settings.crop
    )
    measured = images[: settings.examples].double()

    rows = []
    for label, build in settings.models.items():
        model = common.untrained(build, torch.float64)
        states = ("init", "trained") if label in settings.trained else ("init",)
        for state in states:
            if state == "trained":
                common.train_on_test_images(
                    model, images, labels, settings.training_images, settings.training
                )
            for row in compare(label, state, model, measured, settings):
                rows.append(row)
                common.print_row(row)

    notes = [
        f"traces: `minsharp.hessian_trace` over the first {settings.examples} MNIST test images "
        "(normalised to [−1, 1]), float64 models; layer order from `minsharp.symmetry.layerwise."
        "chain_layers`",
        common.training_note(settings.training_images, settings.training),
        f"ours: `solve_scales` timed over {settings.repeats} calls after a warm-up "
        "(contention-filtered); certificate recomputed by this script with autograd",
        f"authors' procedure: {settings.steps} steps of `torch.optim.SGD` on F(u)/F(0) from "
        "u = 0, float64, one run per step size (its time includes autograd): lr = 1 as in "
        "the authors' code, and the smaller fixed step lr = 0.1 ('diverged' where a run did)",
    ]
    title = "Minimum Sharpness: Newton over the layer scales against 10 000 gradient steps"
    return run.finish(title, "float64", notes, common.markdown_table(HEADER, rows))


if __name__ == "__main__":
    sys.exit(main())

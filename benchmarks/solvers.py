"""Minimum Sharpness: our Newton solve over the layer scales against the authors' gradient steps.

Minimum Sharpness (MATH §2) minimises over the layer-wise scales α (Π α_l = 1) the trace
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

    python benchmarks/solvers.py                                  # a few minutes
    python benchmarks/solvers.py --quick --output /tmp/solvers.md # seconds
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import common
import minsharp
from minsharp.data import load_mnist_split
from minsharp.measures.minimum_sharpness import solve_scales
from minsharp.models import lenet, mlp, paper_mlp, small_cnn, small_mlp
from minsharp.symmetry import chain_layers
from minsharp.train import TrainingConfig, train_classifier

DEFAULT_OUTPUT = common.RESULTS_DIR / "solvers.md"


@dataclass(frozen=True)
class Settings:
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
    threads: int
    max_other_cores: float | None


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
    threads=common.THREADS,
    max_other_cores=common.QUIET_CORES,
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
    threads=1,  # immune to stalls from other processes (see common.QUICK_NOTE)
    max_other_cores=None,
)


def objective(weight: Tensor, bias: Tensor, u: Tensor) -> Tensor:
    """``F(u)`` of MATH §2 for traces ``weight``, ``bias`` (L,) and log-scales u (L − 1,)."""
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


def authors_procedure(weight: Tensor, bias: Tensor, steps: int, lr: float) -> tuple[Tensor, float]:
    """SGD with a fixed step on ``F(u) / F(0)`` from u = 0; the final u and the seconds taken."""
    u = torch.zeros(weight.shape[0] - 1, dtype=torch.float64, requires_grad=True)
    scale = float(objective(weight, bias, u.detach()))
    optimizer = torch.optim.SGD([u], lr=lr)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = objective(weight, bias, u) / scale
        loss.backward()
        optimizer.step()
    return u.detach(), time.perf_counter() - start


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
    timing = common.timed_calls(
        lambda: solve_scales(weight.tolist(), bias.tolist()),
        repeats=settings.repeats,
        max_other_cores=settings.max_other_cores,
    )
    solution = solve_scales(weight.tolist(), bias.tolist())
    if solution.alphas is not None:
        ours_u = torch.tensor([math.log(a) for a in solution.alphas[:-1]], dtype=torch.float64)
        ours_value, ours_kkt = certificate(weight, bias, ours_u)
    else:
        ours_value, ours_kkt = solution.value, float("nan")
    rows = []
    for lr in settings.learning_rates:
        monitor = common.OtherLoad()
        gd_u, gd_seconds = authors_procedure(weight, bias, settings.steps, lr)
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
                f"{max(timing.max_other_cores, monitor.cores() or 0.0):.2f}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0], DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    common.setup_torch(settings.threads)
    quiet_note = common.wait_until_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    started = time.perf_counter()
    other_load = common.OtherLoad()
    images, labels = load_mnist_split(args.mnist, "test")
    if settings.crop is not None:
        images = images[:, :, settings.crop, settings.crop].contiguous()
    measured = images[: settings.examples].double()

    rows = []
    for label, build in settings.models.items():
        torch.manual_seed(0)
        model = build().double().eval()
        rows += compare(label, "init", model, measured, settings)
        print(" | ".join(str(cell) for cell in rows[-1]), flush=True)
        if label in settings.trained:
            train_x = images[settings.training_images].double()
            train_y = labels[settings.training_images]
            train_classifier(model, train_x, train_y, settings.training)
            model.eval()
            rows += compare(label, "trained", model, measured, settings)
            print(" | ".join(str(cell) for cell in rows[-1]), flush=True)

    header = [
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
    config = settings.training
    notes = [
        f"traces: `minsharp.hessian_trace` over the first {settings.examples} MNIST test images "
        "(normalised to [−1, 1]), float64 models; layer order from `minsharp.symmetry."
        "chain_layers`",
        f"states: `init` = torch.manual_seed(0); `trained` = then `train_classifier` on test "
        f"images {settings.training_images.start}..{settings.training_images.stop - 1} (SGD "
        f"momentum {config.momentum}, weight decay {config.weight_decay:g}, batch "
        f"{config.batch_size}, lr {config.lr:g}/(1 + {config.lr_decay:g} t), {config.epochs} "
        "epochs)",
        f"ours: `solve_scales` timed over {settings.repeats} calls after a warm-up "
        "(contention-filtered); certificate recomputed by this script with autograd",
        f"authors' procedure: {settings.steps} steps of `torch.optim.SGD` on F(u)/F(0) from "
        "u = 0, float64, one run per step size (its time includes autograd): lr = 1 as in "
        "the authors' code, and lr = 0.1, a fixed step small enough not to diverge here",
    ]
    if args.quick:
        notes.insert(0, common.QUICK_NOTE)
    elapsed = time.perf_counter() - started
    notes.append(f"total script time: {elapsed:.0f} s; {common.load_note()}")
    notes.append(other_load.describe())
    if quiet_note:
        notes.append(quiet_note)
    text = common.machine_header(
        "Minimum Sharpness: Newton over the layer scales against 10 000 gradient steps",
        "float64",
        notes,
    )
    text += "\n" + common.markdown_table(header, rows)
    common.write_atomically(args.output, text)
    print(f"wrote {args.output} in {elapsed:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

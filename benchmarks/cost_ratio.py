"""Cost of the exact trace and diagonal, with default options, against a training step and BackPACK.

Every network is untrained (``torch.manual_seed(0)``), in eval mode, float32, on the first N
MNIST test images (random labels in 0..K−1; the Hessian does not depend on them). Per
network, four workloads on the same data, timed interleaved in rotating rounds after a
warm-up, medians compared within the run:

* the training step: ``zero_grad``, forward, mean cross-entropy, ``.backward()``;
* ours as a user calls them: ``minsharp.hessian_trace(model, X)`` and
  ``minsharp.hessian_diagonal(model, X)``, default options (the engine sizes its batches);
* BackPACK 1.7 ``DiagGGNExact`` (the exact GGN diagonal, equal to the Hessian diagonal on
  these piecewise-linear networks), on the whole data as one batch, or on batches of
  ``2^28 / (K · max(K, A))`` examples where its (K, B, K) and (K, B, A) factors would
  exceed 1 GiB (A: the largest module output of one example).

Bars (K = 10, 784-100-100-10): trace ≤ 1.5× and diagonal ≤ 2.0× one training step; BackPACK ÷
our diagonal ≥ 2 on 784-100-100-10, SmallMLP, SmallCNN, LeNet and ResNet-20 (with
batch-norm), ≥ 5 at K = 100; our peak memory ≤ BackPACK's. K = 1000 has no bar.

Usage::

    python benchmarks/cost_ratio.py --wait-quiet 60                # full run
    python benchmarks/cost_ratio.py --quick --output /tmp/cost.md  # seconds
    python benchmarks/cost_ratio.py --profile  # also profile our diagonal on every network

A full run took 8 minutes on 2 cores (``benchmarks/results/cost_ratio.md``: 495 s).
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import torch
from torch import Tensor, nn

import common
import minsharp
from minsharp.models import build_model, count_parameters, mlp

DEFAULT_OUTPUT = common.RESULTS_DIR / "cost_ratio.md"
#: Largest acceptable ratio to one training step (784-100-100-10, K = 10).
STEP_BARS = {"trace": 1.5, "diagonal": 2.0}
#: Largest elements of BackPACK's factors (K, B, K) and (K, B, A) at once: 2^28 floats, 1 GiB.
FACTOR_ELEMENTS = 1 << 28
WORKLOADS = ("training", "trace", "diagonal", "BackPACK")


@dataclass(frozen=True)
class Network:
    """One row: a network, its data size and the bars it must meet."""

    label: str
    build: Callable[[], nn.Module]
    images: bool  # images (N, 1, H, W) rather than flattened inputs
    classes: int
    examples: int
    step_bars: bool = False  # the training-step bars apply
    backpack_bar: float | None = None  # BackPACK ÷ our diagonal must reach this


@dataclass(frozen=True)
class Settings(common.BaseSettings):
    """What one run measures."""

    networks: tuple[Network, ...]
    side: int  # images are cropped to side × side
    repeats: int  # timed rounds kept at most
    budget_s: float  # timed rounds of one network stop after about this long


def _mlp(hidden: list[int], classes: int, side: int) -> Callable[[], nn.Module]:
    return lambda: mlp(side * side, hidden, classes)


def _zoo(name: str, classes: int, side: int, **options: object) -> Callable[[], nn.Module]:
    return lambda: build_model(name, (1, side, side), classes, **options)


def _networks(side: int, examples: int, resnet_examples: int) -> tuple[Network, ...]:
    n = examples
    return (
        Network("784-100-100-10", _mlp([100, 100], 10, side), False, 10, n, True, 2.0),
        Network("SmallMLP 784-20-20-10", _zoo("small_mlp", 10, side), False, 10, n, False, 2.0),
        Network("SmallCNN", _zoo("small_cnn", 10, side), True, 10, n, False, 2.0),
        Network("LeNet", _zoo("lenet", 10, side), True, 10, n, False, 2.0),
        Network(
            "ResNet-20, batch-norm",
            _zoo("resnet20", 10, side, batchnorm=True),
            True,
            10,
            resnet_examples,
            False,
            2.0,
        ),
        Network("784-100-100-100", _mlp([100, 100], 100, side), False, 100, n, False, 5.0),
        Network("784-100-100-1000", _mlp([100, 100], 1000, side), False, 1000, n),
    )


FULL = Settings(networks=_networks(28, 1000, 128), side=28, repeats=15, budget_s=40.0)
QUICK = Settings(networks=_networks(16, 24, 8), side=16, repeats=2, budget_s=1.0, quick=True)


def backpack_diagonal(
    model: nn.Module, batches: list[tuple[Tensor, Tensor]]
) -> Callable[[], Tensor]:
    """BackPACK ``DiagGGNExact`` of the mean cross-entropy over ``batches``, flattened."""
    backpack, _ = common.optional_module("backpack")
    extensions, _ = common.optional_module("backpack.extensions")
    converter = type(model) is not nn.Sequential or any(
        type(m).__name__ == "BasicBlock" for m in model.modules()
    )
    extended = backpack.extend(copy.deepcopy(model), use_converter=converter)  # type: ignore[union-attr]
    loss_function = backpack.extend(nn.CrossEntropyLoss(reduction="sum"))  # type: ignore[union-attr]
    total = sum(x.shape[0] for x, _ in batches)

    def run() -> Tensor:
        sums: list[Tensor] = []
        for inputs, labels in batches:
            extended.zero_grad()
            loss = loss_function(extended(inputs), labels)
            with backpack.backpack(extensions.DiagGGNExact()):  # type: ignore[union-attr]
                loss.backward()
            found = [p.diag_ggn_exact.reshape(-1) for p in extended.parameters()]
            sums = found if not sums else [a + b for a, b in zip(sums, found, strict=True)]
        return torch.cat(sums) / total

    return run


def workloads(
    network: Network, images: Tensor
) -> tuple[nn.Module, dict[str, Callable[[], object]]]:
    """The network, and its four workloads on the same data (see the module text)."""
    model = common.untrained(network.build)
    inputs = images[: network.examples]
    inputs = inputs if network.images else inputs.flatten(1)
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, network.classes, (inputs.shape[0],), generator=generator)

    functions: dict[str, Callable[[], object]] = {
        "training": common.training_step(model, inputs, labels),
        "trace": lambda: minsharp.hessian_trace(model, inputs),
        "diagonal": lambda: minsharp.hessian_diagonal(model, inputs),
    }
    if common.optional_module("backpack")[0] is not None:
        widest = max(network.classes, _largest_output(model, inputs))
        size = max(1, min(inputs.shape[0], FACTOR_ELEMENTS // (network.classes * widest)))
        batches = list(zip(inputs.split(size), labels.split(size), strict=True))
        functions["BackPACK"] = backpack_diagonal(model, batches)
    return model, functions


def _largest_output(model: nn.Module, inputs: Tensor) -> int:
    sizes: list[int] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()))
        for m in model.modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        model(inputs[:1])
    for handle in handles:
        handle.remove()
    return max(sizes)


def agreement(model: nn.Module, ours: minsharp.CurvatureDiagonal, peer: Tensor) -> str:
    """Largest entrywise difference of BackPACK's diagonal to ours, over our largest entry."""
    flat = torch.cat([ours[name].reshape(-1).double() for name, _ in model.named_parameters()])
    return f"{((peer.double() - flat).abs().max() / flat.abs().max()).item():.1e}"


def measure(network: Network, images: Tensor, settings: Settings) -> tuple[list[object], str]:
    """One table row, and the memory row's cells."""
    model, functions = workloads(network, images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BackPACK's hook and converter warnings
        memory = {}
        results = {}
        for name, function in functions.items():
            function()  # warm-up: one-time initialisation is not the call's memory
            results[name], memory[name], _ = common.peak_memory_mib(function)
        timings, rounds = common.timed_rounds(
            functions,
            repeats=settings.repeats,
            max_rounds=5 * settings.repeats,
            max_other_cores=settings.max_other_cores,
            budget_s=settings.budget_s,
        )
    median = {name: timing.median for name, timing in timings.items()}
    step = median["training"]
    ratios = {name: median[name] / step for name in median}
    has_peer = "BackPACK" in median
    speedup = median["BackPACK"] / median["diagonal"] if has_peer else None
    row: list[object] = [
        network.label,
        network.classes,
        network.examples,
        count_parameters(model),
        f"{len(timings['training'].kept)} of {rounds}",
        f"{max(t.max_other_cores for t in timings.values()):.2f}",
        f"{step * 1e3:.1f}",
        f"{ratios['trace']:.2f}×",
        _bar(ratios["trace"] <= STEP_BARS["trace"]) if network.step_bars else "no bar",
        f"{ratios['diagonal']:.2f}×",
        _bar(ratios["diagonal"] <= STEP_BARS["diagonal"]) if network.step_bars else "no bar",
        f"{ratios['BackPACK']:.2f}×" if has_peer else "not installed",
        f"{speedup:.2f}×" if speedup is not None else "—",
        _backpack_verdict(network, speedup),
        agreement(model, results["diagonal"], results["BackPACK"]) if has_peer else "—",
    ]
    cells = [_mib(memory.get(name)) for name in WORKLOADS]
    ours = max(memory["trace"] or 0.0, memory["diagonal"] or 0.0)
    peer = memory.get("BackPACK")
    # 1 MiB of slack: below that the resident-set figures are page-granular noise.
    verdict = "n/a" if peer is None else _bar(ours <= peer + 1.0)
    return row, " | ".join([network.label, *cells, verdict])


def _bar(passed: bool) -> str:
    return common.verdict(passed)


def _backpack_verdict(network: Network, speedup: float | None) -> str:
    if network.backpack_bar is None:
        return "no bar"
    if speedup is None:
        return "n/a (BackPACK not installed)"
    return f"{_bar(speedup >= network.backpack_bar)} (≥ {network.backpack_bar:g}×)"


def _mib(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


HEADER = [
    "network",
    "K",
    "N",
    "params",
    "rounds kept",
    "max other load (cores)",
    "training step (ms)",
    "trace / step",
    f"trace bar ≤ {STEP_BARS['trace']:g}×",
    "diagonal / step",
    f"diagonal bar ≤ {STEP_BARS['diagonal']:g}×",
    "BackPACK / step",
    "BackPACK ÷ ours (diagonal)",
    "BackPACK bar",
    "max rel. diff BackPACK vs ours",
]
MEMORY_HEADER = [
    "network",
    *(f"{name} peak (MiB)" for name in WORKLOADS),
    "memory bar: ours ≤ BackPACK",
]


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__, DEFAULT_OUTPUT)
    parser.add_argument(
        "--profile", action="store_true", help="append torch.profiler tables of our diagonal"
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    run = common.Run(args, settings.threads)
    most = max(network.examples for network in settings.networks)
    crop = slice(0, settings.side)
    images, _ = common.mnist_test_images(args.mnist, most, crop)
    rows, memory_rows, profiles = [], [], ""
    for network in settings.networks:
        row, memory = measure(network, images, settings)
        rows.append(row)
        memory_rows.append(memory)
        common.print_row(row)
        if args.profile:
            _, functions = workloads(network, images)
            profiles += f"\n## torch.profiler: our diagonal, {network.label}\n\n```\n"
            profiles += profile_table(functions["diagonal"]) + "```\n"
    try:
        version = metadata.version("backpack-for-pytorch")
    except metadata.PackageNotFoundError:
        version = "not installed"
    notes = [
        f"networks: `minsharp.models` (`mlp(784, [100, 100], K)`, `small_mlp`, `small_cnn`, "
        f"`lenet`, `resnet20(1, 10, batchnorm=True)`), untrained, eval mode, on "
        f"{settings.side}×{settings.side} MNIST test images normalised to [−1, 1]",
        "ours: `minsharp.hessian_trace(model, X)` / `minsharp.hessian_diagonal(model, X)` with "
        "default options (batch_size=None: batches from the engine's memory budget, 1 GiB and "
        "no tensor over 32 MiB); each call includes its input checks, the model checks and "
        "(for networks that are not a plain nn.Sequential, ResNet-20 here) the "
        "piecewise-linearity probe on 8 examples",
        f"BackPACK {version}: `extend(model)` (`use_converter=True` for ResNet-20) and "
        "`DiagGGNExact` on the mean cross-entropy, whole data as one batch unless its factors "
        "would exceed 1 GiB (K = 1000: batches of 2^28 / K² examples); set-up outside the "
        "timed calls",
        f"timing: two calls of each (a warm-up, then one that gives its peak memory), then "
        f"rounds of the "
        f"four in rotating order until {settings.repeats} rounds are kept or "
        f"{settings.budget_s:g} s have passed; a round during which other processes kept more "
        f"than {settings.max_other_cores} cores busy is discarded; ratios are of medians, "
        "within one run; verdicts are computed by the script",
        common.MEMORY_METHOD,
    ]
    body = common.markdown_table(HEADER, rows)
    body += "\n## Peak memory of one call\n\n" + "| " + " | ".join(MEMORY_HEADER) + " |\n"
    body += "| " + " | ".join("---" for _ in MEMORY_HEADER) + " |\n"
    body += "".join(f"| {line} |\n" for line in memory_rows) + profiles
    title = "Cost of the exact curvature with default options: training step and BackPACK"
    return run.finish(title, "float32", notes, body)


def profile_table(function: Callable[[], object], rows: int = 15) -> str:
    """torch.profiler's operator table (by self CPU time) over three calls of ``function``."""
    from torch.profiler import ProfilerActivity, profile

    function()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(3):
            function()
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


if __name__ == "__main__":
    sys.exit(main())

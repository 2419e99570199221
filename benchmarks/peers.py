"""Exact Hessian diagonal and trace against the peers, side by side in one process.

Exact diagonals: ours (``minsharp.hessian_diagonal`` / ``hessian_trace``) against BackPACK
(``DiagGGNExact`` and ``DiagHessian``), ASDL (exact Fisher diagonal of the cross-entropy,
``FISHER_EXACT`` / ``SHAPE_DIAG``) and nngeometry (``FIM`` with ``PMatDiag``, the closed-form
Fisher of the softmax). On these piecewise-linear networks all four compute the same
quantity (the GGN equals the Hessian block, theory §1), which the table checks. Networks:
``minsharp.models`` SmallMLP, SmallCNN, the paper's MLP 784-512-128-512-K and LeNet, untrained,
on N ∈ {1000, 4000} MNIST test images, with K ∈ {10, 100, 1000} classes (random labels; the
Hessian does not depend on them). Every method runs on the same batches of B examples.

Stochastic traces: Hutchinson's estimator with 100 Rademacher products from PyHessian,
curvlinops and minsharp (``hutchinson_trace`` measure), on the same data, against our exact
trace: time, the error each actually made, and the products (and time) a 1 % standard error
would need.

Usage::

    python benchmarks/peers.py                                 # full run
    python benchmarks/peers.py --quick --output /tmp/peers.md  # seconds
    make bench-setup                                           # installs the peers

A full run took 28 minutes on 2 cores (the committed table: 1677 s).
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import common
import minsharp
from minsharp.measures.curvature_baselines import hutchinson_trace
from minsharp.models import build_model, count_parameters

DEFAULT_OUTPUT = common.RESULTS_DIR / "peers.md"

MODEL_LABELS = {
    "small_mlp": "SmallMLP",
    "paper_mlp": "paper MLP",
    "small_cnn": "SmallCNN",
    "lenet": "LeNet",
}
MLPS = ("small_mlp", "paper_mlp", "mlp")
#: Speed-up over BackPACK DiagGGNExact that the MLP bars ask for, by class count.
MLP_BARS = {10: 2.0, 1000: 5.0}
OURS = ("minsharp diagonal", "minsharp trace")
PEERS = (
    "BackPACK DiagGGNExact",
    "BackPACK DiagHessian",
    "ASDL exact Fisher diag",
    "nngeometry FIM PMatDiag",
)
#: Random vectors curvlinops multiplies at once in the Hutchinson comparison.
CURVLINOPS_CHUNK = 10
#: Largest elements of the K cotangents the peers hold at once, (K, B, K) at the logits and
#: (K, B, activation) at each layer's output: fixes B for large K (2^28 floats = 1 GiB).
FACTOR_ELEMENTS = 1 << 28


@dataclass(frozen=True)
class Settings(common.BaseSettings):
    """What one run measures."""

    models: tuple[str, ...]
    sizes: tuple[int, ...]
    classes: tuple[int, ...]
    image: int  # side of the (cropped) images
    max_batch: int
    repeats: int  # timed calls kept per method (cheap methods)
    cap_s: float  # a method predicted to take longer per call is not run
    single_above_s: float  # a method predicted to take longer is timed once
    rounds_budget_s: float  # timed rounds of one configuration stop after this long
    hutchinson_models: tuple[str, ...]
    hutchinson_size: int
    hutchinson_classes: int
    products: int
    hidden: dict[str, object] = field(default_factory=dict)


FULL = Settings(
    models=("small_mlp", "paper_mlp", "small_cnn", "lenet"),
    sizes=(1000, 4000),
    classes=(10, 100, 1000),
    image=28,
    max_batch=1000,
    repeats=5,
    cap_s=30.0,
    single_above_s=4.0,
    rounds_budget_s=15.0,
    hutchinson_models=("small_mlp", "paper_mlp", "small_cnn", "lenet"),
    hutchinson_size=1000,
    hutchinson_classes=10,
    products=100,
)
QUICK = Settings(
    models=("mlp", "small_cnn"),
    sizes=(32,),
    classes=(10, 30),
    image=16,
    max_batch=32,
    repeats=2,
    cap_s=5.0,
    single_above_s=1.0,
    rounds_budget_s=2.0,
    hutchinson_models=("mlp",),
    hutchinson_size=32,
    hutchinson_classes=10,
    products=10,
    hidden={"hidden": [16, 8]},
    quick=True,
)


def model_for(name: str, classes: int, settings: Settings) -> nn.Module:
    options = settings.hidden if name == "mlp" else {}
    shape = (1, settings.image, settings.image)
    return common.untrained(lambda: build_model(name, shape, classes, **options))


def batch_size(examples: int, classes: int, activation: int, settings: Settings) -> int:
    """Examples per batch, the same for every method: the peers' factors stay ≤ 1 GiB.

    ``activation``: elements of the largest layer output of one example. A peer that holds
    the K cotangents of a whole batch at once (BackPACK, ASDL) at K = 1000 on a CNN would
    otherwise need tens of GiB.
    """
    widest = max(classes, activation)
    return max(1, min(examples, settings.max_batch, FACTOR_ELEMENTS // (classes * widest)))


def largest_activation(model: nn.Module, example: Tensor) -> int:
    """Elements of the largest module output for one example."""
    sizes: list[int] = []
    handles = [
        module.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()))
        for module in model.modules()
        if not list(module.children())
    ]
    with torch.no_grad():
        model(example[:1])
    for handle in handles:
        handle.remove()
    return max(sizes)


def batches(inputs: Tensor, labels: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return list(zip(inputs.split(size), labels.split(size), strict=True))


# ---------------------------------------------------------------------------------------------
# The methods: each returns the diagonal as one flat vector (or the trace), as a float64 tensor
# ---------------------------------------------------------------------------------------------

Method = Callable[[list[tuple[Tensor, Tensor]]], Tensor]


def flat(model: nn.Module, values: dict[str, Tensor]) -> Tensor:
    return torch.cat([values[name].reshape(-1).double() for name, _ in model.named_parameters()])


def ours_diagonal(model: nn.Module) -> Method:
    def run(data: list[tuple[Tensor, Tensor]]) -> Tensor:
        return flat(model, minsharp.hessian_diagonal(model, data).by_parameter)

    return run


def ours_trace(model: nn.Module) -> Method:
    def run(data: list[tuple[Tensor, Tensor]]) -> Tensor:
        return torch.tensor(minsharp.hessian_trace(model, data).total)

    return run


def backpack_method(model: nn.Module, extension_name: str) -> Method:
    backpack, _ = common.optional_module("backpack")
    extensions, _ = common.optional_module("backpack.extensions")
    extended = backpack.extend(copy.deepcopy(model))  # type: ignore[union-attr]
    loss_function = backpack.extend(nn.CrossEntropyLoss(reduction="sum"))  # type: ignore[union-attr]
    extension = getattr(extensions, extension_name)
    attribute = "diag_ggn_exact" if extension_name == "DiagGGNExact" else "diag_h"

    def run(data: list[tuple[Tensor, Tensor]]) -> Tensor:
        total = sum(x.shape[0] for x, _ in data)
        sums: dict[str, Tensor] = {}
        for inputs, labels in data:
            extended.zero_grad()
            loss = loss_function(extended(inputs), labels)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with backpack.backpack(extension()):  # type: ignore[union-attr]
                    loss.backward()
            for name, parameter in extended.named_parameters():
                value = getattr(parameter, attribute)
                sums[name] = value if name not in sums else sums[name] + value
        return flat(extended, sums) / total

    return run


def asdl_method(model: nn.Module) -> Method:
    asdl, _ = common.optional_module("asdl")
    copied = copy.deepcopy(model)

    def run(data: list[tuple[Tensor, Tensor]]) -> Tensor:
        total = sum(x.shape[0] for x, _ in data)
        config = asdl.FisherConfig(  # type: ignore[union-attr]
            fisher_type=asdl.FISHER_EXACT,  # type: ignore[union-attr]
            fisher_shapes=[asdl.SHAPE_DIAG],  # type: ignore[union-attr]
            loss_type=asdl.LOSS_CROSS_ENTROPY,  # type: ignore[union-attr]
            data_size=total,
        )
        maker = asdl.get_fisher_maker(copied, config)  # type: ignore[union-attr]
        for index, (inputs, labels) in enumerate(data):
            logits = maker.setup_model_call(copied, inputs)
            maker.setup_loss_call(F.cross_entropy, logits, labels)
            maker.forward_and_backward(accumulate=index > 0)
        values = {}
        for module_name, module in copied.named_modules():
            fisher = getattr(module, "fisher", None)
            if fisher is None:
                continue
            for local in ("weight", "bias"):
                values[f"{module_name}.{local}"] = getattr(fisher.diag, local)
            del module.fisher
        return flat(copied, values)

    return run


def nngeometry_method(model: nn.Module) -> Method:
    nngeometry, _ = common.optional_module("nngeometry")
    pspace, _ = common.optional_module("nngeometry.object")

    def run(data: list[tuple[Tensor, Tensor]]) -> Tensor:
        inputs = torch.cat([x for x, _ in data])
        labels = torch.cat([y for _, y in data])
        loader = DataLoader(TensorDataset(inputs, labels), batch_size=data[0][0].shape[0])
        matrix = nngeometry.FIM(  # type: ignore[union-attr]
            model,
            loader,
            pspace.PMatDiag,
            variant="classif_logits",  # type: ignore[union-attr]
        )
        return matrix.get_diag().double()

    return run


PEER_MODULES = {
    "BackPACK DiagGGNExact": "backpack",
    "BackPACK DiagHessian": "backpack",
    "ASDL exact Fisher diag": "asdl",
    "nngeometry FIM PMatDiag": "nngeometry",
    "PyHessian": "pyhessian",
    "curvlinops": "curvlinops",
}
#: The peers' distributions, whose versions the notes give.
DISTRIBUTIONS = (
    "backpack-for-pytorch",
    "asdfghjkl",
    "nngeometry",
    "pyhessian",
    "curvlinops-for-pytorch",
)


def exact_methods(model: nn.Module, available: dict[str, str]) -> dict[str, Method]:
    """Ours and every installed exact peer (``available``: method → '' or why it is absent)."""
    factories: dict[str, Callable[[], Method]] = {
        "minsharp diagonal": lambda: ours_diagonal(model),
        "minsharp trace": lambda: ours_trace(model),
        "BackPACK DiagGGNExact": lambda: backpack_method(model, "DiagGGNExact"),
        "BackPACK DiagHessian": lambda: backpack_method(model, "DiagHessian"),
        "ASDL exact Fisher diag": lambda: asdl_method(model),
        "nngeometry FIM PMatDiag": lambda: nngeometry_method(model),
    }
    return {name: make() for name, make in factories.items() if not available.get(name)}


# ---------------------------------------------------------------------------------------------
# Timing one configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one method gave on one configuration."""

    timing: common.Timing | None = None
    memory_mib: float | None = None
    value: Tensor | None = None
    skipped: str = ""
    failed: str = ""
    batch_ratio: float | None = None
    """For a method not run on all N: its time on one batch over our diagonal's there."""

    @property
    def seconds(self) -> float | None:
        """Median time of the kept calls, None when the method did not run."""
        return None if self.timing is None else self.timing.median

    def cell(self) -> str:
        """The table cell: the median time, or why there is none."""
        if self.failed:
            return f"failed ({self.failed})"
        if self.skipped:
            return f"not run ({self.skipped})"
        assert self.timing is not None
        return common.seconds(self.timing.median)


def measure_configuration(
    methods: dict[str, Method],
    data: list[tuple[Tensor, Tensor]],
    settings: Settings,
    wait_quiet_s: float,
) -> dict[str, Outcome]:
    """Probe, memory and interleaved timed calls of every method on the same batches.

    Probe: one call on the first batch (a warm-up, and the cost estimate, scaled by the number
    of batches). A method predicted above ``cap_s`` is not run. Then one full call per method
    measures its peak memory and its result; methods predicted below ``single_above_s`` are
    then timed in interleaved rounds until ``repeats`` calls are kept (contention filtered);
    the others keep the time of their single full call.
    """
    outcomes = {name: Outcome() for name in methods}
    predicted = {}
    for name, method in methods.items():
        try:
            start = time.perf_counter()
            method(data[:1])
            predicted[name] = (time.perf_counter() - start) * len(data)
        except Exception as error:  # a peer failing on this network: report, go on
            outcomes[name].failed = f"{type(error).__name__}: {str(error)[:80]}"
            continue
        if predicted[name] > settings.cap_s:
            outcomes[name].skipped = f"predicted {predicted[name]:.0f} s > {settings.cap_s:g} s"
    runnable = [name for name in methods if not outcomes[name].skipped and name in predicted]
    one_batch_comparison(methods, data, outcomes)
    if wait_quiet_s > 0:
        common.wait_until_quiet(wait_quiet_s)
    for name in runnable:
        monitor = common.OtherLoad()
        value, memory, seconds = common.peak_memory_mib(lambda name=name: methods[name](data))
        outcome = outcomes[name]
        outcome.value, outcome.memory_mib = value, memory  # type: ignore[assignment]
        outcome.timing = common.Timing()
        outcome.timing.add(seconds, monitor.cores(), None)
    cheap = [name for name in runnable if predicted[name] <= settings.single_above_s]
    if cheap:
        timings, _ = common.timed_rounds(
            {name: (lambda name=name: methods[name](data)) for name in cheap},
            repeats=settings.repeats,
            max_rounds=5 * settings.repeats,
            max_other_cores=settings.max_other_cores,
            per_call=True,
            budget_s=settings.rounds_budget_s,
        )
        for name, timing in timings.items():
            outcomes[name].timing = timing
    return outcomes


def one_batch_comparison(
    methods: dict[str, Method],
    data: list[tuple[Tensor, Tensor]],
    outcomes: dict[str, Outcome],
) -> None:
    """For methods too slow for all N: their time on one batch against our diagonal's there.

    The probe was each method's warm-up on the first batch; both the method and our diagonal
    are then timed by one more (warm) call on that batch, the same procedure for both.
    """
    skipped = [name for name, outcome in outcomes.items() if outcome.skipped]
    if not skipped or "minsharp diagonal" not in methods:
        return
    ours = common.time_once(lambda: methods["minsharp diagonal"](data[:1]))
    for name in skipped:
        per_batch = common.time_once(lambda name=name: methods[name](data[:1]))
        outcomes[name].batch_ratio = per_batch / ours
        outcomes[name].skipped += f"; one batch: {per_batch:.3g} s = {per_batch / ours:.0f}× ours"


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def ratio(peer: Outcome, ours: Outcome) -> float | None:
    """Peer time over ours on all N, or, for a peer run on one batch only, there."""
    if peer.seconds is None or ours.seconds is None:
        return peer.batch_ratio
    return peer.seconds / ours.seconds


def time_cell(outcome: Outcome, ours: Outcome) -> str:
    speedup = ratio(outcome, ours)
    if speedup is None or outcome.seconds is None:
        return outcome.cell()
    return f"{outcome.cell()} ({speedup:.1f}×)"


def bar_verdicts(model: str, classes: int, outcomes: dict[str, Outcome]) -> tuple[str, str]:
    """Verdicts of the speed bar for (diagonal, trace) on this configuration."""
    if model in MLPS:
        if classes not in MLP_BARS:
            return "no bar", "no bar"
        needed = MLP_BARS[classes]
        reference = outcomes.get("BackPACK DiagGGNExact")
        results = []
        for ours in OURS:
            speedup = None if reference is None else ratio(reference, outcomes[ours])
            label = f"≥ {needed:g}× BackPACK GGN"
            if reference is not None and reference.seconds is None and speedup is not None:
                label += f", one batch: {speedup:.0f}×"
            results.append(
                f"{common.verdict(None if speedup is None else speedup >= needed)} ({label})"
            )
        return results[0], results[1]
    results = []
    for ours in OURS:
        speedups = [ratio(outcomes[peer], outcomes[ours]) for peer in PEERS if peer in outcomes]
        known = [s for s in speedups if s is not None]
        missing = len(speedups) - len(known)
        if not known:
            results.append("n/a (no exact peer ran)")
            continue
        passed = min(known) > 1
        note = "faster than every exact peer that ran"
        if any(outcomes[peer].seconds is None for peer in PEERS if peer in outcomes):
            note += " (on one batch where a peer was too slow for all N)"
        if missing:
            note += f"; {missing} not run"
        results.append(f"{common.verdict(passed)} ({note})")
    return results[0], results[1]


def memory_verdict(outcomes: dict[str, Outcome]) -> str:
    reference = outcomes.get("BackPACK DiagGGNExact")
    if reference is None or reference.memory_mib is None:
        return "n/a (BackPACK not run)"
    ours = [outcomes[name].memory_mib for name in OURS]
    if any(value is None for value in ours):
        return "n/a"
    # 1 MiB of slack: below that the resident-set figures are page-granular noise.
    return common.verdict(max(ours) <= reference.memory_mib + 1.0)  # type: ignore[type-var]


def agreement(outcomes: dict[str, Outcome]) -> str:
    """Largest relative difference of any peer's diagonal (or trace) to ours."""
    ours = outcomes["minsharp diagonal"].value
    if ours is None:
        return "n/a"
    worst = 0.0
    scale = ours.abs().max().item()
    for name, outcome in outcomes.items():
        if outcome.value is None or name == "minsharp diagonal":
            continue
        if name == "minsharp trace":
            worst = max(worst, abs(outcome.value.item() - ours.sum().item()) / ours.sum().item())
            continue
        worst = max(worst, (outcome.value - ours).abs().max().item() / scale)
    return f"{worst:.1e}"


def exact_tables(
    settings: Settings, images: Tensor, available: dict[str, str], wait_quiet_s: float
) -> tuple[str, str, list[dict[str, object]]]:
    time_rows, memory_rows, records = [], [], []
    for model_name in settings.models:
        for examples in settings.sizes:
            for classes in settings.classes:
                model = model_for(model_name, classes, settings)
                generator = torch.Generator().manual_seed(1)
                labels = torch.randint(0, classes, (examples,), generator=generator)
                inputs = images[:examples]
                activation = largest_activation(model, inputs)
                size = batch_size(examples, classes, activation, settings)
                data = batches(inputs, labels, size)
                methods = exact_methods(model, available)
                outcomes = measure_configuration(methods, data, settings, wait_quiet_s)
                for name, reason in available.items():
                    if reason and name in PEERS:
                        outcomes[name] = Outcome(skipped="not installed")
                diagonal_bar, trace_bar = bar_verdicts(model_name, classes, outcomes)
                label = MODEL_LABELS.get(model_name, model_name)
                ours_diagonal, ours_trace = (outcomes[name] for name in OURS)
                loads = [o.timing.max_other_cores for o in outcomes.values() if o.timing]
                row = [
                    label,
                    count_parameters(model),
                    examples,
                    classes,
                    size,
                    ours_diagonal.cell(),
                    ours_trace.cell(),
                    *(time_cell(outcomes[peer], ours_diagonal) for peer in PEERS),
                    agreement(outcomes),
                    diagonal_bar,
                    trace_bar,
                    f"{max(loads, default=0.0):.2f}",
                ]
                time_rows.append(row)
                memory_rows.append(
                    [
                        label,
                        examples,
                        classes,
                        size,
                        *(
                            "—"
                            if outcomes[name].memory_mib is None
                            else f"{outcomes[name].memory_mib:.0f}"
                            for name in (*OURS, *PEERS)
                        ),
                        memory_verdict(outcomes),
                    ]
                )
                records.append(
                    {
                        "model": label,
                        "N": examples,
                        "K": classes,
                        "seconds": {n: o.seconds for n, o in outcomes.items()},
                        "memory": {n: o.memory_mib for n, o in outcomes.items()},
                    }
                )
                common.print_row(row)
    header = [
        "model",
        "params",
        "N",
        "K",
        "batch B",
        "ours: diagonal (s)",
        "ours: trace (s)",
        *(f"{peer} (s, × ours diag)" for peer in PEERS),
        "max rel. diff to ours",
        "bar: ours diagonal",
        "bar: ours trace",
        "max other load (cores)",
    ]
    memory_header = [
        "model",
        "N",
        "K",
        "batch B",
        *(f"{name} (MiB)" for name in (*OURS, *PEERS)),
        "bar: ours ≤ BackPACK GGN",
    ]
    return (
        common.markdown_table(header, time_rows),
        common.markdown_table(memory_header, memory_rows),
        records,
    )


# ---------------------------------------------------------------------------------------------
# Hutchinson
# ---------------------------------------------------------------------------------------------


def hutchinson_methods(
    model: nn.Module, inputs: Tensor, labels: Tensor, products: int, available: dict[str, str]
) -> dict[str, Callable[[], tuple[float, float | None]]]:
    """Each implementation: () → (estimate, standard error or None).

    The peers' modules are looked up here, outside the timed calls.
    """
    peers = {
        name: common.optional_module(PEER_MODULES[name])[0]
        for name in ("PyHessian", "curvlinops")
        if not available.get(name)
    }

    def pyhessian() -> tuple[float, float | None]:
        module = peers["PyHessian"]
        computer = module.hessian(  # type: ignore[union-attr]
            model, nn.CrossEntropyLoss(), data=(inputs, labels), cuda=False
        )
        samples = computer.trace(maxIter=products, tol=0.0)
        model.zero_grad(set_to_none=True)
        return statistics.fmean(samples), statistics.stdev(samples) / math.sqrt(len(samples))

    def curvlinops() -> tuple[float, float | None]:
        module = peers["curvlinops"]
        operator = module.HessianLinearOperator(  # type: ignore[union-attr]
            model,
            nn.CrossEntropyLoss(),
            list(model.parameters()),
            [(inputs, labels)],
            check_deterministic=False,
        )
        # curvlinops multiplies by all its random vectors at once (one vmapped HVP): at 100
        # on a CNN with 1000 images that needs over 24 GiB. Equal chunks, averaged, are the
        # same estimator.
        chunks = [CURVLINOPS_CHUNK] * (products // CURVLINOPS_CHUNK)
        chunks += [products % CURVLINOPS_CHUNK] if products % CURVLINOPS_CHUNK else []
        estimates = [
            float(module.hutchinson_trace(operator, size)) * size  # type: ignore[union-attr]
            for size in chunks
        ]
        return sum(estimates) / products, None

    def ours() -> tuple[float, float | None]:
        result = hutchinson_trace(
            model, (inputs, labels), samples=products, batch_size=inputs.shape[0]
        )
        return result.value, result.details["standard_error"]

    implementations = {"PyHessian": pyhessian, "curvlinops": curvlinops, "minsharp": ours}
    return {name: f for name, f in implementations.items() if not available.get(name)}


def hutchinson_table(settings: Settings, images: Tensor, available: dict[str, str]) -> str:
    rows = []
    classes, examples = settings.hutchinson_classes, settings.hutchinson_size
    for model_name in settings.hutchinson_models:
        model = model_for(model_name, classes, settings)
        inputs = images[:examples]
        labels = torch.randint(0, classes, (examples,), generator=torch.Generator().manual_seed(1))
        exact_timing = common.timed_calls(
            lambda model=model, inputs=inputs: minsharp.hessian_trace(model, inputs),
            repeats=settings.repeats,
            max_other_cores=settings.max_other_cores,
        )
        exact = exact_timing.result.total  # type: ignore[attr-defined]
        for name, run in hutchinson_methods(
            model, inputs, labels, settings.products, available
        ).items():
            torch.manual_seed(0)
            monitor = common.OtherLoad()
            start = time.perf_counter()
            try:
                estimate, error = run()
            except Exception as failure:  # a peer failing: say so in the table
                rows.append(
                    [MODEL_LABELS.get(model_name, model_name), name, "failed", str(failure)]
                )
                continue
            seconds = time.perf_counter() - start
            per_product = seconds / settings.products
            relative = abs(estimate - exact) / exact
            needed = None if error is None else settings.products * (error / (0.01 * exact)) ** 2
            rows.append(
                [
                    MODEL_LABELS.get(model_name, model_name),
                    name,
                    settings.products,
                    common.seconds(seconds),
                    f"{estimate:.6g}",
                    f"{exact:.6g}",
                    f"{relative:.1e}",
                    "—" if error is None else f"{error / exact:.1e}",
                    "—" if needed is None else f"{needed:.0f}",
                    "—" if needed is None else common.seconds(needed * per_product),
                    common.seconds(exact_timing.median),
                    f"{seconds / exact_timing.median:.0f}×",
                    common.verdict(relative >= 1e-3 or (error or 0) / exact >= 1e-2),
                    f"{monitor.cores() or 0.0:.2f}",
                ]
            )
            common.print_row(rows[-1])
    header = [
        "model",
        "Hutchinson",
        "products",
        "time (s)",
        "estimate Tr H",
        "exact Tr H (ours)",
        "rel. error made",
        "rel. standard error",
        "products for 1 % std. error",
        "time for 1 % (s)",
        "ours exact (s)",
        "Hutchinson / ours exact (time)",
        "bar: Hutchinson still ≥ 0.1 % off",
        "other load (cores)",
    ]
    return common.markdown_table(header, rows)


# ---------------------------------------------------------------------------------------------
# Plots and main
# ---------------------------------------------------------------------------------------------


def plot_speedups(records: list[dict[str, object]], output: object) -> object | None:
    plt = common.pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)  # type: ignore[attr-defined]
    drawn = False
    for axis, examples in zip(axes, sorted({r["N"] for r in records}), strict=False):
        for peer, marker in zip(PEERS, "osd^", strict=True):
            for model in dict.fromkeys(r["model"] for r in records):
                points = [
                    (r["K"], r["seconds"][peer] / r["seconds"]["minsharp diagonal"])  # type: ignore[index]
                    for r in records
                    if r["model"] == model
                    and r["N"] == examples
                    and r["seconds"].get(peer)  # type: ignore[attr-defined]
                    and r["seconds"].get("minsharp diagonal")  # type: ignore[attr-defined]
                ]
                if points:
                    drawn = True
                    axis.plot(*zip(*points, strict=True), marker=marker, label=f"{model}: {peer}")
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("classes K")
        axis.set_title(f"N = {examples}")
    axes[0].set_ylabel("peer time / ours (diagonal)")
    if not drawn:
        plt.close(figure)  # type: ignore[attr-defined]
        return None
    handles = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    figure.legend(  # type: ignore[attr-defined]
        list(handles.values()),
        list(handles),
        fontsize=6,
        loc="center left",
        bbox_to_anchor=(0.92, 0.5),
    )
    return common.save_figure(figure, output, "speedups")  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    # The peers' deprecation and hook warnings say nothing about the measurements.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    parser = common.base_parser(__doc__, DEFAULT_OUTPUT)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: the harness's)"
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    run = common.Run(args, args.threads or settings.threads)

    available = {name: common.optional_module(module)[1] for name, module in PEER_MODULES.items()}
    images, _ = common.mnist_test_images(
        args.mnist, max(*settings.sizes, settings.hutchinson_size), slice(0, settings.image)
    )

    exact, memory, records = exact_tables(settings, images, available, args.wait_quiet)
    hutchinson = hutchinson_table(settings, images, available)
    figure = plot_speedups(records, args.output)

    versions = []
    for distribution in DISTRIBUTIONS:
        try:
            versions.append(f"{distribution} {metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{distribution}: not installed")
    missing = [f"{name}: {reason}" for name, reason in available.items() if reason]
    notes = [
        "peers: " + ", ".join(versions) + (("; absent: " + "; ".join(missing)) if missing else ""),
        f"models: `minsharp.models.build_model(name, (1, {settings.image}, {settings.image}), K)` "
        "untrained "
        "(torch.manual_seed(0)), eval mode, float32; data: the first N MNIST test images "
        "normalised to [−1, 1]; labels random in 0..K−1 (the Hessian does not depend on them)",
        "every method gets the same list of batches of B examples: B = min(N, "
        f"{settings.max_batch}, 2^28 / (K · max(K, A))), A the largest layer output of one "
        "example, so that the peers' (K, B, K) and (K, B, A) factors stay ≤ 1 GiB; ours "
        "gets the same list with default options (it may split a batch, never merge two); "
        "peers return the GGN (Fisher) diagonal, which equals the Hessian diagonal on these "
        "networks (ReLU, max-pooling: piecewise linear): 'max rel. diff to ours' checks it "
        "(largest entrywise difference over the largest entry; the traces relative)",
        "timing: one call on the first batch (warm-up, and a cost estimate × the number of "
        f"batches); a method predicted above {settings.cap_s:g} s per call is not run on all "
        "N (the table says so, with its time on that one batch against our diagonal's on the "
        "same batch, which the bars then use); then one full call each, which gives the "
        "peak memory; methods "
        f"predicted below {settings.single_above_s:g} s are then timed in rotating rounds "
        f"until {settings.repeats} calls each are kept (or {settings.rounds_budget_s:g} s of "
        "rounds have passed, at least one round made), a call during which other processes "
        f"kept more than {settings.max_other_cores} cores busy being discarded; the others "
        "show their single full call. Times are medians; '(x×)' = peer time / our diagonal's",
        "bars (issue 5): MLPs: ours ≥ 2× faster than BackPACK DiagGGNExact at K = 10 and ≥ 5× "
        "at K = 1000 (K = 100: no bar); CNNs: ours faster than every exact peer; memory: "
        "ours ≤ BackPACK DiagGGNExact (both of ours). The verdicts are computed by the script",
        common.MEMORY_METHOD,
        "Hutchinson: Rademacher probes; PyHessian `hessian(..., cuda=False).trace(maxIter, "
        "tol=0)` (PyHessian 0.1: `trace` and `eigenvalues` work on torch 2.x, `density` fails "
        "since it calls the removed `torch.eig`; the default `cuda=True` fails on a CPU-only "
        "machine), curvlinops `hutchinson_trace(HessianLinearOperator(..., "
        "check_deterministic=False), m)`, minsharp `hutchinson_trace` measure; one run each "
        "(seed 0) including set-up; 'products for 1 %' = products × (std. error / (1 % of "
        "Tr H))², from the observed spread (curvlinops returns no spread); the bar checks that "
        "Hutchinson at this many products is still visibly off while ours is exact",
    ]
    body = "## Time (exact diagonal and trace)\n\n" + exact
    body += "\n## Peak memory of one call\n\n" + memory
    body += f"\n## Stochastic traces: Hutchinson at {settings.products} products\n\n"
    body += hutchinson + common.figure_link(figure, "peer time over ours")  # type: ignore[arg-type]
    title = "Exact Hessian diagonal and trace against the peers (one process)"
    return run.finish(title, "float32", notes, body)


if __name__ == "__main__":
    sys.exit(main())

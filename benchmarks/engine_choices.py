"""The engine's small design choices, each timed against the alternative it replaced.

Three measurements back the constants and paths that ``minsharp.curvature`` cites:

* the softmax of the class probabilities: torch's kernel against the written-out formula of
  ``cotangents.class_probabilities``, on (N, K) logits, for K below and above
  ``WRITTEN_OUT_SOFTMAX_CLASSES``;
* Linear–ReLU chains (``curvature.chain``) as a user calls ``hessian_trace`` and
  ``hessian_diagonal``: the chain path by hand, the same with each Linear's inputs squared all
  at once instead of in blocks of ``patches.SQUARES_ELEMENTS``, and the engine's general
  autograd path, with minor page faults per call;
* fixed costs of a call: a disabled tqdm bar, and ``find_layers``.

Each table's variants are timed interleaved in rotating rounds, medians within the run.

Usage::

    python benchmarks/engine_choices.py --wait-quiet 30
    python benchmarks/engine_choices.py --quick --output /tmp/choices.md
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

import common
import minsharp
from minsharp.curvature import cotangents, engine, patches
from minsharp.curvature.layers import find_layers
from minsharp.models import build_model, mlp

DEFAULT_OUTPUT = common.RESULTS_DIR / "engine_choices.md"


@dataclass(frozen=True, kw_only=True)
class Settings(common.BaseSettings):
    """Sizes of a full run, or of a ``--quick`` smoke test."""

    examples: int = 1000
    classes: tuple[int, ...] = (2, 3, 5, 8, 10, 12, 15, 16, 100)
    repeats: int = 30

    @classmethod
    def from_args(cls, quick: bool) -> Settings:
        """The settings for ``--quick`` or a full run."""
        if quick:
            return cls(quick=True, examples=50, classes=(3, 20), repeats=2)
        return cls()


def _medians(functions: dict[str, Callable[[], object]], settings: Settings) -> dict[str, float]:
    timings, _ = common.timed_rounds(
        functions,
        repeats=settings.repeats,
        max_rounds=4 * settings.repeats,
        max_other_cores=settings.max_other_cores,
        warmup=1,
    )
    return {name: timing.median for name, timing in timings.items()}


def softmax_table(settings: Settings) -> str:
    """torch.softmax against the written-out formula, µs per call."""
    rows = []
    for classes in settings.classes:
        logits = torch.randn(settings.examples, classes)
        found = _medians(
            {
                "torch": lambda z=logits: z.softmax(1),
                "written out": lambda z=logits: _written_out_softmax(z),
            },
            settings,
        )
        written_out = classes in cotangents.WRITTEN_OUT_SOFTMAX_CLASSES
        engine_uses = "written out" if written_out else "torch"
        rows.append(
            [
                classes,
                f"{found['torch'] * 1e6:.0f}",
                f"{found['written out'] * 1e6:.0f}",
                f"{found['torch'] / found['written out']:.2f}",
                engine_uses,
            ]
        )
    header = ["K", "torch.softmax (µs)", "written out (µs)", "torch ÷ written out", "engine"]
    return f"## Softmax of ({settings.examples}, K) float32 logits\n\n" + common.markdown_table(
        header, rows
    )


def _written_out_softmax(logits: torch.Tensor) -> torch.Tensor:
    exponentials = (logits - logits.amax(1, keepdim=True)).exp_()
    return exponentials.div_(exponentials.sum(1, keepdim=True))


@contextmanager
def _general_path() -> Iterator[None]:
    """The engine without its Linear–ReLU chain path."""
    chain = engine.linear_relu_chain
    engine.linear_relu_chain = lambda *arguments: None
    try:
        yield
    finally:
        engine.linear_relu_chain = chain


@contextmanager
def _squared_at_once() -> Iterator[None]:
    """The chain's diagonals squaring each Linear's inputs in one block."""
    block = patches.SQUARES_ELEMENTS
    patches.SQUARES_ELEMENTS = sys.maxsize
    try:
        yield
    finally:
        patches.SQUARES_ELEMENTS = block


def _within(context: Callable[[], object], call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with context():
            return call()

    return run


def _faults_per_call(function: Callable[[], object], calls: int = 10) -> float:
    function()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        function()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def chain_table(settings: Settings) -> str:
    """The chain path against its alternatives, ms per call and page faults."""
    inputs = torch.randn(settings.examples, 784)
    networks = {
        "784-100-100-10": mlp(784, [100, 100], 10).eval(),
        "SmallMLP 784-20-20-10": build_model("small_mlp", (1, 28, 28), 10).eval(),
    }
    rows = []
    for label, model in networks.items():
        data = inputs if label.startswith("784-100") else inputs.view(-1, 1, 28, 28)
        for workload, measure in (
            ("trace", minsharp.hessian_trace),
            ("diagonal", minsharp.hessian_diagonal),
        ):
            variants: dict[str, Callable[[], object]] = {
                "chain by hand (default)": lambda m=measure, x=data, n=model: m(n, x),
                "general autograd path": _within(
                    _general_path, lambda m=measure, x=data, n=model: m(n, x)
                ),
            }
            if workload == "diagonal":
                variants["chain, inputs squared at once"] = _within(
                    _squared_at_once, lambda m=measure, x=data, n=model: m(n, x)
                )
            found = _medians(variants, settings)
            default = found["chain by hand (default)"]
            for name, seconds in found.items():
                faults = _faults_per_call(variants[name])
                rows.append(
                    [
                        label,
                        workload,
                        name,
                        f"{seconds * 1e3:.2f}",
                        f"{seconds / default:.2f}",
                        f"{faults:.0f}",
                    ]
                )
    header = ["network", "workload", "variant", "ms per call", "÷ default", "page faults"]
    return (
        f"## Linear–ReLU chains, N = {settings.examples}, as `minsharp.hessian_trace(model, X)` "
        "and `minsharp.hessian_diagonal(model, X)` give them\n\n"
        + common.markdown_table(header, rows)
        + "\nPage faults: minor faults per call over 10 calls after one more.\n"
    )


def overhead_table(settings: Settings) -> str:
    """Fixed costs of a call that the engine avoids or keeps small."""
    model: nn.Module = build_model("small_mlp", (1, 28, 28), 10).eval()
    found = _medians(
        {
            "tqdm(disable=True) over one batch": lambda: list(tqdm([0], disable=True)),
            "find_layers(SmallMLP)": lambda: find_layers(model),
        },
        settings,
    )
    rows = [[name, f"{seconds * 1e6:.0f}"] for name, seconds in found.items()]
    return "## Fixed costs of a call\n\n" + common.markdown_table(["what", "µs"], rows)


def main() -> int:
    """Run the three measurements and write the tables."""
    args = common.base_parser(__doc__, DEFAULT_OUTPUT).parse_args()
    settings = Settings.from_args(args.quick)
    run = common.Run(args, settings.threads)
    body = "\n".join([softmax_table(settings), chain_table(settings), overhead_table(settings)])
    notes = [
        f"medians of {settings.repeats} interleaved rounds after one warm-up round; random "
        "inputs (the costs do not depend on the values); untrained networks in eval mode",
    ]
    return run.finish("The engine's small design choices", "float32", notes, body)


if __name__ == "__main__":
    raise SystemExit(main())

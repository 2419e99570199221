"""Every registered measure at its defaults, in training steps, on the paper MLP.

The paper's MLP 784-512-128-512-10 (theory §6), trained briefly on MNIST test images
5000–9999 (SGD, batch 128, lr 0.05, momentum 0.9), measured in eval mode, float32, on the
first N = 1000 test images with their labels, each measure called as the README shows
(``minsharp.measure(name, model, (X, y))``, default options). A training step is
``zero_grad``, forward, mean cross-entropy and ``.backward()`` on the same N examples, the
median of timings spread over the run (groups of steps before and between the measures).
The bar (issue 16): all measures together at most 350 steps.

    python benchmarks/measure_costs.py [--quick] [--output benchmarks/results/measure_costs.md]
"""

from __future__ import annotations

import functools
import statistics
import sys
import warnings
from dataclasses import dataclass

import common
import minsharp
from minsharp.models import paper_mlp
from minsharp.training import TrainingConfig

DEFAULT_OUTPUT = common.RESULTS_DIR / "measure_costs.md"
#: The bar: every measure at its defaults, in training steps, summed.
BUDGET_STEPS = 350


@dataclass(frozen=True, kw_only=True)
class Settings(common.BaseSettings):
    """Sizes of the run; ``--quick`` is a smoke test of the script."""

    examples: int = 1000
    epochs: int = 8
    step_repeats: int = 7
    measure_repeats: int = 3

    @classmethod
    def of(cls, quick: bool) -> Settings:
        """A full run, or a ``--quick`` one."""
        return (
            cls(quick=True, examples=64, epochs=1, step_repeats=2, measure_repeats=1)
            if quick
            else cls()
        )


def main() -> int:
    parser = common.base_parser(__doc__, DEFAULT_OUTPUT)
    args = parser.parse_args()
    settings = Settings.of(args.quick)
    run = common.Run(args, settings.threads)
    images, labels = common.mnist_test_images(args.mnist, 10000)
    flat = images.reshape(len(images), -1)
    model = common.untrained(paper_mlp)
    training = TrainingConfig(epochs=settings.epochs, batch_size=128, lr=0.05, seed=0)
    stop = 5256 if settings.quick else 10000
    common.train_on_test_images(model, flat, labels, slice(5000, stop), training)
    inputs, targets = flat[: settings.examples], labels[: settings.examples]
    training_step = common.training_step(model, inputs, targets)

    step_samples: list[float] = []

    def time_steps(warmup: int) -> None:
        step_samples.extend(
            common.timed_calls(
                training_step,
                repeats=settings.step_repeats,
                warmup=warmup,
                max_other_cores=settings.max_other_cores,
            ).kept
        )

    time_steps(warmup=2)
    model.eval()
    timed: dict[str, tuple[float, float]] = {}
    for name in minsharp.available():
        if "batchnorm" in minsharp.measures.spec(name).requires:
            continue
        # Steps are timed between the measures, so that the unit samples the whole run.
        time_steps(warmup=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            call = functools.partial(minsharp.measure, name, model, (inputs, targets))
            first = common.time_once(call)
            again = common.timed_calls(
                call,
                repeats=settings.measure_repeats - 1,
                warmup=0,
                max_other_cores=settings.max_other_cores,
            )
        timed[name] = statistics.median([first, *again.kept]), first
        print(f"{name}: {timed[name][0]:.3g} s", flush=True)
    step = statistics.median(step_samples)
    rows, total = [], 0.0
    for name in minsharp.available():
        if name not in timed:
            rows.append([name, "n/a", "n/a (needs batch-norm; the paper MLP has none)", ""])
            continue
        seconds, first = timed[name]
        total += seconds / step
        rows.append([name, common.seconds(seconds), f"{seconds / step:.1f}", f"{first / step:.1f}"])
    rows.append(["**all measures**", "", f"**{total:.0f}**", ""])
    notes = [
        f"N = {settings.examples} MNIST test images; training step (forward, loss, backward on "
        f"the same N) median {common.seconds(step)} over {len(step_samples)} steps timed in "
        f"groups of {settings.step_repeats} before and between the measures (quartiles "
        f"{common.seconds(statistics.quantiles(step_samples)[0])} and "
        f"{common.seconds(statistics.quantiles(step_samples)[2])})",
        f"bar: all measures together ≤ {BUDGET_STEPS} steps — "
        f"{common.verdict(total <= BUDGET_STEPS)}",
        f"each measure called {settings.measure_repeats} times at its default options, after "
        "the measures before it; seconds and training steps are the median call, and the "
        "last column the first call (it carries one-time costs, such as torch's lazy set-up)",
    ]
    header = ["measure", "seconds", "training steps", "first call (steps)"]
    body = common.markdown_table(header, rows) + "\n"
    return run.finish(
        "Every measure at its defaults, in training steps (benchmarks/measure_costs.py)",
        "float32",
        notes,
        body,
    )


if __name__ == "__main__":
    sys.exit(main())

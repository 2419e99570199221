"""The randomized-label study: train a grid of networks on partly shuffled labels, measure each.

For every run of the grid ratios × seeds × models of a
:class:`~minsharp.study.randomized_labels.config.StudyConfig` (theory §6; Ibayashi, Hamaguchi
& Imaizumi 2021, Fig. 2):

1. the training labels are corrupted: a fraction r of them permuted among themselves (or
   replaced by uniform labels), seeded by :func:`corruption_seed` of the run's seed and
   ratio, so the models of one trial share their labels; the test labels stay clean;
2. the zoo network is built with ``torch.manual_seed(seed)`` and trained with
   :func:`~minsharp.training.train_classifier` (minibatch order seeded by ``seed`` too);
3. train accuracy (on the corrupted labels it was trained on), test accuracy (clean) and the
   generalization gap ``train accuracy − test accuracy`` are recorded;
4. each measure is computed with :func:`minsharp.measure` on the training inputs **with the
   corrupted labels**, the labels the network was trained on (as in the paper, measures are
   taken at the end of training over the training inputs). A measure that fails is recorded
   as an error with its message, and the run goes on; warnings a measure raises (a solver
   stopping early…) are kept with its value;
5. with ``stress="rescale"``, every measure is also computed on three function-equivalent
   rescaled twins of the network (:mod:`minsharp.study.randomized_labels.stress`), recorded
   under the result's ``stress``.

The directory, resume, atomic per-run results and provenance are those of every study kind
(:mod:`minsharp.study.core`); this module is the ``randomized-labels`` kind,
:data:`RANDOMIZED_LABELS` (:class:`RandomizedLabels`). A run whose ``result.json`` is
complete and was made with the same settings (its ``fingerprint``) is never redone; a
missing, unreadable, truncated or failed result is redone. A directory written for another
configuration, or with other data, is refused unless ``force`` (then ``study.json`` is
rewritten and every run whose settings changed is redone).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minsharp.data.corruption import corrupt_labels
from minsharp.study.core import runner, steps
from minsharp.study.core.config import ModelPlan, ratio_label
from minsharp.study.core.kind import Flag, RunContext, StudyData, StudyKind
from minsharp.study.core.kind import RunPlan as GridRunPlan
from minsharp.study.core.runner import StudyOutcome
from minsharp.study.core.steps import derive_seed
from minsharp.study.core.store import read_result as read_stored_result
from minsharp.study.randomized_labels.config import STRESS_TESTS, StudyConfig, preset
from minsharp.study.randomized_labels.stress import measure_twins, stress_settings
from minsharp.training import accuracy

#: The kind of study this module runs (``study.json``'s ``kind``).
KIND = "randomized-labels"

#: What the measures are computed on, in words (recorded in every result).
MEASURED_ON = (
    "the training inputs with the corrupted labels, i.e. the labels the network was trained on"
)

#: Keys a complete randomized-label result holds as finite numbers.
RESULT_NUMBERS = ("train_accuracy", "test_accuracy", "gap", "ratio", "seed")

#: What a run's checkpoint records besides the weights: these entries of its result.
CHECKPOINT_KEYS = (
    "run_id",
    "ratio",
    "seed",
    "training",
    "corruption",
    "train_accuracy",
    "test_accuracy",
)


#: ``minsharp study randomized-labels --help``: what the study does, its presets, its files.
DESCRIPTION = """\
The randomized-label study (Ibayashi, Hamaguchi & Imaizumi 2021, Fig. 2): train networks on
training sets whose labels are partly permuted (label-noise ratio r), measure each trained
network's sharpness on its training inputs (with the labels it was trained on), and correlate
every measure with the generalization gap (train accuracy - test accuracy): Kendall tau-b and
Spearman rho with bootstrap intervals, and Jiang et al.'s granulated Kendall coefficient.

The settings come from --preset, then the JSON --config file (keys of study.json's "config";
"training" and "measure_options" are merged), then the override flags.

presets:
  demo   digits (bundled), 5 ratios x 3 seeds, MLP 64-128-128-10, 5 measures (~1-2 min)
  cpu    4000/2000 MNIST images, the paper's MLP 784-512-128-512-10, 11 ratios x 2 seeds,
         9 measures (about 25-30 min on 2 cores)
  cpu-lenet  500/2000 MNIST images, the paper's LeNet, 5 ratios x 2 seeds, 150 epochs,
         the cpu measures (48 min on 2 cores)
  paper  the paper's protocol: full MNIST, 11 ratios x 10 trials, MLP (lr 0.1, 3000 epochs)
         and LeNet (lr 0.01, 1000 epochs), batch 1024 (for a GPU machine)

--stress rescale also measures, for every network, three function-equivalent rescaled
twins (verified on a probe batch): a random layer- and neuron-wise rescaling whose spread
differs from run to run, the trace-minimising one and a trace-raising one; the report shows
how each measure's tau moves on the random and on the adversarial twins (Dinh et al. 2017).

Each finished run is written to DIR/runs/<run-id>/result.json (atomically) with its
checkpoint; a stopped study resumes when rerun with the same settings and directory and never
retrains a finished run. A directory made with other settings is refused (--force overwrites
it). At the end, DIR/report.md, DIR/figures/ and DIR/runs.csv are written.
"""


#: Its examples.
EPILOG = """\
examples:
  minsharp study randomized-labels --preset cpu --data-dir ~/mnist --output runs/cpu
  minsharp study randomized-labels --preset paper --download --device cuda
  minsharp study randomized-labels --preset demo --ratios 0,0.5,1 --seeds 0-4 --epochs 100
  minsharp study randomized-labels --preset demo --stress rescale --output runs/stress
  minsharp report runs/cpu
"""


@dataclass(frozen=True)
class RunPlan(GridRunPlan):
    """One run: a model trained on labels corrupted at one ratio, from one seed (the trial).

    Attributes:
        ratio: the label-noise ratio r.
    """

    ratio: float

    @property
    def run_id(self) -> str:
        """``<model>_r<ratio>_s<seed>``, the name of its directory (:func:`run_id`)."""
        return run_id(self.model.name, self.ratio, self.seed)

    @property
    def corruption_seed(self) -> int:
        """The seed of the label corruption (:func:`corruption_seed`)."""
        return corruption_seed(self.seed, self.ratio)


def label_fit(
    model: torch.nn.Module, data: StudyData, labels: torch.Tensor, corrupted: torch.Tensor
) -> dict[str, float | None]:
    """How a trained network fits the clean labels, and the corrupted ones it was trained on.

    ``clean_train_accuracy`` on the true training labels; ``corrupted_fit``, the accuracy on
    the examples at indices ``corrupted`` with their corrupted ``labels`` (``None``: none).
    """
    return {
        "clean_train_accuracy": accuracy(model, data.train_inputs, data.train_labels),
        "corrupted_fit": (
            accuracy(model, data.train_inputs[corrupted], labels[corrupted])
            if len(corrupted)
            else None
        ),
    }


def corruption_seed(seed: int, ratio: float) -> int:
    """The label-corruption seed of trial ``seed`` at ``ratio`` (shared by all its models)."""
    return derive_seed("corruption", seed, ratio_label(ratio))


def run_id(model: str, ratio: float, seed: int) -> str:
    """The id of a run, e.g. ``mlp_r0.25_s1``."""
    return f"{model}_r{ratio_label(ratio)}_s{seed}"


class RandomizedLabels(StudyKind[StudyConfig, RunPlan]):
    """The randomized-label study as a :class:`~minsharp.study.core.kind.StudyKind`."""

    name = KIND
    presets = preset
    measured_on = MEASURED_ON
    result_numbers = RESULT_NUMBERS
    axis = "ratios"
    flags = (
        Flag("--ratios", "ratios", "label-noise ratios, e.g. 0,0.5,1", "R,R,…", comma_list=float),
        Flag(
            "--corruption",
            "corruption",
            "label-noise rule",
            choices=("permute", "uniform"),
            after_shared=True,
        ),
        Flag(
            "--stress",
            "stress",
            "also measure function-equivalent rescaled twins of every network (random, and "
            "adversarial after Dinh et al. 2017)",
            choices=STRESS_TESTS,
            after_shared=True,
        ),
    )
    help = "train on partly shuffled labels, correlate measures with the gap"
    description = DESCRIPTION
    epilog = EPILOG  # type: ignore[assignment]
    paper_note = "trains 220 networks for 1000-3000 epochs each on full MNIST"
    directory_stem = "minsharp-study"

    def plan(self, config: StudyConfig, model: ModelPlan, seed: int, value: Any) -> RunPlan:
        """The run of ``model`` on labels corrupted at ratio ``value``, from ``seed``."""
        return RunPlan(
            model=model, seed=seed, training=config.training_config(model, seed), ratio=value
        )

    def fingerprint(self, config: StudyConfig, plan: RunPlan) -> str:
        """SHA-256 of every setting that decides a run's result (:func:`.steps.run_fingerprint`).

        The labels' corruption (rule, ratio and seed) enters besides the shared settings,
        and the stress test's settings when there is one.
        """
        stress = {"stress": stress_settings()} if config.stress else {}
        return steps.run_fingerprint(
            KIND,
            config,
            plan,
            corruption={
                "rule": config.corruption,
                "ratio": plan.ratio,
                "seed": plan.corruption_seed,
            },
            **stress,
        )

    def stored_config(self, content: Mapping[str, Any]) -> StudyConfig:
        """The configuration stored as ``content``; studies made before ``stress`` lack it."""
        return self.presets.stored({"stress": None, **content})

    def execute(self, config: StudyConfig, plan: RunPlan, run: RunContext) -> None:
        """Corrupt, build, train, measure and save one run, filling its record.

        A training failure (divergence, out of memory…) propagates, and
        :func:`minsharp.study.core.runner.execute_run` writes the run as failed with what the
        record holds; a measure failure is recorded under that measure and the run is complete.
        """
        started = time.perf_counter()
        data, record = run.data, run.record
        record.update(steps.run_settings(plan, data, config.dtype, ratio=plan.ratio))
        corrupted = corrupt_labels(
            data.train_labels.cpu(),
            plan.ratio,
            rule=config.corruption,  # type: ignore[arg-type]
            num_classes=data.num_classes,
            seed=plan.corruption_seed,
        )
        labels = corrupted.labels.to(data.device)
        record["corruption"] = corrupted.record
        model = steps.build_network(plan, run)
        history = steps.train(model, plan, run, labels, test=True)
        training_seconds = time.perf_counter() - started
        scores = steps.evaluate(model, data, labels)
        fit = label_fit(model, data, labels, corrupted.indices.to(data.device))
        record.update(
            steps.training_outcome(
                history, scores, during={"stopped_early": history.stopped_early}, fit=fit
            )
        )
        inputs = steps.measured_examples(
            data.train_inputs, labels, config.measure_examples, record, MEASURED_ON
        )
        record["measures"], measure_seconds = steps.measure_all(
            model, inputs, config.measures, config.measure_settings()
        )
        steps.save_network(model, plan, run, CHECKPOINT_KEYS)
        record["timings"] = {"training": training_seconds, "measures": measure_seconds}
        if config.stress:
            record["stress"] = measure_twins(
                model, inputs, config.measures, config.measure_settings(), plan.run_id
            )
            record["timings"]["stress"] = record["stress"]["seconds"]
        record["timings"]["total"] = time.perf_counter() - started

    def summarise(self, result: Mapping[str, Any]) -> str:
        """One line about a complete run: accuracies, gap, timings, failed measures."""
        failed = [name for name, entry in result["measures"].items() if "error" in entry]
        timings = result["timings"]
        text = (
            f"{result['run_id']}: train {result['train_accuracy']:.3f}, test "
            f"{result['test_accuracy']:.3f}, gap {result['gap']:.3f} after {result['epochs_run']} "
            f"epochs; {timings['training']:.1f} s training, {timings['measures']:.1f} s measures"
        )
        if failed:
            text += f"; failed: {', '.join(failed)}"
        return text


#: The randomized-label study.
RANDOMIZED_LABELS = RandomizedLabels()


def read_result(path: Path, fingerprint: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """A finished randomized-label run's ``result.json``, or ``None`` and why not usable.

    :func:`minsharp.study.core.runner.read_result` with this kind's numbers: a complete result of
    this format and version, with finite accuracies, gap, ratio and seed and valid measure
    entries, made (when ``fingerprint`` is given) with the same settings.
    """
    return read_stored_result(path, fingerprint, numbers=RESULT_NUMBERS)


def run_study(config: StudyConfig, directory: str | Path, **options: Any) -> StudyOutcome:
    """Run (or resume) the randomized-label study ``config`` in ``directory``.

    :func:`minsharp.study.core.runner.run_study` with :data:`RANDOMIZED_LABELS`, and its options
    (``data_root``, ``download``, ``force``, ``progress``, ``device``, ``argv``, ``echo``):
    the data are loaded once; ``study.json`` is checked against ``config`` and the data, then
    (re)written; each run not yet finished is trained, measured and written to
    ``runs/<run-id>/`` (checkpoint first, ``result.json`` last, both atomically).

    Raises:
        StudyError: the directory belongs to another study or configuration (without
            ``force``), is not a directory, or holds an unreadable ``study.json``.
        DataError: the data cannot be loaded (missing files: the message says how to get
            them).
    """
    return runner.run_study(RANDOMIZED_LABELS, config, directory, **options)

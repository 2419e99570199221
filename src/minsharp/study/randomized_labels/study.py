"""The randomized-label study: train a grid of networks on partly shuffled labels, measure each.

For every run of the grid ratios × seeds × models of a :class:`~minsharp.study.core.config.
StudyConfig` (theory §6; Ibayashi, Hamaguchi & Imaizumi 2021, Fig. 2):

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
   stopping early…) are kept with its value.

The directory, resume, atomic per-run results and provenance are those of every study kind
(:mod:`minsharp.study.core.runner`); this module is the ``randomized-labels`` kind,
:data:`RANDOMIZED_LABELS`. A run whose ``result.json`` is complete and was made with the same
settings (its ``fingerprint``) is never redone; a missing, unreadable, truncated or failed
result is redone. A directory written for another configuration, or with other data, is
refused unless ``force`` (then ``study.json`` is rewritten and every run whose settings
changed is redone).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minsharp.data.corruption import corrupt_labels
from minsharp.study.core import runner as base
from minsharp.study.core.config import StudyConfig, preset, ratio_label
from minsharp.study.core.runner import StudyData, StudyOutcome, derive_seed
from minsharp.training import accuracy, train_classifier

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


@dataclass(frozen=True)
class RunPlan(base.RunPlan):
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


def corruption_seed(seed: int, ratio: float) -> int:
    """The label-corruption seed of trial ``seed`` at ``ratio`` (shared by all its models)."""
    return derive_seed("corruption", seed, ratio_label(ratio))


def run_id(model: str, ratio: float, seed: int) -> str:
    """The id of a run, e.g. ``mlp_r0.25_s1``."""
    return f"{model}_r{ratio_label(ratio)}_s{seed}"


def plan_runs(config: StudyConfig) -> list[RunPlan]:
    """The runs of the grid, trial by trial: for each seed, each model, each ratio.

    Running trial by trial means a study stopped half-way has complete ratio sweeps for its
    first seeds, which the report can already correlate.
    """
    return [
        RunPlan(model=model, seed=seed, training=config.training_config(model, seed), ratio=ratio)
        for seed in config.seeds
        for model in config.models
        for ratio in config.ratios
    ]


def run_fingerprint(config: StudyConfig, plan: RunPlan) -> str:
    """SHA-256 of every setting that decides a run's result (:func:`.base.run_fingerprint`).

    The labels' corruption (rule, ratio and seed) enters besides the shared settings.
    """
    return base.run_fingerprint(
        KIND,
        config,
        plan,
        corruption={"rule": config.corruption, "ratio": plan.ratio, "seed": plan.corruption_seed},
    )


def execute_run(
    config: StudyConfig,
    plan: RunPlan,
    data: StudyData,
    run_dir: Path,
    record: dict[str, Any],
    progress: bool = False,
) -> None:
    """Corrupt, build, train, measure and save one run, filling ``record``.

    A training failure (divergence, out of memory…) propagates, and
    :func:`minsharp.study.core.runner.execute_run` writes the run as failed with what ``record``
    holds; a measure failure is recorded under that measure and the run is complete.
    """
    started = time.perf_counter()
    record.update(base.run_settings(plan, data, config.dtype, ratio=plan.ratio))
    corrupted = corrupt_labels(
        data.train_labels.cpu(),
        plan.ratio,
        rule=config.corruption,  # type: ignore[arg-type]
        num_classes=data.num_classes,
        seed=plan.corruption_seed,
    )
    labels = corrupted.labels.to(data.device)
    record["corruption"] = corrupted.record
    model = base.build_network(plan, data, record)
    history = train_classifier(
        model,
        data.train_inputs,
        labels,
        plan.training,
        test=(data.test_inputs, data.test_labels),
        progress=progress,
        description=plan.run_id,
    )
    training_seconds = time.perf_counter() - started
    scores = base.evaluate(model, data, labels)
    corrupted_index = corrupted.indices.to(data.device)
    fit = {
        "clean_train_accuracy": accuracy(model, data.train_inputs, data.train_labels),
        "corrupted_fit": (
            accuracy(model, data.train_inputs[corrupted_index], labels[corrupted_index])
            if len(corrupted_index)
            else None
        ),
    }
    record.update(
        base.training_outcome(
            history, scores, during={"stopped_early": history.stopped_early}, fit=fit
        )
    )
    inputs = base.measured_examples(
        data.train_inputs, labels, config.measure_examples, record, MEASURED_ON
    )
    record["measures"], measure_seconds = base.measure_all(
        model, inputs, config.measures, config.measure_settings()
    )
    base.save_network(model, plan, data, run_dir, record, CHECKPOINT_KEYS)
    record["timings"] = {
        "training": training_seconds,
        "measures": measure_seconds,
        "total": time.perf_counter() - started,
    }


def summarise_run(result: Mapping[str, Any]) -> str:
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


#: The randomized-label study as a :class:`~minsharp.study.core.runner.StudyKind`.
RANDOMIZED_LABELS = base.StudyKind(
    name=KIND,
    plan_runs=plan_runs,
    fingerprint=run_fingerprint,
    execute=execute_run,
    preset=preset,
    summarise=summarise_run,
    measured_on=MEASURED_ON,
    result_numbers=RESULT_NUMBERS,
)


def read_result(path: Path, fingerprint: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """A finished randomized-label run's ``result.json``, or ``None`` and why not usable.

    :func:`minsharp.study.core.runner.read_result` with this kind's numbers: a complete result of
    this format and version, with finite accuracies, gap, ratio and seed and valid measure
    entries, made (when ``fingerprint`` is given) with the same settings.
    """
    return base.read_result(path, fingerprint, numbers=RESULT_NUMBERS)


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
    return base.run_study(RANDOMIZED_LABELS, config, directory, **options)

"""The randomized-label study: train a grid of networks on partly shuffled labels, measure each.

For every run of the grid ratios × seeds × models of a :class:`~minsharp.study.presets.
StudyConfig` (MATH §6; Ibayashi, Hamaguchi & Imaizumi 2021, Fig. 2):

1. the training labels are corrupted: a fraction r of them permuted among themselves (or
   replaced by uniform labels), seeded by :func:`corruption_seed` of the run's seed and
   ratio, so the models of one trial share their labels; the test labels stay clean;
2. the zoo network is built with ``torch.manual_seed(seed)`` and trained with
   :func:`~minsharp.train.train_classifier` (minibatch order seeded by ``seed`` too);
3. train accuracy (on the corrupted labels it was trained on), test accuracy (clean) and the
   generalization gap ``train accuracy − test accuracy`` are recorded;
4. each measure is computed with :func:`minsharp.measure` on the training inputs **with the
   corrupted labels**, the labels the network was trained on (as in the paper, measures are
   taken at the end of training over the training inputs). A measure that fails is recorded
   as an error with its message, and the run goes on; warnings a measure raises (a solver
   stopping early…) are kept with its value.

The directory, resume, atomic per-run results and provenance are those of every study kind
(:mod:`minsharp.study.base`); this module is the ``randomized-labels`` kind,
:data:`RANDOMIZED_LABELS`. A run whose ``result.json`` is complete and was made with the same
settings (its ``fingerprint``) is never redone; a missing, unreadable, truncated or failed
result is redone. A directory written for another configuration, or with other data, is
refused unless ``force`` (then ``study.json`` is rewritten and every run whose settings
changed is redone).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minsharp.data.corruption import corrupt_labels
from minsharp.models import count_parameters
from minsharp.study import base
from minsharp.study.base import (
    CHECKPOINT_DIR,
    FORMAT_VERSION,
    RESULT_FILE,
    RUN_FORMAT,
    RUNS_DIR,
    STUDY_FILE,
    STUDY_FORMAT,
    StudyData,
    StudyOutcome,
    derive_seed,
    machine_info,
    read_study,
    versions,
)
from minsharp.study.presets import ModelPlan, StudyConfig, ratio_label, stored_config
from minsharp.train import TrainingConfig, accuracy, save_checkpoint, train_classifier

__all__ = [
    "CHECKPOINT_DIR",
    "FORMAT_VERSION",
    "KIND",
    "MEASURED_ON",
    "RANDOMIZED_LABELS",
    "RESULT_FILE",
    "RUNS_DIR",
    "RUN_FORMAT",
    "STUDY_FILE",
    "STUDY_FORMAT",
    "RunPlan",
    "StudyOutcome",
    "corruption_seed",
    "derive_seed",
    "execute_run",
    "machine_info",
    "plan_runs",
    "read_result",
    "read_study",
    "run_fingerprint",
    "run_id",
    "run_study",
    "summarise_run",
    "versions",
]

#: The kind of study this module runs (``study.json``'s ``kind``).
KIND = "randomized-labels"

#: What the measures are computed on, in words (recorded in every result).
MEASURED_ON = (
    "the training inputs with the corrupted labels, i.e. the labels the network was trained on"
)

#: Keys a complete randomized-label result holds as finite numbers.
RESULT_NUMBERS = ("train_accuracy", "test_accuracy", "gap", "ratio", "seed")


@dataclass(frozen=True)
class RunPlan:
    """One run of the grid.

    Attributes:
        run_id: ``<model>_r<ratio>_s<seed>``, the name of its directory.
        model: the network's plan.
        ratio: the label-noise ratio r.
        seed: the trial seed: network initialisation and minibatch order.
        corruption_seed: the seed of the label corruption (:func:`corruption_seed`).
        training: the run's training configuration.
    """

    run_id: str
    model: ModelPlan
    ratio: float
    seed: int
    corruption_seed: int
    training: TrainingConfig


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
        RunPlan(
            run_id=run_id(model.name, ratio, seed),
            model=model,
            ratio=ratio,
            seed=seed,
            corruption_seed=corruption_seed(seed, ratio),
            training=config.training_config(model, seed),
        )
        for seed in config.seeds
        for model in config.models
        for ratio in config.ratios
    ]


def run_fingerprint(config: StudyConfig, plan: RunPlan) -> str:
    """SHA-256 of every setting that decides a run's result.

    Data, labels, model, training and measures enter; a stored result is reused only when
    its fingerprint is this one.
    """
    return base.fingerprint(
        {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "data": {
                "dataset": config.dataset,
                "train_size": config.train_size,
                "test_size": config.test_size,
                "data_seed": config.data_seed,
                "dtype": config.dtype,
            },
            "corruption": {
                "rule": config.corruption,
                "ratio": plan.ratio,
                "seed": plan.corruption_seed,
            },
            "model": plan.model.to_dict(),
            "training": plan.training.as_dict(),
            "measures": {
                name: dict(config.measure_options.get(name, {})) for name in config.measures
            },
            "measure_examples": config.measure_examples,
        }
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
    :func:`minsharp.study.base.execute_run` writes the run as failed with what ``record``
    holds; a measure failure is recorded under that measure and the run is complete.
    """
    started = time.perf_counter()
    record.update(
        model=plan.model.name,
        zoo=plan.model.zoo,
        model_options=dict(plan.model.options),
        ratio=plan.ratio,
        seed=plan.seed,
        training=plan.training.as_dict(),
        device=str(data.device),
        dtype=config.dtype,
        threads=torch.get_num_threads(),
    )
    corrupted = corrupt_labels(
        data.train_labels.cpu(),
        plan.ratio,
        rule=config.corruption,  # type: ignore[arg-type]
        num_classes=data.num_classes,
        seed=plan.corruption_seed,
    )
    labels = corrupted.labels.to(data.device)
    record["corruption"] = corrupted.record
    model = base.build_network(plan.model, plan.seed, data)
    record["parameters"] = count_parameters(model)
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
    model.eval()
    train_accuracy = accuracy(model, data.train_inputs, labels)
    test_accuracy = accuracy(model, data.test_inputs, data.test_labels)
    corrupted_index = corrupted.indices.to(data.device)
    record.update(
        history=history.as_dict(),
        epochs_run=history.epochs_run,
        stopped_early=history.stopped_early,
        final_loss=history.loss[-1] if history.loss else math.nan,
        train_accuracy=train_accuracy,
        clean_train_accuracy=accuracy(model, data.train_inputs, data.train_labels),
        corrupted_fit=(
            accuracy(model, data.train_inputs[corrupted_index], labels[corrupted_index])
            if len(corrupted_index)
            else None
        ),
        test_accuracy=test_accuracy,
        gap=train_accuracy - test_accuracy,
    )
    count = config.measure_examples or len(labels)
    inputs = (data.train_inputs[:count], labels[:count])
    record["measured_on"] = {"description": MEASURED_ON, "examples": min(count, len(labels))}
    record["measures"], measure_seconds = base.measure_all(
        model, inputs, config.measures, config.measure_options
    )
    save_checkpoint(
        run_dir / CHECKPOINT_DIR,
        model,
        model_spec=base.model_spec(plan.model, data),
        record={
            "run_id": plan.run_id,
            "ratio": plan.ratio,
            "seed": plan.seed,
            "training": plan.training.as_dict(),
            "corruption": corrupted.record,
            "train_accuracy": train_accuracy,
            "test_accuracy": test_accuracy,
        },
    )
    record.update(
        checkpoint=CHECKPOINT_DIR,
        timings={
            "training": training_seconds,
            "measures": measure_seconds,
            "total": time.perf_counter() - started,
        },
    )


def summarise_run(result: Mapping[str, Any]) -> str:
    """One line about a run's result: accuracies, gap, timings, failed measures."""
    if result.get("status") != "complete":
        return f"{result['run_id']}: FAILED ({result.get('error')}: {result.get('message')})"
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


def _grid_text(config: StudyConfig) -> str:
    return base.count_text(
        (
            (len(config.ratios), "ratio", "ratios"),
            (len(config.seeds), "seed", "seeds"),
            (len(config.models), "model", "models"),
        )
    )


#: The randomized-label study as a :class:`~minsharp.study.base.StudyKind`.
RANDOMIZED_LABELS = base.StudyKind(
    name=KIND,
    plan_runs=plan_runs,
    fingerprint=run_fingerprint,
    execute=execute_run,
    stored_config=stored_config,
    grid_text=_grid_text,
    summarise=summarise_run,
    measured_on=MEASURED_ON,
    result_numbers=RESULT_NUMBERS,
)


def read_result(path: Path, fingerprint: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """A finished randomized-label run's ``result.json``, or ``None`` and why not usable.

    Usable: a JSON object of this format and version, status ``"complete"``, finite
    accuracies, gap, ratio and seed, an entry (value or error) per measure, and (when
    ``fingerprint`` is given) made with the same settings.
    """
    return base.read_result(path, fingerprint, numbers=RESULT_NUMBERS)


def run_study(
    config: StudyConfig,
    directory: str | Path,
    *,
    data_root: str | Path | None = None,
    download: bool = False,
    force: bool = False,
    progress: bool = False,
    device: str | torch.device = "cpu",
    argv: list[str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> StudyOutcome:
    """Run (or resume) the randomized-label study ``config`` in ``directory``.

    :func:`minsharp.study.base.run_study` with :data:`RANDOMIZED_LABELS`: the data are loaded
    once; ``study.json`` is checked against ``config`` and the data, then (re)written; each
    run not yet finished is trained, measured and written to ``runs/<run-id>/`` (checkpoint
    first, ``result.json`` last, both atomically).

    Args:
        config: the study.
        directory: the study directory (created if needed).
        data_root: the folder of the data set's files (default: the data cache).
        download: fetch missing official data files first.
        force: overwrite a ``study.json`` written for another configuration or other data
            (runs whose settings changed are then redone).
        progress: show progress bars over runs and over each run's epochs (stderr).
        device: where to train and measure.
        argv: the command line, recorded with the session.
        echo: called with one line per run and per notice (default: print to stdout).

    Returns:
        What was reused, trained, redone and failed.

    Raises:
        StudyError: the directory belongs to another study or configuration (without
            ``force``), is not a directory, or holds an unreadable ``study.json``.
        DataError: the data cannot be loaded (missing files: the message says how to get
            them).
    """
    return base.run_study(
        RANDOMIZED_LABELS,
        config,
        directory,
        data_root=data_root,
        download=download,
        force=force,
        progress=progress,
        device=device,
        argv=argv,
        echo=echo,
    )

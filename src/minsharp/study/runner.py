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

Layout of a study directory ``DIR``::

    DIR/study.json                  config, data record, planned run ids, sessions (machine…)
    DIR/runs/<run-id>/result.json   one finished run (written atomically, last)
    DIR/runs/<run-id>/checkpoint/   model.safetensors + checkpoint.json (save_checkpoint)

Resuming: a run whose ``result.json`` is complete and was made with the same settings (its
``fingerprint``) is never redone; a missing, unreadable, truncated or failed result is redone.
A study rerun with the same directory continues where it stopped. A directory written for
another configuration, or with other data, is refused unless ``force`` (then ``study.json``
is rewritten and every run whose settings changed is redone).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from minsharp.data.corruption import corrupt_labels
from minsharp.data.datasets import Splits, load_dataset
from minsharp.errors import MinsharpError, StudyError
from minsharp.io import jsonable, write_json_atomic
from minsharp.measures import measure
from minsharp.models import build_model, count_parameters
from minsharp.study.presets import ModelPlan, StudyConfig, ratio_label, stored_config
from minsharp.train import TrainingConfig, accuracy, save_checkpoint, train_classifier

#: ``format`` tags and versions of the two kinds of JSON file a study writes.
STUDY_FORMAT = "minsharp-study"
RUN_FORMAT = "minsharp-study-run"
FORMAT_VERSION = 1

#: File and folder names inside a study directory.
STUDY_FILE = "study.json"
RUNS_DIR = "runs"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoint"

#: The kind of study this module runs (``study.json``'s ``kind``).
KIND = "randomized-labels"

#: What the measures are computed on, in words (recorded in every result).
MEASURED_ON = (
    "the training inputs with the corrupted labels, i.e. the labels the network was trained on"
)


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


@dataclass
class StudyOutcome:
    """What :func:`run_study` did.

    Attributes:
        directory: the study directory.
        planned: run ids of the grid, in the order they run.
        reused: runs found finished and kept.
        trained: runs trained (and measured) now.
        redone: among ``trained``, runs whose stored result was unusable, with the reason.
        failed: runs whose training failed, with the message (they are redone next time).
        measure_errors: ``(run id, measure, message)`` of every measure that failed.
        seconds: wall time of the call.
    """

    directory: Path
    planned: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    redone: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    measure_errors: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0


def derive_seed(*parts: Any) -> int:
    """A seed in [0, 2³¹) determined by ``parts`` (SHA-256 of their JSON), stable everywhere.

    Example:
        >>> derive_seed("corruption", 0, "0.5") == derive_seed("corruption", 0, "0.5")
        True
    """
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


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
    settings = {
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
        "measures": {name: dict(config.measure_options.get(name, {})) for name in config.measures},
        "measure_examples": config.measure_examples,
    }
    text = json.dumps(jsonable(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- the study


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

    The data are loaded once. ``study.json`` is checked against ``config`` and the data, then
    (re)written; each run not yet finished is trained, measured and written to
    ``runs/<run-id>/`` (checkpoint first, ``result.json`` last, both atomically).

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
    started = time.perf_counter()
    say = echo or _echo
    directory = Path(directory).expanduser()
    device = torch.device(device)
    previous = _existing_study(directory, force=force)
    if previous is not None and not force:
        _check_same_config(directory, previous, config)
    dtype = getattr(torch, config.dtype)
    splits = load_dataset(
        config.dataset,
        root=data_root,
        download=download,
        train_size=config.train_size,
        test_size=config.test_size,
        seed=config.data_seed,
        dtype=dtype,
    )
    if previous is not None and not force:
        _check_same_data(directory, previous, splits.info)
    plans = plan_runs(config)
    _check_models_fit(config, splits)
    session = {
        "started": _now(),
        "argv": argv,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": machine_info(device),
        "versions": versions(),
    }
    sessions = list(previous.get("sessions", [])) if previous is not None else []
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RUNS_DIR).mkdir(exist_ok=True)
    study = {
        "format": STUDY_FORMAT,
        "version": FORMAT_VERSION,
        "kind": KIND,
        "created": previous.get("created", _now()) if previous is not None else _now(),
        "config": config.to_dict(),
        "data": splits.info,
        "measured_on": MEASURED_ON,
        "runs": [plan.run_id for plan in plans],
        "sessions": [*sessions, session],
    }
    write_json_atomic(directory / STUDY_FILE, study)

    outcome = StudyOutcome(directory=directory, planned=[plan.run_id for plan in plans])
    todo: list[tuple[RunPlan, str]] = []
    for plan in plans:
        fingerprint = run_fingerprint(config, plan)
        stored, reason = read_result(directory / RUNS_DIR / plan.run_id / RESULT_FILE, fingerprint)
        if stored is not None:
            outcome.reused.append(plan.run_id)
            outcome.measure_errors += _measure_errors(plan.run_id, stored)
        else:
            todo.append((plan, fingerprint))
            if reason != "not run yet":
                outcome.redone[plan.run_id] = reason
    say(
        f"study {directory}: {len(plans)} runs ({_grid_text(config)}); "
        f"{len(outcome.reused)} finished already, {len(todo)} to run"
    )
    for run, reason in outcome.redone.items():
        say(f"  redoing {run}: {reason}")

    data = _on_device(splits, device)
    bar = tqdm(
        total=len(plans),
        initial=len(outcome.reused),
        desc="runs",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar:
        for plan, fingerprint in todo:
            bar.set_postfix_str(plan.run_id, refresh=True)
            result = execute_run(
                config, plan, data, directory, fingerprint=fingerprint, progress=progress
            )
            bar.update(1)
            if result["status"] == "complete":
                outcome.trained.append(plan.run_id)
                outcome.measure_errors += _measure_errors(plan.run_id, result)
            else:
                outcome.failed[plan.run_id] = result["message"]
            line = f"[{len(outcome.reused) + len(outcome.trained) + len(outcome.failed)}/"
            say(f"{line}{len(plans)}] {summarise_run(result)}")
    outcome.seconds = time.perf_counter() - started
    return outcome


@dataclass(frozen=True)
class _Data:
    """The study's data on the compute device (inputs in the study's dtype)."""

    train_inputs: Tensor
    train_labels: Tensor
    test_inputs: Tensor
    test_labels: Tensor
    num_classes: int
    input_shape: tuple[int, ...]


def _on_device(splits: Splits, device: torch.device) -> _Data:
    return _Data(
        splits.train_inputs.to(device),
        splits.train_labels.to(device),
        splits.test_inputs.to(device),
        splits.test_labels.to(device),
        splits.num_classes,
        splits.input_shape,
    )


def execute_run(
    config: StudyConfig,
    plan: RunPlan,
    data: _Data,
    directory: Path,
    *,
    fingerprint: str,
    progress: bool = False,
) -> dict[str, Any]:
    """Corrupt, build, train, measure and save one run; returns the record written.

    A training failure (divergence, out of memory…) is written as a ``"failed"`` result with
    its message, which the next resume redoes; a measure failure is recorded under that
    measure and the run is complete.
    """
    run_dir = directory / RUNS_DIR / plan.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / RESULT_FILE
    if result_path.exists():  # an unusable result (checked by the caller): not a finished run
        result_path.unlink()
    started = time.perf_counter()
    record: dict[str, Any] = {
        "format": RUN_FORMAT,
        "version": FORMAT_VERSION,
        "run_id": plan.run_id,
        "fingerprint": fingerprint,
        "model": plan.model.name,
        "zoo": plan.model.zoo,
        "model_options": dict(plan.model.options),
        "ratio": plan.ratio,
        "seed": plan.seed,
        "training": plan.training.as_dict(),
        "device": str(data.train_inputs.device),
        "dtype": config.dtype,
        "threads": torch.get_num_threads(),
    }
    device = data.train_inputs.device
    corrupted = corrupt_labels(
        data.train_labels.cpu(),
        plan.ratio,
        rule=config.corruption,  # type: ignore[arg-type]
        num_classes=data.num_classes,
        seed=plan.corruption_seed,
    )
    labels = corrupted.labels.to(device)
    record["corruption"] = corrupted.record
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(plan.seed)
            model = build_model(
                plan.model.zoo, data.input_shape, data.num_classes, **plan.model.options
            )
        model.to(device=device, dtype=data.train_inputs.dtype)
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
    except Exception as error:  # recorded, and redone on resume: the study goes on
        record.update(
            status="failed",
            error=type(error).__name__,
            message=str(error).splitlines()[0] if str(error) else type(error).__name__,
            traceback=traceback.format_exc(limit=4),
            finished=_now(),
        )
        write_json_atomic(result_path, record)
        return record
    training_seconds = time.perf_counter() - started
    model.eval()
    train_accuracy = accuracy(model, data.train_inputs, labels)
    test_accuracy = accuracy(model, data.test_inputs, data.test_labels)
    corrupted_index = corrupted.indices.to(device)
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
    measures: dict[str, Any] = {}
    measure_started = time.perf_counter()
    for name in config.measures:
        options = dict(config.measure_options.get(name, {}))
        began = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = measure(name, model, inputs, **options)
            except Exception as error:  # recorded for this run; the other measures go on
                measures[name] = {
                    "error": type(error).__name__,
                    "message": str(error) or type(error).__name__,
                    "seconds": time.perf_counter() - began,
                }
            else:
                measures[name] = {
                    key: value for key, value in result.to_dict().items() if key != "name"
                }
        if caught:  # e.g. a solver that stopped early: kept with the value, not printed
            measures[name]["warnings"] = [str(warning.message) for warning in caught]
    measure_seconds = time.perf_counter() - measure_started
    record["measures"] = measures
    save_checkpoint(
        run_dir / CHECKPOINT_DIR,
        model,
        model_spec={
            "name": plan.model.zoo,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "options": dict(plan.model.options),
        },
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
        status="complete",
        checkpoint=CHECKPOINT_DIR,
        timings={
            "training": training_seconds,
            "measures": measure_seconds,
            "total": time.perf_counter() - started,
        },
        finished=_now(),
    )
    write_json_atomic(result_path, record)
    return record


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


# --------------------------------------------------------------------------- stored files


def read_result(path: Path, fingerprint: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """A finished run's ``result.json``, or ``None`` and why it cannot be used.

    A result is usable when it is a JSON object of this format and version, its status is
    ``"complete"``, it holds finite accuracies and a gap and an entry (value or error) per
    measure, and (when ``fingerprint`` is given) it was made with the same settings.
    """
    if not path.exists():
        return None, "not run yet"
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"{path.name} is unreadable or truncated ({type(error).__name__}: {error})"
    if not isinstance(content, dict) or content.get("format") != RUN_FORMAT:
        return None, f"{path.name} is not a {RUN_FORMAT} file"
    if content.get("version") != FORMAT_VERSION:
        return None, f"{path.name} has format version {content.get('version')!r}"
    if content.get("status") != "complete":
        return None, f"the run had failed ({content.get('error')}: {content.get('message')})"
    if fingerprint is not None and content.get("fingerprint") != fingerprint:
        return None, "it was made with other settings"
    for key in ("train_accuracy", "test_accuracy", "gap", "ratio", "seed"):
        value = content.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            return None, f"{path.name} has no valid {key!r}"
    measures = content.get("measures")
    if not isinstance(measures, dict) or not all(
        isinstance(entry, dict) and ("value" in entry or "error" in entry)
        for entry in measures.values()
    ):
        return None, f"{path.name} has no valid 'measures'"
    return content, ""


def read_study(directory: str | Path) -> dict[str, Any]:
    """The content of ``directory/study.json``.

    Raises:
        StudyError: no such file, or not a study file.
    """
    directory = Path(directory).expanduser()
    path = directory / STUDY_FILE
    if not directory.is_dir():
        raise StudyError(f"study directory {directory} does not exist.")
    if not path.is_file():
        raise StudyError(
            f"{directory} is not a study directory: it has no {STUDY_FILE}. Give the --output "
            "directory of `minsharp study randomized-labels`."
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StudyError(f"{path} is unreadable ({error}).") from None
    if not isinstance(content, dict) or content.get("format") != STUDY_FORMAT:
        raise StudyError(f"{path} is not a {STUDY_FORMAT} file.")
    if content.get("version") != FORMAT_VERSION:
        raise StudyError(
            f"{path} has format version {content.get('version')!r}; this minsharp reads "
            f"version {FORMAT_VERSION}."
        )
    return content


def _existing_study(directory: Path, *, force: bool) -> dict[str, Any] | None:
    """The stored ``study.json`` of ``directory``, ``None`` for a new or empty directory."""
    if directory.exists() and not directory.is_dir():
        raise StudyError(f"--output {directory} is a file; give a directory.")
    if not directory.is_dir():
        return None
    if not (directory / STUDY_FILE).exists():
        if any(directory.iterdir()) and not force:
            raise StudyError(
                f"{directory} exists, is not empty and is not a study directory (no "
                f"{STUDY_FILE}); give a new or empty directory with --output (or --force to "
                "use it anyway)."
            )
        return None
    try:
        return read_study(directory)
    except StudyError as error:
        if force:
            return None
        raise StudyError(f"{error} Use --force to start the study there afresh.") from None


def _check_same_config(directory: Path, previous: Mapping[str, Any], config: StudyConfig) -> None:
    """Refuse to resume a study made with another configuration, naming the differences."""
    stored = previous.get("config")
    if previous.get("kind") != KIND:
        raise StudyError(f"{directory} holds a {previous.get('kind')!r} study, not {KIND!r}.")
    current = jsonable(config.to_dict())
    if stored == current:
        return
    try:
        # Same settings written differently (e.g. by an older minsharp): compare as configs.
        if isinstance(stored, Mapping) and stored_config(stored).to_dict() == config.to_dict():
            return
    except MinsharpError:
        pass
    differences = _differences(stored if isinstance(stored, Mapping) else {}, current)
    raise StudyError(
        f"{directory / STUDY_FILE} was written for another study configuration ("
        + "; ".join(differences[:6])
        + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
        + "). To resume it, run with the same preset, config file and overrides; for a new "
        "study give another --output; or pass --force to overwrite it (runs whose settings "
        "changed are then redone)."
    )


def data_identity(info: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a study's data: data set, split kind, sizes, seed, files' SHA-256."""
    return {
        "dataset": info.get("dataset"),
        "split_kind": info.get("split_kind"),
        "sizes": info.get("sizes"),
        "seed": info.get("seed"),
        "input_shape": info.get("input_shape"),
        "files": sorted(
            (entry.get("name"), entry.get("sha256")) for entry in info.get("files", []) or []
        ),
    }


def _check_same_data(directory: Path, previous: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    stored = data_identity(previous.get("data", {}) or {})
    current = jsonable(data_identity(info))
    stored = jsonable(stored)
    if stored == current:
        return
    differences = _differences(stored, current)
    raise StudyError(
        f"the data differ from those {directory / STUDY_FILE} was made with ("
        + "; ".join(differences[:4])
        + "): other files or another split. Point --data-dir at the same files, give another "
        "--output, or pass --force to redo the study with these data."
    )


def _differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: stored → current`` for each top-level key that differs."""
    return [
        f"{key}: {_short(stored.get(key))} there, {_short(current.get(key))} here"
        for key in sorted(set(stored) | set(current))
        if stored.get(key) != current.get(key)
    ]


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "…"


def _check_models_fit(config: StudyConfig, splits: Splits) -> None:
    """Build every model once for the data (on the meta device) to fail before training."""
    for model in config.models:
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                build_model(model.zoo, splits.input_shape, splits.num_classes, **model.options)
        except MinsharpError as error:
            raise StudyError(
                f"model {model.name!r} cannot be built for the {config.dataset} inputs of "
                f"shape {splits.input_shape}: {error}"
            ) from None


def _measure_errors(run: str, result: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (run, name, str(entry.get("message")))
        for name, entry in result.get("measures", {}).items()
        if "error" in entry
    ]


def _grid_text(config: StudyConfig) -> str:
    counts = (
        (len(config.ratios), "ratio", "ratios"),
        (len(config.seeds), "seed", "seeds"),
        (len(config.models), "model", "models"),
    )
    return " × ".join(f"{n} {one if n == 1 else many}" for n, one, many in counts)


# --------------------------------------------------------------------------- provenance


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The machine a study runs on: platform, CPU, cores, threads, accelerator."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        info["accelerator"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    """Versions of Python, minsharp and the libraries a study's numbers depend on."""
    found = {"python": sys.version.split()[0], "torch": torch.__version__}
    for package in ("minsharp", "numpy", "scipy", "scikit-learn", "matplotlib"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _echo(line: str) -> None:
    tqdm.write(line, file=sys.stdout)

"""What every study shares: the directory, resumable atomic per-run results, provenance.

A *study kind* (:class:`StudyKind`) says what one run of a grid is — how runs are planned
from a configuration, what settings decide a run's result (its fingerprint), and how a run
is executed — and :func:`run_study` does everything else the same way for all kinds:

* loads the data once (:func:`minsharp.data.datasets.load_dataset`), checks every model
  builds for them, and writes ``DIR/study.json`` (the kind, the configuration, the data
  record, the planned run ids and each session's machine and versions);
* skips every run whose ``DIR/runs/<run-id>/result.json`` is complete and carries the same
  fingerprint; redoes a missing, truncated, failed or outdated one;
* writes each run's record atomically once the run is done (``status`` ``"complete"``, or
  ``"failed"`` with the error, which the next resume redoes);
* refuses a directory made for another kind, configuration or data unless ``force``;
* shares the grid with any other worker running the same study in the same directory
  (torchrun ranks, or independent processes): a run is claimed by one worker at a time, and
  a worker's runs are free again the moment it dies (:mod:`minsharp.study.core.claims`).

A kind's ``execute`` is built from the steps every run shares: :func:`run_settings` (what
the record states first), :func:`build_network`, :func:`evaluate` and
:func:`training_outcome` (accuracies, gap, history), :func:`measured_examples` and
:func:`measure_all`, :func:`save_network`; its fingerprint is :func:`run_fingerprint` with
the kind's own settings.

Layout of a study directory ``DIR``::

    DIR/study.json                  kind, config, data record, planned run ids, sessions
    DIR/.lock                       taken while a worker checks and updates study.json
    DIR/runs/<run-id>/.lock         held by the worker running the run
    DIR/runs/<run-id>/result.json   one finished run (written atomically, last)
    DIR/runs/<run-id>/checkpoint/   model.safetensors + checkpoint.json (save_checkpoint)

The kinds: ``randomized-labels`` (:mod:`minsharp.study.randomized_labels.study`),
``batch-size`` (:mod:`minsharp.study.batch_size.study`) and ``bn-sharpness``
(:mod:`minsharp.study.bn_training.study`);
:mod:`minsharp.study.kinds` names them all.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from minsharp.data.datasets import Splits, load_dataset
from minsharp.errors import MinsharpError, StudyError
from minsharp.io import jsonable, read_tagged_json, write_json_atomic
from minsharp.measures import measure
from minsharp.models import build_model, count_parameters
from minsharp.study.core import claims as claims
from minsharp.study.core.config import GridConfig, ModelPlan, Presets
from minsharp.training import TrainingConfig, TrainingHistory, accuracy, save_checkpoint

#: ``format`` tags and versions of the two kinds of JSON file a study writes.
STUDY_FORMAT = "minsharp-study"
RUN_FORMAT = "minsharp-study-run"
FORMAT_VERSION = 1

#: File and folder names inside a study directory.
STUDY_FILE = "study.json"
RUNS_DIR = "runs"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class RunPlan:
    """One run of a study's grid, as every kind plans it; a kind adds its axis and the run id.

    Attributes:
        model: the network's plan.
        seed: the network's initialisation and the minibatch order, shared by the runs of a
            seed that a kind compares.
        training: the run's training configuration.
    """

    model: ModelPlan
    seed: int
    training: TrainingConfig

    @property
    def run_id(self) -> str:
        """The run's id, the name of its directory."""
        raise NotImplementedError


@dataclass(frozen=True)
class StudyData:
    """A study's data on the compute device (inputs in the study's dtype)."""

    train_inputs: Tensor
    train_labels: Tensor
    test_inputs: Tensor
    test_labels: Tensor
    num_classes: int

    @classmethod
    def from_splits(cls, splits: Splits, device: torch.device) -> StudyData:
        """``splits`` moved to ``device``."""
        return cls(
            splits.train_inputs.to(device),
            splits.train_labels.to(device),
            splits.test_inputs.to(device),
            splits.test_labels.to(device),
            splits.num_classes,
        )

    @property
    def device(self) -> torch.device:
        """Where the data live."""
        return self.train_inputs.device

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input."""
        return tuple(self.train_inputs.shape[1:])


@dataclass(frozen=True)
class StudyKind:
    """One kind of study: how its runs are planned, fingerprinted, executed and checked.

    Attributes:
        name: the kind, as ``study.json`` records it and ``minsharp study <name>`` runs it.
        plan_runs: ``config → [plan, …]``, each plan with a unique ``run_id``.
        fingerprint: ``(config, plan) → str``, the SHA-256 of every setting that decides
            the run's result (:func:`run_fingerprint`); a stored result is reused only when
            its fingerprint is this one.
        execute: ``(config, plan, data, run_dir, record, progress) → None``: runs the plan
            and fills ``record`` (a dict already holding the format, run id and
            fingerprint). An exception marks the run failed, with what ``record`` holds by
            then; the record is written by :func:`run_study`.
        preset: the kind's presets (:class:`~minsharp.study.core.config.Presets`).
        summarise: ``result → str``, one line about a complete run (:meth:`summary` says
            the failed ones).
        measured_on: what the measures are computed on, in words (``study.json``).
        result_numbers: keys a complete result holds as finite numbers.
        measure_groups: keys of a result holding ``{measure: entry}`` dictionaries, each
            entry with a ``value`` or an ``error``.
    """

    name: str
    plan_runs: Callable[[Any], Sequence[RunPlan]]
    fingerprint: Callable[[Any, Any], str]
    execute: Callable[[Any, Any, StudyData, Path, dict[str, Any], bool], None]
    preset: Presets[Any]
    summarise: Callable[[Mapping[str, Any]], str]
    measured_on: str
    result_numbers: tuple[str, ...]
    measure_groups: tuple[str, ...] = ("measures",)

    def stored_config(self, content: Mapping[str, Any]) -> Any:
        """The configuration stored as ``content`` (``study.json``'s ``config``)."""
        return self.preset.stored(content)

    def summary(self, result: Mapping[str, Any]) -> str:
        """One line about a run's result, complete (:attr:`summarise`) or failed."""
        if result.get("status") != "complete":
            return f"{result['run_id']}: FAILED ({result.get('error')}: {result.get('message')})"
        return self.summarise(result)


@dataclass
class StudyOutcome:
    """What :func:`run_study` did.

    Attributes:
        directory: the study directory.
        planned: run ids of the grid, in the order they run.
        reused: runs found finished and kept.
        trained: runs trained (and measured) now.
        redone: runs run again because their stored result was unusable, with the reason.
        failed: runs that failed, with the message (they are redone next time).
        measure_errors: ``(run id, measure, message)`` of every measure that failed.
        elsewhere: runs another worker held when this one reached them (:mod:`claims`).
        unfinished: those of ``elsewhere`` still without a finished result at the end.
        seconds: wall time of the call.
    """

    directory: Path
    planned: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    redone: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    measure_errors: list[tuple[str, str, str]] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    seconds: float = 0.0


def derive_seed(*parts: Any) -> int:
    """A seed in [0, 2³¹) determined by ``parts`` (SHA-256 of their JSON), stable everywhere.

    Example:
        >>> derive_seed("corruption", 0, "0.5") == derive_seed("corruption", 0, "0.5")
        True
    """
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def fingerprint(settings: Mapping[str, Any]) -> str:
    """SHA-256 of ``settings`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(jsonable(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def run_fingerprint(
    kind: str, config: GridConfig, plan: RunPlan, **settings: Mapping[str, Any]
) -> str:
    """The :func:`fingerprint` of every setting that decides a run of study kind ``kind``.

    The data, the model, its training, the measures with their options
    (:meth:`~minsharp.study.core.config.GridConfig.measure_settings`) and the examples they are
    computed on, plus the kind's own ``settings`` (e.g. the run's label corruption).
    """
    return fingerprint(
        {
            "kind": kind,
            "format_version": FORMAT_VERSION,
            "data": {
                "dataset": config.dataset,
                "train_size": config.train_size,
                "test_size": config.test_size,
                "data_seed": config.data_seed,
                "dtype": config.dtype,
            },
            "model": plan.model.to_dict(),
            "training": plan.training.as_dict(),
            "measures": config.measure_settings(),
            "measure_examples": config.measure_examples,
            **settings,
        }
    )


# --------------------------------------------------------------------------- the study


def run_study(
    kind: StudyKind,
    config: GridConfig,
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
    """Run (or resume) the study ``config`` of kind ``kind`` in ``directory``.

    The data are loaded once. ``study.json`` is checked against ``kind``, ``config`` and the
    data, then (re)written; each run not yet finished is executed and its ``result.json``
    written atomically.

    Args:
        kind: the study kind.
        config: the kind's configuration.
        directory: the study directory (created if needed).
        data_root: the folder of the data set's files (default: the data cache).
        download: fetch missing official data files first.
        force: overwrite a ``study.json`` written for another configuration or other data
            (runs whose settings changed are then redone).
        progress: show progress bars over runs and inside runs (stderr).
        device: where to train and measure.
        argv: the command line, recorded with the session.
        echo: called with one line per run and per notice (default: print to stdout).

    Returns:
        What was reused, trained, redone and failed.

    Raises:
        StudyError: the directory belongs to another study, kind or configuration (without
            ``force``), is not a directory, or holds an unreadable ``study.json``.
        DataError: the data cannot be loaded (missing files: the message says how to get
            them).
    """
    started = time.perf_counter()
    say = echo or _echo
    directory = Path(directory).expanduser()
    device = torch.device(device)
    if directory.exists() and not directory.is_dir():
        raise StudyError(f"--output {directory} is a file; give a directory.")
    # Workers sharing the directory take turns to check and update study.json.
    with claims.exclusive(directory):
        splits, plans = _record_session(
            kind, config, directory, data_root, download, force, device, argv
        )
    run_ids = [plan.run_id for plan in plans]
    outcome = StudyOutcome(directory=directory, planned=run_ids)

    def stored_result(run_id: str, digest: str) -> tuple[dict[str, Any] | None, str]:
        return read_result(
            directory / RUNS_DIR / run_id / RESULT_FILE,
            digest,
            numbers=kind.result_numbers,
            groups=kind.measure_groups,
        )

    todo: list[tuple[Any, str]] = []
    for plan in plans:
        digest = kind.fingerprint(config, plan)
        stored, reason = stored_result(plan.run_id, digest)
        if stored is not None:
            outcome.reused.append(plan.run_id)
            outcome.measure_errors += measure_errors(plan.run_id, stored, kind.measure_groups)
        else:
            todo.append((plan, digest))
            if reason != "not run yet":
                outcome.redone[plan.run_id] = reason
    say(
        f"study {directory}: {len(plans)} runs ({config.grid_text()}); "
        f"{len(outcome.reused)} finished already, {len(todo)} to run"
    )
    for run, reason in outcome.redone.items():
        say(f"  redoing {run}: {reason}")

    data = StudyData.from_splits(splits, device)
    bar = tqdm(
        total=len(plans),
        initial=len(outcome.reused),
        desc="runs",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar:
        for plan, digest in todo:
            bar.set_postfix_str(plan.run_id, refresh=True)
            run_dir = directory / RUNS_DIR / plan.run_id
            with claims.claimed(run_dir) as held:
                if not held:
                    outcome.elsewhere.append(plan.run_id)
                    holder = claims.holder_text(run_dir / claims.LOCK_FILE)
                    say(f"  {plan.run_id}: being run by {holder}; left to it")
                    bar.update(1)
                    continue
                stored, _ = stored_result(plan.run_id, digest)
                if stored is not None:  # another worker finished it since the scan above
                    outcome.reused.append(plan.run_id)
                    outcome.measure_errors += measure_errors(
                        plan.run_id, stored, kind.measure_groups
                    )
                    outcome.redone.pop(plan.run_id, None)
                    bar.update(1)
                    continue
                result = execute_run(kind, config, plan, data, directory, digest, progress=progress)
            bar.update(1)
            if result["status"] == "complete":
                outcome.trained.append(plan.run_id)
                outcome.measure_errors += measure_errors(plan.run_id, result, kind.measure_groups)
            else:
                outcome.failed[plan.run_id] = result["message"]
            done = len(outcome.reused) + len(outcome.trained) + len(outcome.failed)
            say(f"[{done}/{len(plans)}] {kind.summary(result)}")
    digests = {plan.run_id: digest for plan, digest in todo}
    outcome.unfinished = [
        run for run in outcome.elsewhere if stored_result(run, digests[run])[0] is None
    ]
    outcome.seconds = time.perf_counter() - started
    return outcome


def _record_session(
    kind: StudyKind,
    config: GridConfig,
    directory: Path,
    data_root: str | Path | None,
    download: bool,
    force: bool,
    device: torch.device,
    argv: list[str] | None,
) -> tuple[Splits, list[Any]]:
    """The data and the planned runs, after adding this session to ``study.json``.

    ``directory`` is first checked against the study's kind, configuration and data (see
    :func:`run_study`).
    """
    previous = existing_study(directory, force=force)
    if previous is not None and not force:
        check_same_config(directory, previous, config, kind)
    splits = load_dataset(
        config.dataset,
        root=data_root,
        download=download,
        train_size=config.train_size,
        test_size=config.test_size,
        seed=config.data_seed,
        dtype=getattr(torch, config.dtype),
    )
    if previous is not None and not force:
        check_same_data(directory, previous, splits.info)
    plans = list(kind.plan_runs(config))
    run_ids = [plan.run_id for plan in plans]
    check_models_fit(config, splits)
    session = {
        "started": now(),
        "argv": argv,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": machine_info(device),
        "versions": versions(),
    }
    sessions = list(previous.get("sessions", [])) if previous is not None else []
    for leftover in directory.glob(f".{STUDY_FILE}.*.tmp"):  # a worker killed mid-write
        leftover.unlink()
    (directory / RUNS_DIR).mkdir(exist_ok=True)
    study = {
        "format": STUDY_FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind.name,
        "created": previous.get("created", now()) if previous is not None else now(),
        "config": config.to_dict(),
        "data": splits.info,
        "measured_on": kind.measured_on,
        "runs": run_ids,
        "sessions": [*sessions, session],
    }
    write_json_atomic(directory / STUDY_FILE, study)
    return splits, plans


def execute_run(
    kind: StudyKind,
    config: Any,
    plan: Any,
    data: StudyData,
    directory: Path,
    fingerprint: str,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Execute one run with ``kind.execute`` and write its ``result.json``; returns the record.

    Any exception (divergence, out of memory, a bug) is written as a ``"failed"`` record
    with its type, first line and a short traceback, which the next resume redoes;
    ``KeyboardInterrupt`` leaves no record.
    """
    run_dir = directory / RUNS_DIR / plan.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / RESULT_FILE
    if result_path.exists():  # an unusable result (checked by the caller): not a finished run
        result_path.unlink()
    for leftover in run_dir.rglob(".*.tmp"):  # atomic writes of a worker killed mid-write
        leftover.unlink()
    record: dict[str, Any] = {
        "format": RUN_FORMAT,
        "version": FORMAT_VERSION,
        "run_id": plan.run_id,
        "fingerprint": fingerprint,
        "worker": {"host": platform.node(), "pid": os.getpid()},
    }
    try:
        kind.execute(config, plan, data, run_dir, record, progress)
    except Exception as error:  # recorded, and redone on resume: the study goes on
        record.update(
            status="failed",
            error=type(error).__name__,
            message=str(error).splitlines()[0] if str(error) else type(error).__name__,
            traceback=traceback.format_exc(limit=4),
            finished=now(),
        )
    else:
        record.update(status="complete", finished=now())
    write_json_atomic(result_path, record)
    return record


def run_settings(plan: RunPlan, data: StudyData, dtype: str, **axes: Any) -> dict[str, Any]:
    """What every run records first: model, values on the grid's ``axes``, seed, training, where."""
    return {
        "model": plan.model.name,
        "zoo": plan.model.zoo,
        "model_options": dict(plan.model.options),
        **axes,
        "seed": plan.seed,
        "training": plan.training.as_dict(),
        "device": str(data.device),
        "dtype": dtype,
        "threads": torch.get_num_threads(),
    }


def build_network(plan: RunPlan, data: StudyData, record: dict[str, Any]) -> nn.Module:
    """The zoo network of a run initialised under ``torch.manual_seed(plan.seed)``.

    The caller's global generator is left as it was; the network is on the data's device in
    their dtype, and its parameter count goes into ``record``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.seed)
        network = build_model(
            plan.model.zoo, data.input_shape, data.num_classes, **plan.model.options
        )
    record["parameters"] = count_parameters(network)
    return network.to(device=data.device, dtype=data.train_inputs.dtype)


def evaluate(model: nn.Module, data: StudyData, labels: Tensor) -> tuple[float, float]:
    """Put ``model`` in eval mode; its accuracy on the training inputs with ``labels``, and test."""
    model.eval()
    train = accuracy(model, data.train_inputs, labels)
    return train, accuracy(model, data.test_inputs, data.test_labels)


def training_outcome(
    history: TrainingHistory,
    accuracies: tuple[float, float],
    *,
    during: Mapping[str, Any] | None = None,
    fit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What every run records of its training: history, epochs, final loss, accuracies, gap.

    ``during`` (a kind's facts of the training, e.g. its steps) come after the epochs, ``fit``
    (other accuracies) after the train accuracy; the gap is train − test accuracy.
    """
    train, test = accuracies
    return {
        "history": history.as_dict(),
        "epochs_run": history.epochs_run,
        **(during or {}),
        "final_loss": history.loss[-1] if history.loss else math.nan,
        "train_accuracy": train,
        **(fit or {}),
        "test_accuracy": test,
        "gap": train - test,
    }


def measured_examples(
    inputs: Tensor, labels: Tensor, examples: int | None, record: dict[str, Any], on: str
) -> tuple[Tensor, Tensor]:
    """The first ``examples`` (``None``: all) of ``inputs`` and ``labels``, noted in ``record``.

    ``record["measured_on"]`` gets the description ``on`` and the number of examples.
    """
    count = len(labels) if examples is None else min(examples, len(labels))
    record["measured_on"] = {"description": on, "examples": count}
    return inputs[:count], labels[:count]


def save_network(
    model: nn.Module,
    plan: RunPlan,
    data: StudyData,
    run_dir: Path,
    record: dict[str, Any],
    keys: Sequence[str],
) -> None:
    """Save ``model`` in ``run_dir/checkpoint`` with the entries ``keys`` of its ``record``.

    :func:`minsharp.training.save_checkpoint` writes the weights and what rebuilds the network;
    ``record["checkpoint"]`` names the folder.
    """
    save_checkpoint(
        run_dir / CHECKPOINT_DIR,
        model,
        model_spec={
            "name": plan.model.zoo,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "options": dict(plan.model.options),
        },
        record={key: record[key] for key in keys},
    )
    record["checkpoint"] = CHECKPOINT_DIR


def measure_all(
    model: nn.Module,
    inputs: tuple[Tensor, Tensor],
    names: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, Any], float]:
    """Every measure of ``names`` on ``model`` and ``inputs``; ``(entries, seconds)``.

    Each entry is :meth:`~minsharp.measures.MeasureResult.to_dict` without the name, or
    ``{"error", "message", "seconds"}`` for a measure that failed (the others go on).
    Warnings a measure raises (a solver stopping early…) are kept under ``"warnings"``.
    """
    entries: dict[str, Any] = {}
    started = time.perf_counter()
    for name in names:
        began = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = measure(name, model, inputs, **dict(options.get(name, {})))
            except Exception as error:  # recorded for this run; the other measures go on
                entries[name] = {
                    "error": type(error).__name__,
                    "message": str(error) or type(error).__name__,
                    "seconds": time.perf_counter() - began,
                }
            else:
                entries[name] = {
                    key: value for key, value in result.to_dict().items() if key != "name"
                }
        if caught:  # e.g. a solver that stopped early: kept with the value, not printed
            entries[name]["warnings"] = [str(warning.message) for warning in caught]
    return entries, time.perf_counter() - started


# --------------------------------------------------------------------------- stored files


def read_result(
    path: Path,
    fingerprint: str | None = None,
    *,
    numbers: Sequence[str] = (),
    groups: Sequence[str] = ("measures",),
) -> tuple[dict[str, Any] | None, str]:
    """A finished run's ``result.json``, or ``None`` and why it cannot be used.

    A result is usable when it is a JSON object of this format and version, its status is
    ``"complete"``, the keys ``numbers`` hold finite numbers, each key of ``groups`` holds a
    dictionary of measure entries (each with a value or an error), and (when
    ``fingerprint`` is given) it was made with the same settings.
    """
    if not path.exists():
        return None, "not run yet"
    try:
        content = read_tagged_json(path, tag=RUN_FORMAT, version=FORMAT_VERSION, error=StudyError)
    except StudyError as error:
        return None, str(error)
    if content.get("status") != "complete":
        return None, f"the run had failed ({content.get('error')}: {content.get('message')})"
    if fingerprint is not None and content.get("fingerprint") != fingerprint:
        return None, "it was made with other settings"
    for key in numbers:
        if not is_finite_number(content.get(key)):
            return None, f"{path.name} has no valid {key!r}"
    for key in groups:
        entries = content.get(key)
        if not isinstance(entries, dict) or not all(
            isinstance(entry, dict) and ("value" in entry or "error" in entry)
            for entry in entries.values()
        ):
            return None, f"{path.name} has no valid {key!r}"
    return content, ""


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (not a bool) and finite."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


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
            "directory of a `minsharp study …` command."
        )
    content = read_tagged_json(path, tag=STUDY_FORMAT, version=FORMAT_VERSION, error=StudyError)
    runs = content.get("runs")
    if not isinstance(runs, list) or not all(
        isinstance(run, str) and run and Path(run).name == run for run in runs
    ):
        raise StudyError(f"{path}: 'runs' must be a list of run ids; got {runs!r}.")
    return content


@dataclass
class StudyRecords:
    """A study directory as read back: its ``study.json`` and the usable run results."""

    directory: Path
    study: dict[str, Any]
    config: Any
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Finished runs by run id, in the planned order."""
    unfinished: dict[str, str] = field(default_factory=dict)
    """Planned runs without a usable result, with the reason."""


def read_records(directory: str | Path, kind: StudyKind) -> StudyRecords:
    """The study of kind ``kind`` in ``directory``: its config and every finished run's result.

    Raises:
        StudyError: not a study directory, a study of another kind, or an unreadable
            ``study.json``.
    """
    directory = Path(directory).expanduser()
    study = read_study(directory)
    stored_kind = study.get("kind", kind.name)
    if stored_kind != kind.name:
        raise StudyError(f"{directory} holds a {stored_kind!r} study, not a {kind.name!r} one.")
    try:
        config = kind.stored_config(study.get("config", {}))
    except MinsharpError as error:
        raise StudyError(f"{directory / STUDY_FILE}: {error}") from None
    records = StudyRecords(directory, study, config)
    for run in study.get("runs", []):
        result, reason = read_result(
            directory / RUNS_DIR / run / RESULT_FILE,
            numbers=kind.result_numbers,
            groups=kind.measure_groups,
        )
        if result is None:
            records.unfinished[run] = reason
        else:
            records.results[run] = result
    return records


def existing_study(directory: Path, *, force: bool) -> dict[str, Any] | None:
    """The stored ``study.json`` of the directory ``directory``, ``None`` for a new or empty one.

    Raises:
        StudyError: ``directory`` is not empty but holds no study (unless ``force``), or its
            ``study.json`` is unreadable (unless ``force``).
    """
    if not directory.is_dir():
        return None
    if not (directory / STUDY_FILE).exists():
        if any(item.name != claims.LOCK_FILE for item in directory.iterdir()) and not force:
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


def check_same_config(
    directory: Path, previous: Mapping[str, Any], config: GridConfig, kind: StudyKind
) -> None:
    """Refuse to resume a study made with another kind or configuration, naming differences.

    Raises:
        StudyError: the kinds or the configurations differ.
    """
    stored = previous.get("config")
    if previous.get("kind") != kind.name:
        raise StudyError(
            f"{directory} holds a {previous.get('kind')!r} study, not {kind.name!r}; give "
            "another --output."
        )
    current = jsonable(config.to_dict())
    if stored == current:
        return
    try:
        # Same settings written differently (e.g. by an older minsharp): compare as configs.
        if isinstance(stored, Mapping) and kind.stored_config(stored).to_dict() == config.to_dict():
            return
    except MinsharpError:
        pass
    found = differences(stored if isinstance(stored, Mapping) else {}, current)
    raise StudyError(
        f"{directory / STUDY_FILE} was written for another study configuration ("
        + "; ".join(found[:6])
        + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
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


def check_same_data(directory: Path, previous: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """Refuse to resume a study whose data differ from those it was made with.

    Raises:
        StudyError: other files or another split, naming the differences.
    """
    stored = jsonable(data_identity(previous.get("data", {}) or {}))
    current = jsonable(data_identity(info))
    if stored == current:
        return
    found = differences(stored, current)
    raise StudyError(
        f"the data differ from those {directory / STUDY_FILE} was made with ("
        + "; ".join(found[:4])
        + "): other files or another split. Point --data-dir at the same files, give another "
        "--output, or pass --force to redo the study with these data."
    )


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: stored → current`` for each top-level key that differs."""
    return [
        f"{key}: {_short(stored.get(key))} there, {_short(current.get(key))} here"
        for key in sorted(set(stored) | set(current))
        if stored.get(key) != current.get(key)
    ]


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "…"


def check_models_fit(config: GridConfig, splits: Splits) -> None:
    """Build every model once for the data (on the meta device) to fail before training.

    Raises:
        StudyError: a model cannot take the data's inputs.
    """
    for model in config.models:
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                build_model(model.zoo, splits.input_shape, splits.num_classes, **model.options)
        except MinsharpError as error:
            raise StudyError(
                f"model {model.name!r} cannot be built for the {config.dataset} inputs of "
                f"shape {splits.input_shape}: {error}"
            ) from None


def measure_entries(
    result: Mapping[str, Any], groups: Sequence[str] = ("measures",)
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(label, entry)`` of every measure entry of a result, group by group.

    The label is the measure's name, followed by its group in parentheses outside the group
    ``"measures"`` (e.g. ``"hessian_trace (rescaled_measures)"``).
    """
    for group in groups:
        for name, entry in (result.get(group) or {}).items():
            if isinstance(entry, Mapping):
                yield (name if group == "measures" else f"{name} ({group})"), entry


def measure_errors(
    run: str, result: Mapping[str, Any], groups: Sequence[str] = ("measures",)
) -> list[tuple[str, str, str]]:
    """``(run, measure, message)`` of every failed measure of a result (:func:`measure_entries`)."""
    return [
        (run, label, str(entry.get("message")))
        for label, entry in measure_entries(result, groups)
        if "error" in entry
    ]


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
    if hasattr(os, "getloadavg"):
        info["load_average"] = list(os.getloadavg())
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


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _echo(line: str) -> None:
    tqdm.write(line, file=sys.stdout)

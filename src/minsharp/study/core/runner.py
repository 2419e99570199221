"""Running a study of any kind: plan, resume, claim, execute and record each run.

A *study kind* (:class:`~minsharp.study.core.kind.StudyKind`) says what one run of a grid is;
:func:`run_study` does everything else the same way for all kinds:

* loads the data once (:func:`minsharp.data.datasets.load_dataset`), checks every model
  builds for them, and writes ``DIR/study.json`` (the kind, the configuration, the data
  record, the planned run ids and each session's machine and versions,
  :mod:`~minsharp.study.core.provenance`);
* skips every run whose ``DIR/runs/<run-id>/result.json`` is complete and carries the same
  fingerprint; redoes a missing, truncated, failed or outdated one
  (:mod:`~minsharp.study.core.store`);
* executes the runs still to do here, one after the other, or hands each to a cluster job
  (a ``launcher``, :mod:`~minsharp.study.core.launcher`: a :class:`RunJob` per run) and
  waits for them all, then reads what each run left in the store;
* writes each run's record atomically once the run is done (``status`` ``"complete"``, or
  ``"failed"`` with the error, which the next resume redoes);
* refuses a directory made for another kind, configuration or data unless ``force``;
* shares the grid with any other worker running the same study in the same directory
  (torchrun ranks, or independent processes): a run is claimed by one worker at a time, and
  a worker's runs are free again the moment it dies (:mod:`minsharp.study.core.claims`).

A kind's ``execute`` is built from the steps every run shares
(:mod:`minsharp.study.core.steps`).
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from minsharp.data.datasets import Splits, load_dataset
from minsharp.errors import MinsharpError, StudyError
from minsharp.io import atomic_leftovers, write_json_atomic
from minsharp.models import make_model
from minsharp.study.core import claims as claims
from minsharp.study.core.config import GridConfig, check_fits_data
from minsharp.study.core.kind import RunContext, RunPlan, StudyData, StudyKind
from minsharp.study.core.launcher import JOBS_DIR, JobFailure, SubmititLauncher
from minsharp.study.core.provenance import machine_info, now, versions
from minsharp.study.core.store import (
    FORMAT_VERSION,
    RESULT_FILE,
    RUN_FORMAT,
    RUNS_DIR,
    STUDY_FILE,
    STUDY_FORMAT,
    check_same_config,
    check_same_data,
    existing_study,
    measure_errors,
    read_result,
    read_study,
    removed_if_unstarted,
)


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


@dataclass
class _Session:
    """One :func:`run_study` call under way: what it runs, where, and what it did so far."""

    kind: StudyKind[Any, Any]
    config: GridConfig
    directory: Path
    outcome: StudyOutcome
    say: Callable[[str], None]
    progress: bool

    def stored(self, run_id: str, digest: str) -> dict[str, Any] | None:
        """The run's usable stored result, if any."""
        path = self.directory / RUNS_DIR / run_id / RESULT_FILE
        return read_result(
            path, digest, numbers=self.kind.result_numbers, groups=self.kind.measure_groups
        )[0]

    def reuse(self, run_id: str, stored: dict[str, Any]) -> None:
        """Count a finished run as reused, with its failed measures."""
        self.outcome.reused.append(run_id)
        self.outcome.measure_errors += measure_errors(run_id, stored, self.kind.measure_groups)


def run_study(
    kind: StudyKind[Any, Any],
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
    launcher: SubmititLauncher | None = None,
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
        launcher: run each run as a cluster job and wait for them all
            (:mod:`~minsharp.study.core.launcher`); ``None``: here, one after the other.

    Returns:
        What was reused, trained, redone and failed.

    Raises:
        StudyError: the directory belongs to another study, kind or configuration (without
            ``force``), is not a directory, or holds an unreadable ``study.json``.
        DataError: the data cannot be loaded (the message says how to get missing files).
    """
    started = time.perf_counter()
    directory = Path(directory).expanduser()
    device = torch.device(device)
    if directory.exists() and not directory.is_dir():
        raise StudyError(f"--output {directory} is a file; give a directory.")
    # Workers take turns to check and update study.json; a failed start leaves nothing.
    with removed_if_unstarted(directory), claims.exclusive(directory):
        splits, plans = _record_session(
            kind, config, directory, data_root, download, force, device, argv
        )
    outcome = StudyOutcome(directory=directory, planned=[plan.run_id for plan in plans])
    session = _Session(kind, config, directory, outcome, echo or _echo, progress)
    todo = _scan(session, plans)
    if launcher is None or not todo:
        _run_all(session, todo, StudyData.from_splits(splits, device), total=len(plans))
    else:
        _launch(session, todo, launcher, data_root, total=len(plans))
    digests = {plan.run_id: digest for plan, digest in todo}
    outcome.unfinished = [
        run for run in outcome.elsewhere if session.stored(run, digests[run]) is None
    ]
    outcome.seconds = time.perf_counter() - started
    return outcome


def _scan(session: _Session, plans: list[RunPlan]) -> list[tuple[RunPlan, str]]:
    """The plans still to run with their fingerprints; the finished ones counted as reused."""
    kind, outcome = session.kind, session.outcome
    todo: list[tuple[RunPlan, str]] = []
    for plan in plans:
        digest = kind.fingerprint(session.config, plan)
        path = session.directory / RUNS_DIR / plan.run_id / RESULT_FILE
        stored, reason = read_result(
            path, digest, numbers=kind.result_numbers, groups=kind.measure_groups
        )
        if stored is not None:
            session.reuse(plan.run_id, stored)
        else:
            todo.append((plan, digest))
            if reason != "not run yet":
                outcome.redone[plan.run_id] = reason
    session.say(
        f"study {session.directory}: {len(plans)} runs ({session.config.grid_text()}); "
        f"{len(outcome.reused)} finished already, {len(todo)} to run"
    )
    for run, reason in outcome.redone.items():
        session.say(f"  redoing {run}: {reason}")
    return todo


def _run_all(
    session: _Session, todo: list[tuple[RunPlan, str]], data: StudyData, *, total: int
) -> None:
    """Claim and execute each run of ``todo`` in turn, unless another worker has it."""
    outcome = session.outcome
    bar = tqdm(
        total=total,
        initial=len(outcome.reused),
        desc="runs",
        unit="run",
        disable=not session.progress,
        dynamic_ncols=True,
    )
    with bar:
        for plan, digest in todo:
            bar.set_postfix_str(plan.run_id, refresh=True)
            result = _claim_and_run(session, plan, digest, data)
            bar.update(1)
            if result is not None:
                _count(session, plan.run_id, result, total=total)


def _count(session: _Session, run_id: str, result: dict[str, Any], *, total: int) -> None:
    """Count the record of a run executed now as trained or failed, and say it."""
    outcome = session.outcome
    if result["status"] == "complete":
        outcome.trained.append(run_id)
        outcome.measure_errors += measure_errors(run_id, result, session.kind.measure_groups)
    else:
        outcome.failed[run_id] = result["message"]
    done = len(outcome.reused) + len(outcome.trained) + len(outcome.failed)
    session.say(f"[{done}/{total}] {session.kind.summary(result)}")


@dataclass(frozen=True)
class RunJob:
    """One run as a launcher's job executes it: its data loaded there, claimed, run, stored.

    Picklable (submitit sends it to the job). In the job, the data are loaded as the study
    recorded them and checked against ``study.json``; the run is then claimed and executed
    exactly as a local worker does (:func:`_claim_and_run`): skipped when another worker
    holds it or finished it, else executed and its ``result.json`` written. Calling it again
    is harmless.
    """

    kind: StudyKind[Any, Any]
    config: GridConfig
    plan: RunPlan
    digest: str
    directory: Path
    data_root: str | Path | None
    device: str
    threads: int | None

    def __call__(self) -> dict[str, Any] | None:
        """The record of the run executed now; ``None`` when another worker has it."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        splits = _load_splits(self.config, self.data_root, download=False)
        check_same_data(self.directory, read_study(self.directory), splits.info)
        session = _Session(
            self.kind, self.config, self.directory, StudyOutcome(self.directory), _echo, False
        )
        data = StudyData.from_splits(splits, torch.device(device))
        return _claim_and_run(session, self.plan, self.digest, data)


def _launch(
    session: _Session,
    todo: list[tuple[RunPlan, str]],
    launcher: SubmititLauncher,
    data_root: str | Path | None,
    *,
    total: int,
) -> None:
    """Run each plan of ``todo`` as a job of ``launcher``; count what the run store then holds."""
    outcome = session.outcome
    # Absolute paths: a job may start in another directory of another machine.
    root = None if data_root is None else Path(data_root).expanduser().resolve()
    directory = session.directory.resolve()
    jobs = [
        RunJob(
            session.kind,
            session.config,
            plan,
            digest,
            directory,
            root,
            launcher.device,
            launcher.threads,
        )
        for plan, digest in todo
    ]
    session.say(
        f"  submitting {len(jobs)} jobs (--launcher {launcher.launcher_name}; their files in "
        f"{session.directory / JOBS_DIR}) and waiting for them"
    )
    returned = launcher.run(
        session.directory / JOBS_DIR, jobs, name=f"minsharp-{session.kind.name}"
    )
    for (plan, digest), back in zip(todo, returned, strict=True):
        stored = session.stored(plan.run_id, digest)  # the store decides, not the job
        if stored is not None:
            if isinstance(back, dict):
                _count(session, plan.run_id, stored, total=total)
            else:  # another worker finished it
                session.reuse(plan.run_id, stored)
                outcome.redone.pop(plan.run_id, None)
        elif isinstance(back, JobFailure):
            outcome.failed[plan.run_id] = (
                f"job {back.job_id} ended without a result: {back.message}"
            )
            session.say(f"  {plan.run_id}: {outcome.failed[plan.run_id]}")
        elif isinstance(back, dict):
            _count(session, plan.run_id, back, total=total)
        else:
            outcome.elsewhere.append(plan.run_id)


def _claim_and_run(
    session: _Session, plan: RunPlan, digest: str, data: StudyData
) -> dict[str, Any] | None:
    """The record of ``plan`` run now; ``None`` when another worker holds or finished it."""
    run_dir = session.directory / RUNS_DIR / plan.run_id
    with claims.claimed(run_dir) as held:
        if not held:
            session.outcome.elsewhere.append(plan.run_id)
            holder = claims.holder_text(run_dir / claims.LOCK_FILE)
            session.say(f"  {plan.run_id}: being run by {holder}; left to it")
            return None
        stored = session.stored(plan.run_id, digest)
        if stored is not None:  # another worker finished it since the scan
            session.reuse(plan.run_id, stored)
            session.outcome.redone.pop(plan.run_id, None)
            return None
        return execute_run(
            session.kind,
            session.config,
            plan,
            data,
            session.directory,
            digest,
            progress=session.progress,
        )


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
    splits = _load_splits(config, data_root, download=download)
    if previous is not None and not force:
        check_same_data(directory, previous, splits.info)
    plans = list(kind.plan_runs(config))
    run_ids = [plan.run_id for plan in plans]
    check_models_fit(config, splits)
    check_fits_data(config, len(splits.train_labels))
    session = {
        "started": now(),
        "argv": argv,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": machine_info(device),
        "versions": versions(),
    }
    sessions = list(previous.get("sessions", [])) if previous is not None else []
    for leftover in atomic_leftovers(directory / STUDY_FILE):  # a worker killed mid-write
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


def _load_splits(config: GridConfig, data_root: str | Path | None, *, download: bool) -> Splits:
    """The study's data set, split and sized as ``config`` says, in its dtype."""
    return load_dataset(
        config.dataset,
        root=data_root,
        download=download,
        train_size=config.train_size,
        test_size=config.test_size,
        seed=config.data_seed,
        dtype=getattr(torch, config.dtype),
    )


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
        kind.execute(config, plan, RunContext(data, run_dir, record, progress))
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


def check_models_fit(config: GridConfig, splits: Splits) -> None:
    """Build every model once for the data (on the meta device) to fail before training.

    A zoo model is built for the data; every model, the user's factories (which do not see
    the data) above all, must then take two inputs and return a logit for every class.

    Raises:
        StudyError: a model cannot be built or cannot take the data's inputs.
    """
    shape, classes = splits.input_shape, splits.num_classes
    for model in config.models:
        where = f"model {model.name!r} cannot be built for the {config.dataset} inputs of shape"
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                network, _ = make_model(
                    model.zoo, dict(model.options), shape, classes, flag="model"
                )
                problem = _forward_problem(network, shape, classes, getattr(torch, config.dtype))
        except MinsharpError as error:
            raise StudyError(f"{where} {shape}: {error}") from None
        if problem:
            raise StudyError(f"model {model.name!r} ({model.zoo}): {problem}.")


def _forward_problem(
    network: torch.nn.Module, shape: tuple[int, ...], classes: int, dtype: torch.dtype
) -> str:
    """What is wrong with ``network``'s logits (meta device) for two inputs; ``""`` if nothing."""
    try:
        logits = network.to(dtype)(torch.empty((2, *shape), dtype=dtype))
    except Exception as error:  # the user's network: report, don't crash
        return f"two inputs of shape {shape} raise {type(error).__name__}: {error}"
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        return f"two inputs of shape {shape} give {got}; the data need logits (2, {classes})"
    return ""


def _echo(line: str) -> None:
    tqdm.write(line, file=sys.stdout)

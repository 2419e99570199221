"""A study directory on disk: ``study.json`` and each run's ``result.json``, read and checked.

Layout of a study directory ``DIR``::

    DIR/study.json                  kind, config, data record, planned run ids, sessions
    DIR/.lock                       taken while a worker checks and updates study.json
    DIR/runs/<run-id>/.lock         held by the worker running the run
    DIR/runs/<run-id>/result.json   one finished run (written atomically, last)
    DIR/runs/<run-id>/checkpoint/   model.safetensors + checkpoint.json (save_checkpoint)

:func:`read_result` says whether a stored run is usable, :func:`read_records` reads a whole
study back for its report, and :func:`check_same_config` / :func:`check_same_data` refuse to
resume a directory made for another study, naming the :func:`differences`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minsharp.errors import MinsharpError, StudyError
from minsharp.io import atomic_leftovers, jsonable, read_tagged_json, sha256_file
from minsharp.study.core import claims as claims
from minsharp.study.core.config import GridConfig
from minsharp.study.core.kind import StudyKind
from minsharp.training.checkpoint import WEIGHTS_FILE, verify_checkpoint

#: ``format`` tags and versions of the two kinds of JSON file a study writes.
STUDY_FORMAT = "minsharp-study"
RUN_FORMAT = "minsharp-study-run"
FORMAT_VERSION = 1

#: File and folder names inside a study directory.
STUDY_FILE = "study.json"
RUNS_DIR = "runs"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoint"


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
    ``fingerprint`` is given, as on resuming) it was made with the same settings and the
    checkpoint it names is whole (:func:`~minsharp.training.checkpoint.verify_checkpoint`:
    a run whose checkpoint is corrupt is redone).
    """
    if not path.exists():
        return None, "not run yet"
    try:
        content = read_tagged_json(path, tag=RUN_FORMAT, version=FORMAT_VERSION, error=StudyError)
    except StudyError as error:
        return None, str(error)
    if content.get("status") != "complete":
        return None, f"the run had failed ({content.get('error')}: {content.get('message')})"
    reason = "" if fingerprint is None else _not_resumable(path, content, fingerprint)
    if reason:
        return None, reason
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


def _not_resumable(path: Path, content: Mapping[str, Any], fingerprint: str) -> str:
    """Why a stored result cannot be kept on resuming (other settings, a corrupt checkpoint)."""
    if content.get("fingerprint") != fingerprint:
        return "it was made with other settings"
    if not isinstance(content.get("checkpoint"), str):
        return ""
    folder = path.parent / content["checkpoint"]
    try:
        if "weights_sha256" in content:  # a user's factory network: the weights file alone
            digest = sha256_file(folder / WEIGHTS_FILE, what="weights file", error=StudyError)
            if digest != content["weights_sha256"]:
                raise StudyError(f"{folder / WEIGHTS_FILE} is not the file the run saved")
        else:
            verify_checkpoint(folder)
    except MinsharpError as error:
        return f"its checkpoint is unusable: {error}"
    return ""


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

    A directory holding only what a worker killed before writing ``study.json`` left behind
    (:func:`_left_by_a_start`) counts as empty.

    Raises:
        StudyError: ``directory`` is not empty but holds no study (unless ``force``), or its
            ``study.json`` is unreadable (unless ``force``).
    """
    if not directory.is_dir():
        return None
    if not (directory / STUDY_FILE).exists():
        leftovers = set(atomic_leftovers(directory / STUDY_FILE))
        foreign = [item for item in directory.iterdir() if not _left_by_a_start(item, leftovers)]
        if foreign and not force:
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


def _left_by_a_start(item: Path, study_temporaries: set[Path]) -> bool:
    """Whether ``item`` is what a worker killed before writing ``study.json`` leaves behind.

    Its lock, an empty ``runs/`` and a half-written ``study.json`` temporary are ours; a
    directory holding only these is taken as empty, so another worker can start the study.
    """
    if item.name == claims.LOCK_FILE:
        return True
    if item.name == RUNS_DIR and item.is_dir():
        return not any(item.iterdir())
    return item in study_temporaries


@contextlib.contextmanager
def removed_if_unstarted(directory: Path) -> Iterator[None]:
    """Remove what a start that fails inside the block left in ``directory``, then re-raise.

    Unless the directory holds a ``study.json``: its lock and an empty ``runs/`` go, and the
    directory itself if it did not exist before and nothing else is in it; anything else
    (the user's or another worker's files) stays. No directory holding only a lock is left.
    """
    created = not directory.exists()
    try:
        yield
    except BaseException:
        if not (directory / STUDY_FILE).exists():
            (directory / claims.LOCK_FILE).unlink(missing_ok=True)
            for folder in (directory / RUNS_DIR, directory)[: 2 if created else 1]:
                with contextlib.suppress(OSError):  # absent, or not empty: not ours to remove
                    folder.rmdir()
        raise


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
        f"{directory / STUDY_FILE} was written for another study configuration; the settings "
        "that differ (stored → now):\n  "
        + "\n  ".join(found)
        + "\nTo resume it, run with the same preset, config file and overrides; for a new "
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
        f"the data differ from those {directory / STUDY_FILE} was made with (stored → now):\n  "
        + "\n  ".join(found)
        + "\nOther files or another split: point --data-dir at the same files, give another "
        "--output, or pass --force to redo the study with these data."
    )


def differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """``setting: stored → current`` for each setting that differs, in full.

    Mappings are compared key by key and lists of mappings of equal length item by item, so
    a nested setting is named by its path (``training.epochs``, ``models[0].options.hidden``);
    each value is written out whole (as JSON), never shortened.

    Example:
        >>> differences({"a": 1, "b": [{"c": [1, 2]}]}, {"a": 1, "b": [{"c": [1, 3]}], "d": 0})
        ['b[0].c: [1, 2] → [1, 3]', 'd: (absent) → 0']
    """
    if isinstance(stored, Mapping) and isinstance(current, Mapping):
        found: list[str] = []
        for key in sorted(set(stored) | set(current), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored or key not in current:
                old, new = (
                    _text(side[key]) if key in side else "(absent)" for side in (stored, current)
                )
                found.append(f"{path}: {old} → {new}")
            else:
                found += differences(stored[key], current[key], path)
        return found
    if _records(stored) and _records(current) and len(stored) == len(current):
        return [
            line
            for index, (old, new) in enumerate(zip(stored, current, strict=True))
            for line in differences(old, new, f"{prefix}[{index}]")
        ]
    return [] if stored == current else [f"{prefix or 'value'}: {_text(stored)} → {_text(current)}"]


def _records(value: Any) -> bool:
    """Whether ``value`` is a list of mappings (compared item by item, e.g. the models)."""
    return isinstance(value, list) and all(isinstance(item, Mapping) for item in value)


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


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

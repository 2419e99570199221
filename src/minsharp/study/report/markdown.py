"""Pieces shared by the reports of every study kind: markdown sections and tables, CSV, files.

Each kind's report module (:mod:`minsharp.study.randomized_labels.report`, :mod:`minsharp.study.
batch_size.report`, :mod:`minsharp.study.bn_training.report`) reads its study with
:func:`minsharp.study.core.store.read_records`, makes one row per finished run (:func:`run_row`,
:func:`measure_value`; columns :func:`csv_columns`) and assembles ``report.md`` from these
parts: the header line (:func:`written_markdown`), tables (:func:`table_head`,
:func:`markdown_table`), the setup (:func:`data_lines`, :func:`models_table`,
:func:`measure_lines`, :func:`timing_total`), the comparison with the paper
(:func:`paper_table`, :func:`training_rows`) and the closing sections
(:func:`closing_markdown`: failed measures, warnings and unfinished runs, what was run, the
paper, the machines and versions of every session, the files). :func:`write_files` writes
``report.md``, ``runs.csv`` (:func:`csv_text`) and the figures
(:mod:`minsharp.study.report.plots`). The paired reports summarise the
seeds of a setting by :func:`spread` (mean, sample standard deviation, range).
"""

from __future__ import annotations

import csv
import datetime
import io
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minsharp.errors import MinsharpError
from minsharp.io import write_text_atomic
from minsharp.measures import SYMMETRIES, spec
from minsharp.study.core.config import ModelPlan
from minsharp.study.core.provenance import versions
from minsharp.study.core.store import (
    RESULT_FILE,
    RUNS_DIR,
    STUDY_FILE,
    StudyRecords,
    measure_entries,
)
from minsharp.study.report.paths import portable_data
from minsharp.study.report.plots import save_figure
from minsharp.training import TrainingConfig

REPORT_FILE = "report.md"
CSV_FILE = "runs.csv"
FIGURES_DIR = "figures"

#: Longest tables of failures and warnings in a report.
MAX_ROWS = 30

#: The verdicts of a paper's claim that every kind gives (each adds its own others).
HELD, NOT_HELD = "held", "did not hold"


#: Verdicts of a setting compared with the paper's (:func:`paper_table`).
SAME, DIFFERS, INCLUDES = "same", "differs", "includes the paper's"


@dataclass
class Report:
    """What a kind's ``write_report`` wrote.

    Attributes:
        path: ``report.md``.
        csv: ``runs.csv``.
        figures: the figures written (none before a run has finished).
        records: the study as read.
        summary: a few plain lines for the terminal.
    """

    path: Path
    csv: Path
    figures: list[Path]
    records: StudyRecords
    summary: str


def write_files(
    directory: Path,
    *,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    markdown: str,
    figures: Mapping[str, Callable[[], Any]],
) -> tuple[Path, Path, list[Path]]:
    """Write ``runs.csv``, the figures and ``report.md`` of a study, each atomically.

    Args:
        directory: the study directory.
        rows: one row per finished run, written as CSV with ``columns``.
        columns: the CSV's columns (:func:`csv_columns`).
        markdown: the text of ``report.md``.
        figures: ``figures/<name>`` → what draws it; drawn only when a run has finished.

    Returns:
        The paths of ``report.md``, ``runs.csv`` and the figures.
    """
    csv_path = directory / CSV_FILE
    write_text_atomic(csv_path, csv_text(rows, columns))
    folder = directory / FIGURES_DIR
    folder.mkdir(exist_ok=True)
    drawn = [save_figure(draw(), folder / name) for name, draw in figures.items()] if rows else []
    path = directory / REPORT_FILE
    write_text_atomic(path, markdown)
    return path, csv_path, drawn


def run_row(run: str, result: Mapping[str, Any], axis: str) -> dict[str, Any]:
    """The columns every kind's row of a run has: ids, ``axis``, accuracies, loss, time."""
    return {
        "run_id": run,
        "model": result["model"],
        axis: result[axis],
        "seed": result["seed"],
        "train_accuracy": result["train_accuracy"],
        "test_accuracy": result["test_accuracy"],
        "gap": as_float(result.get("gap")),
        "final_loss": as_float(result.get("final_loss")),
        "epochs_run": result.get("epochs_run"),
        "training_seconds": (result.get("timings") or {}).get("training"),
    }


def csv_columns(
    axis: str,
    measures: Sequence[str],
    *,
    fit: Sequence[str] = (),
    during: Sequence[str] = (),
    seconds: Sequence[str] = (),
) -> list[str]:
    """The columns of a kind's ``runs.csv``: those of :func:`run_row` with the kind's own.

    ``fit`` (other accuracies) follow the train accuracy, ``during`` (facts of the training)
    the epochs, ``seconds`` the training time; then the ``measures`` columns and ``errors``.
    """
    return [
        "run_id",
        "model",
        axis,
        "seed",
        "train_accuracy",
        *fit,
        "test_accuracy",
        "gap",
        "final_loss",
        "epochs_run",
        *during,
        "training_seconds",
        *seconds,
        *measures,
        "errors",
    ]


def measure_value(entry: Mapping[str, Any] | None) -> float:
    """The value of a measure entry as a float; ``nan`` for a missing or failed measure."""
    return as_float(entry.get("value")) if entry and "value" in entry else math.nan


def select(rows: Sequence[Mapping[str, Any]], **where: Any) -> list[Mapping[str, Any]]:
    """The rows whose values are those of ``where``, e.g. ``select(rows, model="mlp")``."""
    return [row for row in rows if all(row[key] == value for key, value in where.items())]


def setting_groups(
    rows: Sequence[Mapping[str, Any]], models: Sequence[ModelPlan], axis: str, values: Sequence[Any]
) -> Iterator[tuple[ModelPlan, Any, list[Mapping[str, Any]]]]:
    """``(model, value, rows)`` for each model and value of ``axis`` with finished runs."""
    for model in models:
        for value in values:
            chosen = select(rows, model=model.name, **{axis: value})
            if chosen:
                yield model, value, chosen


def written_markdown(records: StudyRecords, *, by: str = "") -> str:
    """The report's first line: when (and ``by`` what) it was written, from how many runs."""
    finished, planned = len(records.results), len(records.study.get("runs", []))
    return (
        f"Written {report_time()}{by} from {finished} finished of {planned} planned runs in "
        f"`{records.directory}`."
        + (
            " **The study is not finished**: rerun the same command to complete it."
            if finished < planned
            else ""
        )
        + "\n"
    )


def closing_markdown(
    records: StudyRecords,
    *,
    groups: Sequence[str],
    left_out: str,
    setup: str,
    paper: str,
    files: str,
) -> list[str]:
    """The sections every report ends with, in order.

    Failed measures, warnings and unfinished runs (:func:`problems_markdown` of ``groups``,
    ``left_out`` of what), what was run (``setup``), how it differs from the paper
    (``paper``), the machines and versions (:func:`machine_markdown`) and the files.
    """
    return [
        problems_markdown(records, groups, left_out=left_out),
        "## What was run\n",
        setup + "\n",
        "## How this run differs from the paper\n",
        paper + "\n",
        "## Machine and versions\n",
        machine_markdown(records.study) + "\n",
        "## Files\n",
        files,
    ]


def files_markdown(
    records: StudyRecords,
    *,
    csv: str,
    result: str,
    checkpoint: str = "the trained network",
    sessions: str = "every session",
) -> str:
    """The files of a study directory and how to regenerate the report.

    ``csv``, ``result`` and ``checkpoint`` say what ``runs.csv``, each ``result.json`` and
    each ``checkpoint/`` hold, ``sessions`` which sessions ``study.json`` records.
    """
    return (
        f"* `{CSV_FILE}`: one row per finished run ({csv}).\n"
        f"* `{RUNS_DIR}/<run-id>/{RESULT_FILE}`: everything about one run ({result}); "
        f"`checkpoint/` holds {checkpoint}.\n"
        f"* `{STUDY_FILE}`: the configuration, the data record, the planned runs and "
        f"{sessions}.\n"
        f"* Regenerate this report with `minsharp report {records.directory}`.\n"
    )


def data_lines(records: StudyRecords) -> list[str]:
    """The setup's lines on the data: its summary, and the split unless it is the official one.

    Paths are relative to the study directory (:func:`~minsharp.study.report.paths.portable_data`).
    """
    data = portable_data(records)
    lines = [f"* **Data**: {data.get('summary', records.config.dataset)}"]
    if data.get("split_kind") not in (None, "official"):
        lines.append(
            f"* **Split note**: {data.get('split')}. The test part is therefore held out from "
            "the same files as the training part, not the official test set."
        )
    return lines


def table_head(*columns: str, indent: str = "") -> list[str]:
    """The header and rule of a markdown table with ``columns``."""
    return [f"{indent}| " + " | ".join(columns) + " |", indent + "|" + " --- |" * len(columns)]


def models_table(
    records: StudyRecords, columns: Sequence[str], rows: Iterable[tuple[ModelPlan, Sequence[Any]]]
) -> list[str]:
    """The setup's table of the models and their training, indented under its bullet.

    Each row is a model's name, zoo network and parameter count (as its finished runs record
    it), then the cells of ``columns`` that ``rows`` (``(model, cells)`` pairs) give.
    """
    counts = {result["model"]: result.get("parameters") for result in records.results.values()}
    lines = table_head("model", "network", "parameters", *columns, indent="  ")
    for model, cells in rows:
        network = f"`{model.zoo}`{options_text(model.options)}"
        row = [model.name, network, counts.get(model.name, "?"), *cells]
        lines.append("  | " + " | ".join(map(str, row)) + " |")
    return lines


#: The columns of :func:`sgd_cells`.
SGD_COLUMNS = ("lr", "momentum", "weight decay", "lr decay")


def sgd_cells(training: TrainingConfig) -> list[str]:
    """A training's learning rate, momentum, weight decay and lr decay, for a table."""
    return [
        f"{training.lr:g}",
        f"{training.momentum:g}",
        f"{training.weight_decay:g}",
        f"{training.lr_decay:g}",
    ]


def examples_text(count: int | None, noun: str) -> str:
    """``all <noun>`` or ``the first <count> <noun>``."""
    return f"all {noun}" if count is None else f"the first {count} {noun}"


def measure_lines(records: StudyRecords, *, per: str = "") -> list[str]:
    """One setup line per measure: its options and declared invariances.

    With ``per`` (e.g. ``"run"``), also its mean time per ``per`` over the finished runs.
    """
    options = records.config.measure_settings()
    lines = []
    for name in records.config.measures:
        seconds = [
            entry["seconds"]
            for result in records.results.values()
            if isinstance(entry := result["measures"].get(name), dict) and "seconds" in entry
        ]
        lines.append(
            f"  * `{name}`{options_text(options[name])}: invariant to {invariances_text(name)}"
            + (f"; {mean(seconds):.2f} s per {per} on average" if per and seconds else "")
        )
    return lines


def timing_total(records: StudyRecords, *keys: str) -> float:
    """The seconds of ``keys`` of every finished run's ``timings``, summed."""
    return sum(
        (result.get("timings") or {}).get(key, 0)
        for result in records.results.values()
        for key in keys
    )


def per_run_text(records: StudyRecords) -> str:
    """The :func:`spread` of the finished runs' total seconds."""
    return spread([(r.get("timings") or {}).get("total") for r in records.results.values()]).text(3)


def paper_table(
    rows: Sequence[tuple[str, str, str, str]], data: Mapping[str, Any], *, paper: str = "paper"
) -> list[str]:
    """A table of ``(setting, paper, this study, verdict)`` rows, then the data split if any.

    The verdict is :data:`SAME`, :data:`DIFFERS` (set in bold) or :data:`INCLUDES`; ``paper``
    heads the paper's column.
    """
    lines = [f"| setting | {paper} | this study | |", "|" + " --- |" * 4]
    lines += [
        f"| {name} | {cell(theirs)} | {cell(ours)} | "
        f"{f'**{verdict}**' if verdict == DIFFERS else verdict} |"
        for name, theirs, ours, verdict in rows
    ]
    if data.get("split_kind") not in (None, "official"):
        lines += ["", f"Data split: {data.get('split')}."]
    return lines


def verdict(same: bool) -> str:
    """:data:`SAME` or :data:`DIFFERS`."""
    return SAME if same else DIFFERS


def training_rows(
    ours: TrainingConfig, theirs: TrainingConfig, keys: Sequence[str]
) -> list[tuple[str, str, str, str]]:
    """``(setting, paper, this study, verdict)`` for each training setting of ``keys``."""
    mine, paper = ours.as_dict(), theirs.as_dict()
    return [
        (
            key.replace("_", " "),
            setting_text(paper[key]),
            setting_text(mine[key]),
            verdict(mine[key] == paper[key]),
        )
        for key in keys
    ]


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (``n − 1``), range and count of finite values.

    Example:
        >>> spread([1.0, 2.0, 3.0]).text()
        '2 ± 1 (1–3, n = 3)'
    """

    mean: float
    std: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 4) -> str:
        """``mean ± std (low–high, n = …)``; ``—`` when there are no values."""
        if self.n == 0:
            return "—"
        if self.n == 1:
            return f"{self.mean:.{digits}g} (n = 1)"
        return (
            f"{self.mean:.{digits}g} ± {self.std:.{digits}g} "
            f"({self.low:.{digits}g}–{self.high:.{digits}g}, n = {self.n})"
        )


def spread(values: Sequence[float | None]) -> Spread:
    """The :class:`Spread` of the finite numbers among ``values``."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(finite):
        return Spread(math.nan, math.nan, math.nan, math.nan, 0)
    std = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
    return Spread(float(finite.mean()), std, float(finite.min()), float(finite.max()), len(finite))


def problems_markdown(
    records: StudyRecords, groups: Sequence[str] = ("measures",), *, left_out: str = ""
) -> str:
    """Sections on failed measures, measure warnings and runs without a result ("" if none).

    Args:
        records: the study.
        groups: the result keys holding measure entries (e.g. ``"measures"`` and
            ``"rescaled_measures"``); entries of other groups are labelled with the group.
        left_out: what a failed measure is left out of, in words.
    """
    entries = [
        (run, label, entry)
        for run, result in records.results.items()
        for label, entry in measure_entries(result, groups)
    ]
    errors = [
        (run, name, str(entry.get("message"))) for run, name, entry in entries if "error" in entry
    ]
    warned = [
        (run, name, str(entry["warnings"][0]))
        for run, name, entry in entries
        if entry.get("warnings") and "error" not in entry
    ]
    text = ""
    if errors:
        text += "### Failed measures\n\n" + (f"Left out of {left_out}:\n\n" if left_out else "")
        text += markdown_table(("run", "measure", "error"), errors)
    if warned:
        text += (
            "### Measure warnings\n\nThe value is kept (see the run's certificate in "
            "`result.json`):\n\n" + markdown_table(("run", "measure", "first warning"), warned)
        )
    if records.unfinished:
        text += "### Runs without a result\n\n"
        text += markdown_table(("run", "why"), list(records.unfinished.items()))
    return text


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], limit: int = MAX_ROWS
) -> str:
    """A markdown table of at most ``limit`` rows, saying how many were left out.

    In a three-column table the second column (a measure name) is set in code.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows[:limit]:
        cells = [
            f"`{value}`" if index == 1 and len(header) == 3 else cell(value)
            for index, value in enumerate(row)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more (see `{CSV_FILE}` and the runs' results).")
    return "\n".join(lines) + "\n\n"


def machine_markdown(study: Mapping[str, Any]) -> str:
    """One line per session of the study (machine, threads, load, versions, command)."""
    sessions = study.get("sessions", []) or []
    if not sessions:
        return "Not recorded."
    lines = []
    for index, session in enumerate(sessions, 1):
        machine = session.get("machine", {}) or {}
        found = session.get("versions", {}) or {}
        load = machine.get("load_average")
        lines.append(
            f"{index}. {session.get('started', '?')}: {machine.get('processor', '?')}, "
            f"{machine.get('usable_cores', '?')} usable cores, torch threads "
            f"{session.get('threads', '?')}, device {session.get('device', '?')}"
            + (f" ({machine['accelerator']})" if machine.get("accelerator") else "")
            + (f", load average {load[0]:.2f} at the start" if load else "")
            + f"; {machine.get('platform', '?')}; "
            + ", ".join(f"{name} {version}" for name, version in found.items())
            + (f"; command `minsharp {' '.join(session['argv'])}`" if session.get("argv") else "")
        )
    return (
        "Sessions that trained runs of this study (a resumed study has several):\n\n"
        + "\n".join(lines)
        + f"\n\nReport written with {', '.join(f'{k} {v}' for k, v in versions().items())}."
    )


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The rows as CSV with these columns; non-finite numbers and ``None`` left empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(row.get(key)) for key in columns})
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return "" if value is None else value


def as_float(value: Any) -> float:
    """``value`` as a float; ``nan`` for ``None``, booleans and anything else not a number."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def mean(values: Sequence[float | None]) -> float:
    """The mean of the finite values, ``nan`` if there is none."""
    finite = [value for value in values if value is not None and math.isfinite(value)]
    return float(np.mean(finite)) if finite else math.nan


def geometric_mean(values: Sequence[float]) -> float:
    """The geometric mean of the positive values, ``nan`` if there is none."""
    positive = [value for value in values if value > 0]
    return math.exp(float(np.mean(np.log(positive)))) if positive else math.nan


def set_text(values: Sequence[float]) -> str:
    """``{0, 0.5, 1}``: numbers in braces, ``%g``."""
    return "{" + ", ".join(f"{value:g}" for value in values) + "}"


def declared_invariances(name: str) -> tuple[str, ...]:
    """The symmetries measure ``name`` declares itself invariant to (none if unknown)."""
    try:
        declared = spec(name).invariances
    except MinsharpError:
        return ()
    return tuple(symmetry for symmetry in SYMMETRIES if symmetry in declared)


def invariances_text(name: str) -> str:
    """The declared invariances of a measure, comma-separated, or ``none``."""
    found = declared_invariances(name)
    return ", ".join(found) if found else "none"


def uses_labels(name: str) -> bool:
    """Whether measure ``name`` depends on the labels (unknown measures: assumed so)."""
    try:
        return "labels" in spec(name).requires
    except MinsharpError:
        return True


def options_text(options: Mapping[str, Any]) -> str:
    """`` (key=value, …)`` or ``""``."""
    if not options:
        return ""
    return " (" + ", ".join(f"{key}={value!r}" for key, value in options.items()) + ")"


def number_text(value: float, digits: int = 4) -> str:
    """A number with ``digits`` significant digits, ``—`` if not finite."""
    return f"{value:.{digits}g}" if math.isfinite(value) else "—"


def setting_text(value: Any) -> str:
    """A training setting for a table: ``none``, ``%g`` for floats, else ``str``."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def cell(text: Any) -> str:
    """``text`` safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_time() -> str:
    """The current UTC time to the minute, for a report's header."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

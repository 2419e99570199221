"""Pieces shared by the reports of the paired kinds (batch size, BN training).

A paired kind compares the settings of its grid's axis on networks trained from the same
seeds. Its report begins its setup with the data and the seeds (:func:`setup_head`),
tabulates the seeds of each model and setting (:func:`settings_table`, its cells
:func:`spread_cell` and :func:`count_cell`), ends with the sections of every report
(:func:`closing`) and gives the verdict lines as its terminal summary (:func:`summary`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from minsharp.study.core.config import ModelPlan
from minsharp.study.core.kind import StudyKind
from minsharp.study.core.store import StudyRecords
from minsharp.study.report.markdown import (
    closing_markdown,
    data_lines,
    files_markdown,
    setting_groups,
    spread,
    table_head,
)
from minsharp.study.report.paths import portable_data

#: A column of :func:`settings_table`: its heading, and its cell for the rows of one setting.
Column = tuple[str, Callable[[Sequence[Mapping[str, Any]]], str]]


def setup_head(records: StudyRecords, seeds: str) -> list[str]:
    """The first bullets of the setup: the data, and the seeds with what a seed does (``seeds``)."""
    listed = ", ".join(map(str, records.config.seeds))
    return [*data_lines(records), f"* **Seeds**: {listed}; {seeds}"]


def spread_cell(key: str, digits: int = 3, scale: float = 1.0) -> Callable[..., str]:
    """A cell: ``scale`` times the ``key`` of the rows, as mean ± standard deviation (range, n)."""
    return lambda rows: spread([scale * row[key] for row in rows]).text(digits)


def count_cell(key: str) -> Callable[..., str]:
    """A cell: how many of the rows have a true ``key``, of how many (e.g. ``3/5``)."""
    return lambda rows: f"{sum(bool(row[key]) for row in rows)}/{len(rows)}"


def settings_table(
    rows: Sequence[Mapping[str, Any]],
    models: Sequence[ModelPlan],
    axis: tuple[str, str, Sequence[Any]],
    columns: Sequence[Column],
) -> str:
    """A markdown table with a line per model and setting that has finished runs.

    ``axis`` is the rows' key of the setting, its heading and its values in order (integers
    shown as they are, other numbers with ``%g``); each line gives the model, the setting, the
    number of runs and ``columns``.
    """
    key, heading, values = axis
    lines = table_head("model", heading, "runs", *(name for name, _ in columns))
    for model, value, chosen in setting_groups(rows, models, key, values):
        setting = str(value) if isinstance(value, int) else f"{value:g}"
        cells = [model.name, setting, str(len(chosen)), *(cell(chosen) for _, cell in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(title: str, verdicts: Sequence[str], none_yet: str) -> str:
    """The terminal summary of a paired report: ``title``, then the verdicts or ``none_yet``."""
    return f"{title}:\n\n" + ("\n".join(verdicts) if verdicts else none_yet)


def closing(
    records: StudyRecords,
    kind: StudyKind,
    setup: Callable[[StudyRecords], str],
    paper: Callable[[Any, Mapping[str, Any]], str],
    files: tuple[str, str],
) -> list[str]:
    """The closing sections of a paired report (:func:`~.markdown.closing_markdown`).

    The problems of ``kind``'s measure groups (runs left out of the comparisons), the
    ``setup`` and ``paper`` sections of the study's records (the latter given its config and
    data record, paths relative to the study directory), the machines, and the files,
    ``files`` saying what ``runs.csv`` and each ``result.json`` hold.
    """
    csv, result = files
    return closing_markdown(
        records,
        groups=kind.measure_groups,
        left_out="the comparisons for these runs",
        setup=setup(records),
        paper=paper(records.config, portable_data(records)),
        files=files_markdown(records, csv=csv, result=result),
    )

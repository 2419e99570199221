"""Pieces shared by the reports of every study kind: markdown tables, CSV, provenance.

Each kind's report module (:mod:`minsharp.study.report`, :mod:`minsharp.study.
batch_size_report`, :mod:`minsharp.study.bn_sharpness_report`) reads its study with
:func:`minsharp.study.base.read_records` and assembles ``report.md`` from these parts: the
failed measures, warnings and unfinished runs (:func:`problems_markdown`), the machines and
versions of every session (:func:`machine_markdown`), tables (:func:`markdown_table`) and the
CSV of the runs (:func:`csv_text`). Numbers are summarised by :func:`spread` (mean, sample
standard deviation, range) wherever a report speaks of seeds.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minsharp.errors import MinsharpError
from minsharp.measures import SYMMETRIES, spec
from minsharp.study.base import StudyRecords, versions

REPORT_FILE = "report.md"
CSV_FILE = "runs.csv"
FIGURES_DIR = "figures"

#: Longest tables of failures and warnings in a report.
MAX_ROWS = 30


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
        (run, name if group == "measures" else f"{name} ({group})", entry)
        for run, result in records.results.items()
        for group in groups
        for name, entry in (result.get(group) or {}).items()
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

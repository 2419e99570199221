"""Every study kind by name, with its presets and its report: what the commands dispatch on.

``minsharp study <kind>`` runs a kind; ``minsharp report DIR`` reads the ``kind`` recorded in
``DIR/study.json`` and writes that kind's report (:func:`write_report`).

=================== ==================================== =====================================
kind                study                                report
=================== ==================================== =====================================
randomized-labels   :mod:`minsharp.study.runner`         :mod:`minsharp.study.report`
batch-size          :mod:`minsharp.study.batch_size`     :mod:`minsharp.study.batch_size_report`
bn-sharpness        :mod:`minsharp.study.bn_sharpness`   :mod:`minsharp.study.bn_sharpness_report`
=================== ==================================== =====================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minsharp.errors import StudyError
from minsharp.study import batch_size, batch_size_report, bn_sharpness, bn_sharpness_report
from minsharp.study import presets as randomized_presets
from minsharp.study import report as randomized_report
from minsharp.study import runner as randomized_runner
from minsharp.study.base import StudyKind, read_study


@dataclass(frozen=True)
class Kind:
    """A study kind with what the command line needs of it.

    Attributes:
        study: the :class:`~minsharp.study.base.StudyKind` that runs it.
        presets: the names of its presets.
        preset: ``name → configuration``.
        from_mapping: ``(mapping, base) → configuration``, a config file applied to ``base``.
        write_report: ``(directory, resamples) → (report path, summary for the terminal)``.
    """

    study: StudyKind
    presets: tuple[str, ...]
    preset: Callable[[str], Any]
    from_mapping: Callable[..., Any]
    write_report: Callable[[Path, int], tuple[Path, str]]


def _randomized_report(directory: Path, resamples: int) -> tuple[Path, str]:
    report = randomized_report.write_report(directory, resamples=resamples)
    if report.table:
        text = "Rank correlation of each measure with the generalization gap:\n\n"
        text += randomized_report.format_table(report.table)
    else:
        text = "No finished runs yet: nothing to correlate."
    return report.path, text


def _batch_size_report(directory: Path, resamples: int) -> tuple[Path, str]:
    report = batch_size_report.write_report(directory)
    return report.path, "Large vs small batch (paired by seed):\n\n" + report.summary


def _bn_sharpness_report(directory: Path, resamples: int) -> tuple[Path, str]:
    report = bn_sharpness_report.write_report(directory)
    return report.path, "BN-sharpness training vs plain SGD (paired by seed):\n\n" + report.summary


#: The study kinds by the name ``study.json`` records.
KINDS: Mapping[str, Kind] = {
    randomized_runner.KIND: Kind(
        study=randomized_runner.RANDOMIZED_LABELS,
        presets=randomized_presets.PRESETS,
        preset=randomized_presets.preset,
        from_mapping=randomized_presets.config_from_mapping,
        write_report=_randomized_report,
    ),
    batch_size.KIND: Kind(
        study=batch_size.BATCH_SIZE,
        presets=batch_size.PRESETS,
        preset=batch_size.preset,
        from_mapping=batch_size.from_mapping,
        write_report=_batch_size_report,
    ),
    bn_sharpness.KIND: Kind(
        study=bn_sharpness.BN_SHARPNESS,
        presets=bn_sharpness.PRESETS,
        preset=bn_sharpness.preset,
        from_mapping=bn_sharpness.from_mapping,
        write_report=_bn_sharpness_report,
    ),
}


def kind_of(directory: str | Path) -> Kind:
    """The kind of the study in ``directory``, as its ``study.json`` records it.

    Raises:
        StudyError: not a study directory, or a kind this minsharp does not know.
    """
    recorded = read_study(directory).get("kind", randomized_runner.KIND)
    if recorded not in KINDS:
        raise StudyError(
            f"{directory} holds a study of kind {recorded!r}, which this minsharp does not "
            f"know; the kinds are {', '.join(KINDS)}."
        )
    return KINDS[recorded]


def write_report(directory: str | Path, *, resamples: int = 2000) -> tuple[Path, str]:
    """Write the report of the study in ``directory``, whatever its kind.

    Args:
        directory: a study directory.
        resamples: bootstrap resamples (randomized-label reports only).

    Returns:
        The report's path and a summary for the terminal.

    Raises:
        StudyError: not a study directory, or an unknown kind.
    """
    directory = Path(directory).expanduser()
    return kind_of(directory).write_report(directory, resamples)

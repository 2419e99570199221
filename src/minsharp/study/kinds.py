"""Every study kind by name, with its report: what the commands dispatch on.

A new kind is one folder (``study.py`` with its :class:`~minsharp.study.core.kind.StudyKind`,
``report.py`` with its ``write_report``) and one line in :data:`KINDS`; ``minsharp study
<kind>`` is built from what the kind declares (:mod:`minsharp.cli.study`).

``minsharp study <kind>`` runs a kind; ``minsharp report DIR`` reads the ``kind`` recorded in
``DIR/study.json`` and writes that kind's report (:func:`write_report`).

=================== ===========================================
kind                its folder (``study.py`` and ``report.py``)
=================== ===========================================
randomized-labels   :mod:`minsharp.study.randomized_labels`
batch-size          :mod:`minsharp.study.batch_size`
bn-sharpness        :mod:`minsharp.study.bn_training`
=================== ===========================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minsharp.errors import StudyError
from minsharp.study.batch_size import report as batch_size_report
from minsharp.study.batch_size.study import BATCH_SIZE
from minsharp.study.bn_training import report as bn_training_report
from minsharp.study.bn_training.study import BN_SHARPNESS
from minsharp.study.core.config import Presets
from minsharp.study.core.kind import StudyKind
from minsharp.study.core.store import read_study
from minsharp.study.randomized_labels import report as randomized_labels_report
from minsharp.study.randomized_labels.study import KIND as RANDOMIZED_LABELS_KIND
from minsharp.study.randomized_labels.study import RANDOMIZED_LABELS
from minsharp.study.report.markdown import Report


@dataclass(frozen=True)
class Kind:
    """A study kind with its report: what the commands dispatch on.

    Attributes:
        study: the :class:`~minsharp.study.core.kind.StudyKind` that runs it, and declares
            its command line.
        write_report: ``(directory, **options) → Report`` of its report module; the
            report's ``summary`` is what the terminal shows.
        resamples: whether the report takes ``resamples`` (bootstrap intervals).
    """

    study: StudyKind[Any, Any]
    write_report: Callable[..., Report]
    resamples: bool = False

    @property
    def preset(self) -> Presets[Any]:
        """Its presets: ``preset(name)`` builds one."""
        return self.study.presets

    @property
    def presets(self) -> tuple[str, ...]:
        """The names of its presets."""
        return self.study.presets.names


#: The study kinds by the name ``study.json`` records.
KINDS: Mapping[str, Kind] = {
    kind.study.name: kind
    for kind in (
        Kind(RANDOMIZED_LABELS, randomized_labels_report.write_report, resamples=True),
        Kind(BATCH_SIZE, batch_size_report.write_report),
        Kind(BN_SHARPNESS, bn_training_report.write_report),
    )
}


def kind_of(directory: str | Path) -> Kind:
    """The kind of the study in ``directory``, as its ``study.json`` records it.

    Raises:
        StudyError: not a study directory, or a kind this minsharp does not know.
    """
    recorded = read_study(directory).get("kind", RANDOMIZED_LABELS_KIND)
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
    kind = kind_of(directory)
    report = kind.write_report(directory, **({"resamples": resamples} if kind.resamples else {}))
    return report.path, report.summary

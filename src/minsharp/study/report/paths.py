"""Paths in a report: relative to the study directory, never the machine's absolute ones.

``study.json`` records where the data were read from as the loader resolved it, an absolute
path of the machine that ran the study (``/home/…/mnist``). A report is read elsewhere, and
is committed with its study directory; :func:`portable_data` gives the data record with that
folder written relative to the study directory instead, so a report names it as
``../data/mnist`` (and a moved study directory with its data stays right).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from minsharp.study.core.store import StudyRecords


def relative_to_study(path: str, directory: Path) -> str:
    """``path`` relative to the study ``directory`` (as given, or ``path`` if not absolute)."""
    if not os.path.isabs(path):
        return path
    return Path(os.path.relpath(path, Path(directory).expanduser().resolve())).as_posix()


def portable_data(records: StudyRecords) -> dict[str, Any]:
    """The study's data record with its source folder written relative to the study directory.

    Every string of the record (the summary, the split note, the files' paths) has the
    recorded absolute ``source`` replaced by :func:`relative_to_study` of it.
    """
    data = dict(records.study.get("data", {}) or {})
    source = data.get("source")
    if not isinstance(source, str) or not os.path.isabs(source):
        return data
    relative = relative_to_study(source, records.directory)
    return _replaced(data, source.rstrip("/"), relative)


def _replaced(value: Any, old: str, new: str) -> Any:
    """``value`` with ``old`` replaced by ``new`` in every string, through dicts and lists."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, Mapping):
        return {key: _replaced(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_replaced(item, old, new) for item in value]
    return value

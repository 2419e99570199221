"""Normalising the demo study's report and collecting its fingerprints, for the golden test."""

from __future__ import annotations

import json
import re
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"

#: What legitimately differs from one run of the demo to the next: dates, timings, the
#: directory, and the machine and versions of the session.
_VOLATILE = (
    (re.compile(r"Written \d{4}-\d\d-\d\d \d\d:\d\d UTC"), "Written <date>"),
    (re.compile(r"; [\d.]+ s per run on average"), "; <seconds> per run on average"),
    (re.compile(r"\*\*Time\*\*: .*"), "**Time**: <time>"),
    (re.compile(r"^1\. \d{4}-\d\d-\d\dT.*$", re.M), "1. <session>"),
    (re.compile(r"^Report written with .*$", re.M), "Report written with <versions>"),
)


def normalised_report(directory: Path) -> str:
    """``directory/report.md`` with dates, timings, the directory and the machine masked."""
    text = (directory / "report.md").read_text().replace(str(directory), "<dir>")
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return text


def fingerprints(directory: Path) -> dict[str, str]:
    """Run id → the fingerprint its ``result.json`` records."""
    return {
        path.parent.name: json.loads(path.read_text())["fingerprint"]
        for path in sorted((directory / "runs").glob("*/result.json"))
    }

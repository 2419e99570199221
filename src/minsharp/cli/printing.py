"""What ``minsharp measure`` and ``minsharp measures`` print: the results table, the list.

``minsharp measure`` prints one row per measure (:func:`print_table`); ``minsharp measures``
lists the registered measures, as text or as JSON with ``--json`` (:func:`list_measures`).
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from collections.abc import Sequence
from typing import Any

from minsharp.io import jsonable
from minsharp.measures.registry import SYMMETRIES, MeasureResult, available, spec

#: The ``format`` tag and version of ``minsharp measures --json``.
LISTING_FORMAT = "minsharp-measures"
LISTING_VERSION = 1


def measure_listing() -> dict[str, Any]:
    """Every registered measure as plain JSON types: what ``minsharp measures --json`` prints.

    ``{"format", "version", "measures": [{"name", "summary", "invariances", "requires",
    "stochastic", "options" (each option's default), "reference"}, …]}``, by name.
    """
    entries = []
    for name in available():
        chosen = spec(name)
        entries.append(
            {
                "name": name,
                "summary": chosen.summary,
                "invariances": [s for s in SYMMETRIES if s in chosen.invariances],
                "requires": sorted(chosen.requires),
                "stochastic": chosen.stochastic,
                "options": jsonable(chosen.defaults),
                "reference": chosen.reference,
            }
        )
    return {"format": LISTING_FORMAT, "version": LISTING_VERSION, "measures": entries}


def list_measures(args: argparse.Namespace | None = None) -> None:
    """Print every registered measure: summary, invariances, requirements and options.

    With ``args.json``, print :func:`measure_listing` as JSON instead.
    """
    if getattr(args, "json", False):
        print(json.dumps(measure_listing(), indent=2, allow_nan=False))
        return
    for entry in measure_listing()["measures"]:
        options = " ".join(f"{k}={v!r}" for k, v in spec(entry["name"]).defaults.items())
        stochastic = "  (stochastic: seeded Monte Carlo)" if entry["stochastic"] else ""
        print(f"{entry['name']}{stochastic}")
        print(textwrap.indent(textwrap.fill(entry["summary"], 88), "    "))
        print(f"    invariant to: {', '.join(entry['invariances']) or 'none'}")
        print(f"    requires:     {', '.join(entry['requires']) or 'nothing special'}")
        print(f"    options:      {options or '(none)'}")
        print(f"    reference:    {entry['reference']}\n")


def format_number(value: Any) -> str:
    """A short rendering of a number (4 significant digits), or ``str(value)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def certificate_summary(certificate: dict[str, Any] | None) -> str:
    """One line for a solver certificate: its method, then ``key=value`` pairs."""
    if not certificate:
        return "-"
    parts = [str(certificate["method"])] if "method" in certificate else []
    parts += [f"{k}={format_number(v)}" for k, v in certificate.items() if k != "method"]
    return ", ".join(parts)


def print_table(
    results: Sequence[MeasureResult],
    failures: Sequence[dict[str, str]],
    not_applicable: dict[str, str] | None = None,
) -> None:
    """Print measure, value, invariances, seconds and certificate, one row per measure.

    Failed measures show ``FAILED`` and those ``not_applicable`` ``n/a``, each with its
    message below the table.
    """
    skipped = not_applicable or {}
    rows = [("measure", "value", "invariances", "seconds", "certificate")]
    rows += [
        (
            result.name,
            f"{result.value:.6g}",
            ", ".join(result.invariances) or "none",
            f"{result.seconds:.2f}",
            certificate_summary(result.certificate),
        )
        for result in results
    ]
    rows += [(failure["name"], "FAILED", "", "", failure["error"]) for failure in failures]
    rows += [(name, "n/a", "", "", "not applicable") for name in skipped]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = [
        "  ".join(
            [
                row[0].ljust(widths[0]),
                row[1].rjust(widths[1]),
                row[2].ljust(widths[2]),
                row[3].rjust(widths[3]),
                row[4],
            ]
        ).rstrip()
        for row in rows
    ]
    # The certificate column runs long: rule off the fixed columns and the certificate heading.
    lines.insert(1, "-" * len(lines[0]))
    print("\n".join(lines))
    for failure in failures:
        print(f"\n{failure['name']} failed: {failure['message']}")
    for name, reason in skipped.items():
        print(f"\n{name} does not apply to this model: {reason}")

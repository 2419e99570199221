"""How strong a study's rank correlations are as evidence: small-n warnings and paired tests.

Two pieces of a correlation report, for any kind that has a correlation table
(:func:`minsharp.study.report.statistics.correlation_table`):

* :func:`weak_evidence_warning`: a sentence, in words, when the runs are few (fewer than
  :data:`SMALL_N`) or a τ-b interval is wider than :data:`WIDE_INTERVAL`: with 15 runs a
  τ-b of 0.7 has a 95 % interval about 0.5 wide, and with 3 runs τ-b takes only the values
  −1, −1/3, 1/3 and 1;
* :func:`paired_markdown`: for pairs of measures (A, B), the paired bootstrap of
  τ_A − τ_B (:func:`~minsharp.study.report.statistics.paired_tau_difference`), and whether
  it says A beats B, B beats A, or neither.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from minsharp.study.report.statistics import paired_tau_difference

#: Fewer runs than this make a correlation weak evidence.
SMALL_N = 20

#: A τ-b interval wider than this is weak evidence too.
WIDE_INTERVAL = 0.5


def weak_evidence_warning(table: Sequence[Mapping[str, Any]]) -> str:
    """A bold warning when the correlations of ``table`` are weak evidence, else ``""``.

    Weak: a measure's τ-b rests on fewer than :data:`SMALL_N` runs, or its interval is wider
    than :data:`WIDE_INTERVAL`.
    """
    if not table:
        return ""
    fewest = min(row["n"] for row in table)
    widths = {
        row["measure"]: row["kendall_tau_b_ci"][1] - row["kendall_tau_b_ci"][0]
        for row in table
        if all(math.isfinite(bound) for bound in row["kendall_tau_b_ci"])
    }
    wide = [name for name, width in widths.items() if width > WIDE_INTERVAL]
    reasons = []
    if fewest < SMALL_N:
        reasons.append(
            f"they rest on {fewest} run{'s' if fewest != 1 else ''} (fewer than {SMALL_N})"
        )
    if wide:
        reasons.append(
            f"the τ-b interval of {', '.join(f'`{name}`' for name in wide)} is wider than "
            f"{WIDE_INTERVAL:g} (widest {max(widths[name] for name in wide):.2f})"
        )
    if not reasons:
        return ""
    return (
        "**Weak evidence**: these correlations are weak evidence, because "
        + " and ".join(reasons)
        + ". Rankings this uncertain can come out this way by chance; do not read a "
        "difference between two measures into this table without the paired test below, "
        "and prefer a study with more runs (`--seeds`, `--ratios`)."
    )


def paired_markdown(
    rows: Sequence[Mapping[str, Any]],
    pairs: Sequence[tuple[str, str]],
    *,
    gap: str = "gap",
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> str:
    """A table of τ_A − τ_B with its paired bootstrap interval for each pair (A, B) present.

    Pairs with a measure the rows lack are left out; ``""`` when none is left.
    """
    present = [pair for pair in pairs if all(rows and name in rows[0] for name in pair)]
    if not present:
        return ""
    percent = f"{level * 100:g} %"
    lines = [
        f"| A | B | n | τ_A − τ_B [{percent} CI] | resamples with A ahead | verdict |",
        "|" + " --- |" * 6,
    ]
    for first, second in present:
        result = paired_tau_difference(
            [row[first] for row in rows],
            [row[second] for row in rows],
            [row[gap] for row in rows],
            resamples=resamples,
            level=level,
            seed=seed,
        )
        verdict = {
            "A": f"`{first}` beats `{second}`",
            "B": f"`{second}` beats `{first}`",
            "neither": "neither (the interval holds 0)",
        }[result.verdict]
        low, high = result.interval
        interval = (
            f"{result.difference:+.3f} [{low:+.3f}, {high:+.3f}]"
            if math.isfinite(result.difference)
            else "—"
        )
        share = f"{result.above * 100:.0f} %" if math.isfinite(result.above) else "—"
        lines.append(f"| `{first}` | `{second}` | {result.n} | {interval} | {share} | {verdict} |")
    return (
        "\n".join(lines)
        + f"\n\nPaired bootstrap over runs ({resamples} resamples, seed {seed}): each resample "
        "draws runs with replacement and takes both measures of a run together, so the "
        "interval is that of the difference itself, not of two overlapping intervals. "
        '"A beats B" only where the whole interval lies above 0.'
    )

"""The report's section on the rescaling stress test (``--stress rescale``).

Reads the twins each run recorded (:mod:`minsharp.study.randomized_labels.stress`) and, per
measure, gives Kendall τ-b with the gap on the original networks, on their random twins and
on their adversarial twins, and the spread of twin/original values. The adversarial twin of
a run is its ``minimised`` twin when its gap is above the median gap of the runs with twins,
its ``raised`` twin otherwise: the rescaling that lowers the trace of the networks that
generalise worst and raises that of the others, which a measure that is not invariant to the
rescalings may follow into a τ of zero or below (Dinh, Pascanu, Bengio & Bengio 2017).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from minsharp.study.core.store import StudyRecords
from minsharp.study.randomized_labels.stress import RAISE_BOUND, SPREAD_RANGE
from minsharp.study.report import markdown as reporting
from minsharp.study.report.statistics import kendall_tau_b

#: A measure whose twin/original ratios all stay within 1 ± MOVED is "unmoved".
MOVED = 1e-3

#: The symmetries the twins combine: a measure invariant to both cannot move.
TWIN_SYMMETRIES = ("layer", "neuron")


def twin_values(
    records: StudyRecords, rows: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, list[float]]]:
    """Per twin (``original``, ``random``, ``adversarial``), each measure's value per run.

    Only runs with twins; a measure that failed on a twin, or a twin that could not be made,
    is ``nan``. ``gap`` holds the runs' gaps under every twin.
    """
    chosen = [row for row in rows if "stress" in records.results[row["run_id"]]]
    gaps = [row["gap"] for row in chosen]
    median = float(np.median(gaps)) if gaps else math.nan
    values: dict[str, dict[str, list[float]]] = {
        twin: {"gap": list(gaps)} for twin in ("original", "random", "adversarial")
    }
    for row in chosen:
        twins = records.results[row["run_id"]]["stress"].get("twins", {})
        adversarial = "minimised" if row["gap"] > median else "raised"
        for name in records.config.measures:
            values["original"].setdefault(name, []).append(row[name])
            for label, twin in (("random", "random"), ("adversarial", adversarial)):
                entry = (twins.get(twin) or {}).get("measures", {}).get(name)
                values[label].setdefault(name, []).append(reporting.measure_value(entry))
    return values


def stress_markdown(records: StudyRecords, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The stress test's section; none when no run has twins."""
    values = twin_values(records, rows)
    runs = len(values["original"]["gap"])
    if not runs:
        return []
    lines = reporting.table_head(
        "measure",
        "invariant to the twins",
        "τ-b original",
        "τ-b random twins",
        "τ-b adversarial twins",
        "twin/original, random",
        "twin/original, adversarial",
        "moved?",
    )
    driven, shifted, steady = [], [], []
    for name in records.config.measures:
        invariant = set(TWIN_SYMMETRIES) <= set(reporting.declared_invariances(name))
        taus = [_tau(values[twin][name], values[twin]["gap"]) for twin in values]
        ratios = [_ratios(values["original"][name], values[twin][name]) for twin in values]
        moved = any(_moved(ratio) for ratio in ratios[1:])
        lines.append(
            f"| `{name}` | {'yes' if invariant else 'no'} | "
            + " | ".join(_tau_text(tau) for tau in taus)
            + " | "
            + " | ".join(_range_text(ratio) for ratio in ratios[1:])
            + f" | {'**moved**' if moved else f'no (within {MOVED:g})'} |"
        )
        if invariant:
            steady.append(f"`{name}` ({_shift_text(taus)})")
        elif taus[0] > 0 >= taus[2]:
            driven.append(f"`{name}` ({taus[0]:+.2f} → {taus[2]:+.2f})")
        else:
            shifted.append(f"`{name}` ({_shift_text(taus)})")
    return [
        "## Rescaling stress test\n",
        _lead(records, runs) + "\n",
        "\n".join(lines) + "\n",
        _verdict(driven, shifted, steady) + "\n",
        *_failures(records),
    ]


def _lead(records: StudyRecords, runs: int) -> str:
    deviations = [
        entry.get("function_deviation")
        for result in records.results.values()
        for entry in (result.get("stress") or {}).get("twins", {}).values()
        if isinstance(entry, Mapping) and "function_deviation" in entry
    ]
    spreads = [
        ((result.get("stress") or {}).get("twins", {}).get("random") or {}).get("spread")
        for result in records.results.values()
    ]
    low, high = SPREAD_RANGE
    return (
        f"Every measure was also computed on three function-equivalent twins of each of the "
        f"{runs} networks, rescaled by the full rescaling group of its graph (theory §7; "
        "each weight from unit j to unit i times e^{u_i − u_j}, each bias i times e^{u_i}); "
        "every twin was checked to give the same logits on a probe batch before it was "
        f"measured (largest relative logit gap {max(deviations, default=math.nan):.1e}). "
        f"**Random twins**: log-scales u = u_layer + u_neuron, one N(0, s²) per module output "
        f"plus one N(0, s²) per unit, where the spread s is drawn uniformly in [{low:g}, "
        f"{high:g}] for each run from a seed derived from its run id (here s = "
        f"{reporting.spread(spreads).text(2)}), so that the distortion differs from network "
        "to network. **Adversarial twins** (Dinh et al. 2017): for the runs above the median "
        "gap, the rescaling that minimises the Hessian trace (the optimum of "
        "`neuron_minimum_sharpness`, our neuron-wise Minimum Sharpness); for the others, that "
        f"direction reversed and stretched until the largest |u_i| is B = {RAISE_BOUND:g} "
        "(weights change by at most e^{2B}), which by convexity of the trace along the line "
        "never lowers it. A measure invariant to layer- and neuron-wise rescalings should "
        "give the same values and τ-b on every twin; one that is not can be moved, and its "
        "τ-b with it. twin/original: the range of the ratio over the runs."
    )


def _verdict(driven: list[str], shifted: list[str], steady: list[str]) -> str:
    """Which non-invariant measures the adversarial twins drove from τ-b > 0 to τ-b ≤ 0."""
    text = (
        "Driven from τ-b > 0 on the originals to τ-b ≤ 0 on the adversarial twins, by "
        "function-preserving rescalings alone: "
        + (", ".join(driven) if driven else "no measure")
        + "."
    )
    if shifted:
        text += " Other measures not invariant to the twins (original → random, adversarial): "
        text += ", ".join(shifted) + "."
    if steady:
        text += " Invariant measures (original → random, adversarial): " + ", ".join(steady) + "."
    return text


def _failures(records: StudyRecords) -> list[str]:
    failed = [
        (run, f"{twin}: {name}" if name else twin, message)
        for run, result in records.results.items()
        for twin, entry in ((result.get("stress") or {}).get("twins", {}) or {}).items()
        for name, message in _twin_errors(entry)
    ]
    if not failed:
        return []
    return [
        "### Failed twins and twin measures\n",
        reporting.markdown_table(("run", "twin: measure", "error"), failed),
    ]


def _twin_errors(entry: Any) -> list[tuple[str, str]]:
    """``(measure, message)`` of a twin's failures; measure ``""`` for the twin itself."""
    if not isinstance(entry, Mapping):
        return [("", "no record")]
    if "error" in entry:
        return [("", str(entry.get("message")))]
    return [
        (name, str(measured.get("message")))
        for name, measured in (entry.get("measures") or {}).items()
        if isinstance(measured, Mapping) and "error" in measured
    ]


def _ratios(original: Sequence[float], twin: Sequence[float]) -> list[float]:
    return [
        b / a
        for a, b in zip(original, twin, strict=True)
        if math.isfinite(a) and math.isfinite(b) and a != 0
    ]


def _tau(measure: Sequence[float], gaps: Sequence[float]) -> float:
    """τ-b over the runs where the measure is a number (a failed twin measure is left out)."""
    kept = [(m, g) for m, g in zip(measure, gaps, strict=True) if math.isfinite(m)]
    return kendall_tau_b([m for m, _ in kept], [g for _, g in kept])


def _moved(ratios: Sequence[float]) -> bool:
    return any(abs(ratio - 1) > MOVED for ratio in ratios)


def _tau_text(tau: float) -> str:
    return f"{tau:+.2f}" if math.isfinite(tau) else "—"


def _range_text(ratios: Sequence[float]) -> str:
    if not ratios:
        return "—"
    return f"{min(ratios):.4g}–{max(ratios):.4g}"


def _shift_text(taus: Sequence[float]) -> str:
    return f"{_tau_text(taus[0])} → {_tau_text(taus[1])}, {_tau_text(taus[2])}"

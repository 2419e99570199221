"""The figures of the batch-size report: each measure by seed and batch size, and the rescaling.

``batch_size.png`` (:func:`values_figure`) draws, per model and measure, each seed's values
from the smallest to the largest batch size; ``rescaling.png`` (:func:`rescaling_figure`) the
largest relative change of each measure under the random layer rescaling, against
:data:`MOVES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from minsharp.study.batch_size.study import BatchSizeConfig
from minsharp.study.report.markdown import declared_invariances, select
from minsharp.study.report.plots import MARKERS, log_scale_if_wide, new_figure

#: A measure whose relative change under the rescaling stays at or below this is "unmoved".
MOVES = 1e-2


def relative_changes(rows: Sequence[Mapping[str, Any]], name: str) -> list[float]:
    """The finite relative changes ``|m(rescaled)/m − 1|`` of measure ``name``."""
    return [abs(r[f"{name}_change"]) for r in rows if math.isfinite(r[f"{name}_change"])]


_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def values_figure(rows: Sequence[Mapping[str, Any]], config: BatchSizeConfig) -> Any:
    """Each measure and the test accuracy against the batch size, one line per model and seed."""
    panels = [*config.measures, "test_accuracy"]
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure = new_figure(3.8 * columns, 3.0 * lines)
    sizes = sorted(config.batch_sizes)
    for index, panel in enumerate(panels):
        axis = figure.add_subplot(lines, columns, index + 1)
        values: list[float] = []
        for number in range(len(config.models)):
            values += _seed_lines(axis, rows, config, panel, number)
        log_scale_if_wide(axis, values)
        axis.set_xticks(range(len(sizes)), [str(size) for size in sizes], fontsize=7)
        axis.set_xlabel("batch size", fontsize=8)
        invariant = declared_invariances(panel) if panel in config.measures else ()
        title = panel.replace("_", " ") if panel == "test_accuracy" else panel
        axis.set_title(title + (" (invariant)" if invariant else ""), fontsize=9)
        axis.tick_params(which="both", labelsize=7)
        if index == 0 and len(config.models) > 1:
            axis.legend(fontsize=7)
    return figure


def _seed_lines(
    axis: Any,
    rows: Sequence[Mapping[str, Any]],
    config: BatchSizeConfig,
    panel: str,
    number: int,
) -> list[float]:
    """Draw ``panel`` against the batch size for model ``number``, one line per seed.

    A measure's rescaled copies are drawn as open markers beside it. Returns the values drawn.
    """
    model = config.models[number]
    colour, marker = _COLOURS[number % len(_COLOURS)], MARKERS[number % len(MARKERS)]
    offset = 0.08 * (number - (len(config.models) - 1) / 2)
    positions = {size: index for index, size in enumerate(sorted(config.batch_sizes))}
    values: list[float] = []
    for seed in config.seeds:
        chosen = sorted(select(rows, model=model.name, seed=seed), key=lambda r: r["batch_size"])
        if not chosen:
            continue
        x = [positions[r["batch_size"]] + offset for r in chosen]
        y = [r[panel] for r in chosen]
        label = model.name if seed == config.seeds[0] else None
        axis.plot(x, y, "-", marker=marker, color=colour, label=label, markersize=5)
        values += y
        if panel not in config.measures:
            continue
        twin = [r[f"{panel}_rescaled"] for r in chosen]
        values += twin
        axis.plot(
            [value + 0.04 for value in x],
            twin,
            linestyle="none",
            marker=marker,
            markerfacecolor="none",
            color=colour,
            markersize=7,
        )
    return values


def rescaling_figure(rows: Sequence[Mapping[str, Any]], config: BatchSizeConfig) -> Any:
    """The largest relative change of each measure under the rescaling (log scale)."""
    figure = new_figure(max(4.5, 0.9 * len(config.measures) + 2), 3.4)
    axis = figure.add_subplot(1, 1, 1)
    floor = 1e-12
    largest = []
    for name in config.measures:
        changes = relative_changes(rows, name)
        largest.append(max(max(changes), floor) if changes else math.nan)
    colours = ["tab:blue" if declared_invariances(n) else "tab:gray" for n in config.measures]
    positions = np.arange(len(config.measures))
    axis.bar(positions, np.nan_to_num(largest, nan=floor), color=colours)
    axis.axhline(MOVES, color="black", linewidth=0.6, linestyle="--")
    axis.set_yscale("log")
    axis.set_xticks(positions, list(config.measures), rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("largest |m(rescaled)/m − 1|", fontsize=8)
    axis.set_title(
        f"Change under a random layer rescaling (dashed: {MOVES:g}; blue: declared invariant)",
        fontsize=9,
    )
    axis.tick_params(which="both", labelsize=7)
    return figure

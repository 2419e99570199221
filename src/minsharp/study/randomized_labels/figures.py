"""The figures of the randomized-label report, drawn with matplotlib's Agg canvas.

No pyplot and no global backend: each figure is a :class:`matplotlib.figure.Figure`, written
by :func:`minsharp.study.report.markdown.write_files`
(:func:`~minsharp.study.report.markdown.new_figure`,
:func:`~minsharp.study.report.markdown.save_figure`, shared by every study's report). The figures
take the report's run rows (one mapping per finished run with ``model``, ``ratio``, ``seed``,
``gap``, accuracies and one value per measure, ``nan`` where it failed) and the correlation
table.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from minsharp.measures import spec
from minsharp.study.report.markdown import mean
from minsharp.study.report.plots import MARKERS, log_scale_if_wide, new_figure


def report_figures(
    rows: list[dict[str, Any]], measures: list[str], table: list[dict[str, Any]]
) -> dict[str, Callable[[], Any]]:
    """Every figure of the report by file name, each drawn when called.

    ``measures_vs_gap.png`` (all measures, one panel each), ``gap_<measure>.png`` (one per
    measure), ``measures_vs_ratio.png`` and ``kendall_tau.png``.
    """
    by_name = {row["measure"]: row for row in table}
    return {
        "measures_vs_gap.png": lambda: _gap_figure(rows, measures, by_name),
        **{
            f"gap_{name}.png": functools.partial(_one_gap_figure, rows, name, by_name.get(name))
            for name in measures
        },
        "measures_vs_ratio.png": lambda: _ratio_figure(rows, measures),
        "kendall_tau.png": lambda: _tau_figure(table),
    }


def _gap_figure(
    rows: list[dict[str, Any]], measures: list[str], by_name: Mapping[str, Mapping[str, Any]]
) -> Any:
    """Every measure against the gap, one panel each, with one colour bar for the ratio."""
    columns = min(4, len(measures))
    lines = math.ceil(len(measures) / columns)
    figure = new_figure(3.6 * columns, 3.0 * lines)
    axes = [figure.add_subplot(lines, columns, index + 1) for index in range(len(measures))]
    for axis, name in zip(axes, measures, strict=True):
        _gap_panel(figure, axis, rows, name, by_name.get(name), colorbar=False)
    _ratio_colorbar(figure, axes)
    return figure


def _one_gap_figure(
    rows: list[dict[str, Any]], name: str, correlation: Mapping[str, Any] | None
) -> Any:
    """One measure against the gap, with its colour bar."""
    figure = new_figure(5.0, 3.8)
    axis = figure.add_subplot(1, 1, 1)
    _gap_panel(figure, axis, rows, name, correlation, colorbar=True)
    axis.set_ylabel(name, fontsize=8)
    return figure


def _gap_panel(
    figure: Any,
    axis: Any,
    rows: list[dict[str, Any]],
    name: str,
    correlation: Mapping[str, Any] | None,
    *,
    colorbar: bool,
) -> None:
    models = sorted({row["model"] for row in rows})
    scatter = None
    for index, model in enumerate(models):
        chosen = [r for r in rows if r["model"] == model and math.isfinite(r[name])]
        if not chosen:
            continue
        scatter = axis.scatter(
            [r["gap"] for r in chosen],
            [r[name] for r in chosen],
            c=[r["ratio"] for r in chosen],
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            marker=MARKERS[index % len(MARKERS)],
            s=26,
            edgecolors="black",
            linewidths=0.3,
            label=model if len(models) > 1 else None,
        )
    log_scale_if_wide(axis, [r[name] for r in rows])
    title = name
    if correlation is not None and math.isfinite(correlation["kendall_tau_b"]):
        title += f"\nτ-b = {correlation['kendall_tau_b']:.2f}"
        low, high = correlation["kendall_tau_b_ci"]
        if math.isfinite(low):
            title += f" [{low:.2f}, {high:.2f}]"
    axis.set_title(title, fontsize=9)
    axis.set_xlabel("generalization gap", fontsize=8)
    axis.tick_params(which="both", labelsize=7)
    if len(models) > 1:
        axis.legend(fontsize=7)
    if colorbar and scatter is not None:
        figure.colorbar(scatter, ax=axis, label="label-noise ratio r")


def _ratio_colorbar(figure: Any, axes: list[Any]) -> None:
    from matplotlib import cm, colors

    mappable = cm.ScalarMappable(norm=colors.Normalize(0.0, 1.0), cmap="viridis")
    figure.colorbar(mappable, ax=axes, label="label-noise ratio r", shrink=0.8)


def _ratio_figure(rows: list[dict[str, Any]], measures: list[str]) -> Any:
    panels = ["accuracy", *measures]
    columns = min(4, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure = new_figure(3.4 * columns, 2.8 * lines)
    models = sorted({row["model"] for row in rows})
    for index, panel in enumerate(panels):
        axis = figure.add_subplot(lines, columns, index + 1)
        if panel == "accuracy":
            _accuracy_panel(axis, rows, models)
        else:
            _measure_panel(axis, rows, models, panel)
        axis.set_xlabel("label-noise ratio r", fontsize=8)
        axis.tick_params(which="both", labelsize=7)
    return figure


def _accuracy_panel(axis: Any, rows: list[dict[str, Any]], models: list[str]) -> None:
    """Train and test accuracy and the gap against the ratio, one line per model."""
    for key, style in (("train_accuracy", "-o"), ("test_accuracy", "-s"), ("gap", "-^")):
        for model in models:
            ratios, means = _means_by_ratio(rows, model, key)
            label = key.replace("_", " ") + (f" ({model})" if len(models) > 1 else "")
            axis.plot(ratios, means, style, markersize=3, label=label)
    axis.set_title("accuracies and gap", fontsize=9)
    axis.legend(fontsize=6)


def _measure_panel(axis: Any, rows: list[dict[str, Any]], models: list[str], name: str) -> None:
    """A measure against the ratio: every run, and the mean per ratio as a line, per model."""
    for number, model in enumerate(models):
        chosen = [r for r in rows if r["model"] == model and math.isfinite(r[name])]
        axis.scatter(
            [r["ratio"] for r in chosen],
            [r[name] for r in chosen],
            s=10,
            alpha=0.5,
            marker=MARKERS[number % len(MARKERS)],
        )
        ratios, means = _means_by_ratio(rows, model, name)
        axis.plot(ratios, means, "-", label=model if len(models) > 1 else None)
    log_scale_if_wide(axis, [r[name] for r in rows])
    axis.set_title(name, fontsize=9)
    if len(models) > 1:
        axis.legend(fontsize=6)


def _tau_figure(table: list[dict[str, Any]]) -> Any:
    figure = new_figure(max(4.5, 0.8 * len(table) + 2), 3.6)
    axis = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(table))
    taus = np.array([row["kendall_tau_b"] for row in table], dtype=float)
    intervals = np.array([row["kendall_tau_b_ci"] for row in table], dtype=float)
    lower = np.where(np.isfinite(intervals[:, 0]), taus - intervals[:, 0], 0.0)
    upper = np.where(np.isfinite(intervals[:, 1]), intervals[:, 1] - taus, 0.0)
    invariant = [bool(spec(row["measure"]).invariances) for row in table]
    colours = ["tab:blue" if flag else "tab:gray" for flag in invariant]
    axis.bar(
        positions,
        np.nan_to_num(taus),
        yerr=np.vstack([np.clip(lower, 0, None), np.clip(upper, 0, None)]),
        color=colours,
        capsize=3,
    )
    psi = [row["granulated_average"] for row in table]
    axis.scatter(positions, psi, marker="D", color="black", s=18, zorder=3, label="granulated Ψ")
    axis.axhline(0.0, color="black", linewidth=0.6)
    axis.set_xticks(
        positions, [row["measure"] for row in table], rotation=35, ha="right", fontsize=8
    )
    axis.set_ylabel("Kendall τ-b with the gap")
    axis.set_ylim(-1.05, 1.05)
    from matplotlib.patches import Patch

    axis.legend(
        handles=[
            Patch(color="tab:blue", label="scale-invariant"),
            Patch(color="tab:gray", label="not invariant"),
            axis.collections[-1],
        ],
        fontsize=7,
        loc="best",
    )
    axis.set_title("Rank correlation with the generalization gap (95 % CI)", fontsize=9)
    return figure


def _means_by_ratio(
    rows: list[dict[str, Any]], model: str, key: str
) -> tuple[list[float], list[float]]:
    ratios = sorted({r["ratio"] for r in rows if r["model"] == model})
    means = [
        mean([r[key] for r in rows if r["model"] == model and r["ratio"] == x]) for x in ratios
    ]
    return ratios, means

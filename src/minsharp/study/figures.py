"""The figures of the study reports, drawn with matplotlib's Agg canvas.

No pyplot and no global backend: each figure is a :class:`matplotlib.figure.Figure` rendered
to PNG bytes in memory and written atomically (:func:`new_figure`, :func:`save_figure`, shared
by every study's report). The randomized-label figures take the report's run rows (one
mapping per finished run with ``model``, ``ratio``, ``seed``, ``gap``, accuracies and one
value per measure, ``nan`` where it failed) and the correlation table.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minsharp.io import write_bytes_atomic
from minsharp.measures import spec

#: Values spanning at least this factor (all positive) are drawn on a log scale.
LOG_SPAN = 10.0


def write_figures(
    rows: list[dict[str, Any]],
    measures: list[str],
    table: list[dict[str, Any]],
    folder: Path,
) -> list[Path]:
    """Write every figure of the report into ``folder``; returns their paths.

    ``measures_vs_gap.png`` (all measures, one panel each), ``gap_<measure>.png`` (one per
    measure), ``measures_vs_ratio.png`` and ``kendall_tau.png``.
    """
    by_name = {row["measure"]: row for row in table}
    written = []
    columns = min(4, len(measures))
    lines = math.ceil(len(measures) / columns)
    figure = new_figure(3.6 * columns, 3.0 * lines)
    axes = [figure.add_subplot(lines, columns, index + 1) for index in range(len(measures))]
    for axis, name in zip(axes, measures, strict=True):
        _gap_panel(figure, axis, rows, name, by_name.get(name), colorbar=False)
    _ratio_colorbar(figure, axes, rows)
    written.append(save_figure(figure, folder / "measures_vs_gap.png"))
    for name in measures:
        figure = new_figure(5.0, 3.8)
        axis = figure.add_subplot(1, 1, 1)
        _gap_panel(figure, axis, rows, name, by_name.get(name), colorbar=True)
        axis.set_ylabel(name, fontsize=8)
        written.append(save_figure(figure, folder / f"gap_{name}.png"))
    written.append(save_figure(_ratio_figure(rows, measures), folder / "measures_vs_ratio.png"))
    written.append(save_figure(_tau_figure(table), folder / "kendall_tau.png"))
    return written


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` of this size in inches, with constrained layout (no pyplot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: Any, path: Path) -> Path:
    """Render ``figure`` on an Agg canvas to PNG (110 dpi) and write it to ``path`` atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_bytes_atomic(path, buffer.getvalue())
    return path


#: Marker per model, in order.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


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


def _ratio_colorbar(figure: Any, axes: list[Any], rows: list[dict[str, Any]]) -> None:
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
            for key, style in (("train_accuracy", "-o"), ("test_accuracy", "-s"), ("gap", "-^")):
                for model in models:
                    ratios, means = _means_by_ratio(rows, model, key)
                    label = key.replace("_", " ") + (f" ({model})" if len(models) > 1 else "")
                    axis.plot(ratios, means, style, markersize=3, label=label)
            axis.set_title("accuracies and gap", fontsize=9)
            axis.legend(fontsize=6)
        else:
            for number, model in enumerate(models):
                chosen = [r for r in rows if r["model"] == model and math.isfinite(r[panel])]
                axis.scatter(
                    [r["ratio"] for r in chosen],
                    [r[panel] for r in chosen],
                    s=10,
                    alpha=0.5,
                    marker=MARKERS[number % len(MARKERS)],
                )
                ratios, means = _means_by_ratio(rows, model, panel)
                axis.plot(ratios, means, "-", label=model if len(models) > 1 else None)
            log_scale_if_wide(axis, [r[panel] for r in rows])
            axis.set_title(panel, fontsize=9)
            if len(models) > 1:
                axis.legend(fontsize=6)
        axis.set_xlabel("label-noise ratio r", fontsize=8)
        axis.tick_params(which="both", labelsize=7)
    return figure


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


def log_scale_if_wide(axis: Any, values: Sequence[float]) -> None:
    """Put ``axis``'s y scale on a log scale when the finite values span :data:`LOG_SPAN`."""
    finite = [value for value in values if math.isfinite(value)]
    if finite and min(finite) > 0 and max(finite) / min(finite) >= LOG_SPAN:
        axis.set_yscale("log")


def _means_by_ratio(
    rows: list[dict[str, Any]], model: str, key: str
) -> tuple[list[float], list[float]]:
    ratios = sorted({r["ratio"] for r in rows if r["model"] == model})
    means = [
        _mean([r[key] for r in rows if r["model"] == model and r["ratio"] == x]) for x in ratios
    ]
    return ratios, means


def _mean(values: Sequence[float]) -> float:
    finite = [value for value in values if value is not None and math.isfinite(value)]
    return float(np.mean(finite)) if finite else math.nan

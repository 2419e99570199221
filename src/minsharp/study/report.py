"""The report of a randomized-label study: ``DIR/report.md``, figures and ``DIR/runs.csv``.

:func:`write_report` reads ``DIR/study.json`` and every finished ``DIR/runs/<id>/result.json``
and writes, each file atomically:

* ``report.md``: what was run (configuration, data with its split, machine, versions), how it
  differs from the paper's protocol (MATH §6), training outcomes per ratio, the correlation
  table of every measure against the generalization gap (Kendall τ-b and Spearman ρ with
  percentile bootstrap intervals, Jiang et al.'s granulated Kendall per axis and averaged),
  failed measures and runs, and the figures;
* ``figures/measures_vs_gap.png`` (every measure against the gap, coloured by the label-noise
  ratio, as the paper's Fig. 2), ``figures/gap_<measure>.png`` (the same, one per measure),
  ``figures/measures_vs_ratio.png`` and ``figures/kendall_tau.png`` (τ-b per measure with its
  interval);
* ``runs.csv``: one row per finished run.

The figures are drawn by :mod:`minsharp.study.figures` (matplotlib's Agg canvas, no pyplot).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minsharp.io import write_text_atomic
from minsharp.models import ZOO
from minsharp.study import base
from minsharp.study.base import RESULT_FILE, RUNS_DIR, StudyRecords, versions
from minsharp.study.figures import write_figures
from minsharp.study.presets import StudyConfig, paper_preset
from minsharp.study.reporting import (
    CSV_FILE,
    FIGURES_DIR,
    MAX_ROWS,
    REPORT_FILE,
    as_float,
    cell,
    csv_text,
    invariances_text,
    machine_markdown,
    mean,
    number_text,
    options_text,
    problems_markdown,
    report_time,
    setting_text,
    uses_labels,
)
from minsharp.study.runner import RANDOMIZED_LABELS
from minsharp.study.statistics import correlation_table, kendall_tau_b

__all__ = [
    "AXES",
    "CSV_FILE",
    "DIFFERS",
    "FIGURES_DIR",
    "INCLUDES",
    "MAX_ROWS",
    "NEAR_PERFECT",
    "REPORT_FILE",
    "SAME",
    "Report",
    "StudyRecords",
    "format_table",
    "paper_differences",
    "read_records",
    "run_rows",
    "write_report",
]

#: The grid's axes, as the granulated Kendall coefficient groups runs.
AXES: tuple[str, ...] = ("ratio", "seed", "model")

#: Runs whose training accuracy ends below this are flagged in the report.
NEAR_PERFECT = 0.99


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    path: Path
    csv: Path
    figures: list[Path]
    table: list[dict[str, Any]]
    records: StudyRecords


def read_records(directory: str | Path) -> StudyRecords:
    """The randomized-label study in ``directory``: its config and every finished run's result.

    Raises:
        StudyError: not a study directory, a study of another kind, or an unreadable
            ``study.json``.
    """
    return base.read_records(directory, RANDOMIZED_LABELS)


def run_rows(records: StudyRecords) -> list[dict[str, Any]]:
    """One flat row per finished run: axes, accuracies, gap, timings and measure values.

    A measure that failed on a run has the value ``nan`` there (its message is in
    ``errors``).
    """
    rows = []
    for run, result in records.results.items():
        row: dict[str, Any] = {
            "run_id": run,
            "model": result["model"],
            "ratio": result["ratio"],
            "seed": result["seed"],
            "train_accuracy": result["train_accuracy"],
            "clean_train_accuracy": result.get("clean_train_accuracy"),
            "test_accuracy": result["test_accuracy"],
            "gap": result["gap"],
            "final_loss": as_float(result.get("final_loss")),
            "epochs_run": result.get("epochs_run"),
            "training_seconds": result.get("timings", {}).get("training"),
            "measure_seconds": result.get("timings", {}).get("measures"),
        }
        errors = []
        for name in records.config.measures:
            entry = result["measures"].get(name, {"error": "missing", "message": "not computed"})
            row[name] = as_float(entry.get("value")) if "value" in entry else math.nan
            if "error" in entry:
                errors.append(name)
        row["errors"] = ";".join(errors)
        rows.append(row)
    return rows


def write_report(
    directory: str | Path, *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> Report:
    """Write ``report.md``, the figures and ``runs.csv`` of the study in ``directory``.

    Args:
        directory: a study directory (``minsharp study randomized-labels --output``).
        resamples: bootstrap resamples per confidence interval.
        seed: seed of the bootstrap.
        level: coverage of the intervals.

    Returns:
        The paths written and the correlation table.

    Raises:
        StudyError: not a study directory.
    """
    records = read_records(directory)
    directory = records.directory
    rows = run_rows(records)
    measures = list(records.config.measures)
    table = (
        correlation_table(
            rows, measures, gap="gap", axes=AXES, resamples=resamples, seed=seed, level=level
        )
        if rows
        else []
    )
    csv_path = directory / CSV_FILE
    write_text_atomic(csv_path, _csv(rows, measures))
    figures_dir = directory / FIGURES_DIR
    figures_dir.mkdir(exist_ok=True)
    figures: list[Path] = []
    if rows:
        figures = write_figures(rows, measures, table, figures_dir)
    text = _markdown(records, rows, table, figures, resamples=resamples, seed=seed, level=level)
    path = directory / REPORT_FILE
    write_text_atomic(path, text)
    return Report(path, csv_path, figures, table, records)


def format_table(table: Sequence[Mapping[str, Any]]) -> str:
    """The correlation table as aligned plain text (for the terminal)."""
    header = ("measure", "n", "Kendall τ-b [95% CI]", "Spearman ρ [95% CI]", "granulated Ψ")
    lines = [header]
    for row in table:
        lines.append(
            (
                row["measure"],
                str(row["n"]),
                _with_interval(row["kendall_tau_b"], row["kendall_tau_b_ci"]),
                _with_interval(row["spearman_rho"], row["spearman_rho_ci"]),
                _fixed(row["granulated_average"]),
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    rendered = [
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    rendered.insert(1, "-" * len(rendered[0]))
    return "\n".join(rendered)


# --------------------------------------------------------------------------- markdown


def _markdown(
    records: StudyRecords,
    rows: list[dict[str, Any]],
    table: list[dict[str, Any]],
    figures: list[Path],
    *,
    resamples: int,
    seed: int,
    level: float,
) -> str:
    config, study = records.config, records.study
    data = study.get("data", {}) or {}
    planned = len(study.get("runs", []))
    percent = f"{level * 100:g} %"
    out: list[str] = []
    add = out.append
    add(f"# Randomized-label study — preset `{config.preset}`\n")
    add(
        "Does a sharpness measure predict generalization? Networks are trained on training "
        "sets whose labels are partly shuffled (label-noise ratio r), each is measured, and "
        "every measure is rank-correlated with the generalization gap, train accuracy − test "
        "accuracy (Ibayashi, Hamaguchi & Imaizumi 2021, Fig. 2; MATH §6).\n"
    )
    add(
        f"Written {report_time()} by minsharp {versions().get('minsharp')} from {len(rows)} "
        f"finished of {planned} planned runs in `{records.directory}`."
        + (
            " **The study is not finished**: rerun the same command to complete it."
            if len(rows) < planned
            else ""
        )
        + "\n"
    )
    if table:
        add("## Results\n")
        add(_results_lead(records, rows, table, percent) + "\n")
        add(_correlation_markdown(table, config, percent) + "\n")
        add(
            f"τ-b: Kendall's τ with ties accounted for. {percent} intervals: percentile "
            f"bootstrap over runs ({resamples} resamples, seed {seed}). ψ: Jiang et al.'s "
            "(2020) granulated Kendall coefficient, the mean τ-b over groups of runs that "
            "differ only in that axis (— where the axis has a single value); Ψ: the mean of "
            "the defined ψ. Positive values mean the measure grows with the gap.\n"
        )
        add("![every measure against the generalization gap](figures/measures_vs_gap.png)\n")
        add(
            "Each point is one trained network, coloured by its label-noise ratio (marker: "
            "model). One figure per measure: "
            + ", ".join(f"[{name}](figures/gap_{name}.png)" for name in config.measures)
            + ".\n"
        )
        add("![Kendall τ-b per measure](figures/kendall_tau.png)\n")
        add("![measures against the label-noise ratio](figures/measures_vs_ratio.png)\n")
        add("### Per ratio\n")
        add(_per_ratio_markdown(rows, config) + "\n")
    else:
        add("## Results\n\nNo run has finished yet: there is nothing to correlate.\n")
    add(problems_markdown(records, left_out="the correlations for these runs"))
    add("## What was run\n")
    add(_setup_markdown(records) + "\n")
    add("## How this run differs from the paper\n")
    add(_paper_markdown(config, data) + "\n")
    add("## Machine and versions\n")
    add(machine_markdown(study) + "\n")
    add("## Files\n")
    add(
        f"* `{CSV_FILE}`: one row per finished run (axes, accuracies, gap, timings, measure "
        "values; `errors` names the measures that failed on the run).\n"
        f"* `{RUNS_DIR}/<run-id>/{RESULT_FILE}`: everything about one run (corruption record, "
        "training history per epoch, every measure's value, options, certificate, details "
        "and time); `checkpoint/` holds the trained weights (`model.safetensors`) and the "
        "JSON that rebuilds the network (`minsharp.train.load_checkpoint`).\n"
        "* `study.json`: the configuration, the data record, the planned runs and every "
        "session that worked on the study.\n"
        f"* Regenerate this report with `minsharp report {records.directory}`.\n"
    )
    return "\n".join(out)


def _results_lead(
    records: StudyRecords, rows: list[dict[str, Any]], table: list[dict[str, Any]], percent: str
) -> str:
    train = [row["train_accuracy"] for row in rows]
    lines = [
        f"{len(rows)} networks; training accuracy (on the labels they were trained on) "
        f"{min(train):.3f}–{max(train):.3f}"
        + (
            f" (**{sum(t < NEAR_PERFECT for t in train)} below {NEAR_PERFECT}**)"
            if min(train) < NEAR_PERFECT
            else ""
        )
        + f"; gap {min(r['gap'] for r in rows):.3f}–{max(r['gap'] for r in rows):.3f}."
    ]
    ratios = sorted({row["ratio"] for row in rows})
    if len(ratios) > 1:
        rising = []
        for name in records.config.measures:
            means = [mean([r[name] for r in rows if r["ratio"] == ratio]) for ratio in ratios]
            finite = [value for value in means if math.isfinite(value)]
            if len(finite) == len(means):
                tau = _tau(ratios, means)
                rising.append(f"{name} {tau:+.2f}")
        if rising:
            lines.append(
                "Kendall τ-b of each measure's mean per ratio with the ratio (does it rise with "
                "the label noise?): " + ", ".join(rising) + "."
            )
    return " ".join(lines)


def _correlation_markdown(table: list[dict[str, Any]], config: StudyConfig, percent: str) -> str:
    axes = [axis for axis in AXES]
    header = (
        f"| measure | invariant to | n | Kendall τ-b [{percent} CI] | Spearman ρ [{percent} CI] | "
        + " | ".join(f"ψ {axis}" for axis in axes)
        + " | Ψ |"
    )
    lines = [header, "|" + " --- |" * (5 + len(axes) + 1)]
    for row in table:
        lines.append(
            f"| `{row['measure']}` | {invariances_text(row['measure'])} | {row['n']} | "
            f"{_with_interval(row['kendall_tau_b'], row['kendall_tau_b_ci'])} | "
            f"{_with_interval(row['spearman_rho'], row['spearman_rho_ci'])} | "
            + " | ".join(_fixed(row["granulated"].get(axis, math.nan)) for axis in axes)
            + f" | {_fixed(row['granulated_average'])} |"
        )
    return "\n".join(lines)


def _per_ratio_markdown(rows: list[dict[str, Any]], config: StudyConfig) -> str:
    measures = list(config.measures)
    header = "| r | runs | train acc | test acc | gap | " + " | ".join(
        f"`{name}`" for name in measures
    )
    lines = [header + " |", "|" + " --- |" * (5 + len(measures))]
    for ratio in sorted({row["ratio"] for row in rows}):
        chosen = [row for row in rows if row["ratio"] == ratio]
        cells = [
            f"{ratio:g}",
            str(len(chosen)),
            f"{mean([r['train_accuracy'] for r in chosen]):.3f}",
            f"{mean([r['test_accuracy'] for r in chosen]):.3f}",
            f"{mean([r['gap'] for r in chosen]):.3f}",
        ] + [number_text(mean([r[name] for r in chosen])) for name in measures]
        lines.append("| " + " | ".join(cells) + " |")
    return "Means over seeds and models.\n\n" + "\n".join(lines)


def _setup_markdown(records: StudyRecords) -> str:
    config, study = records.config, records.study
    data = study.get("data", {}) or {}
    lines = [
        f"* **Data**: {data.get('summary', config.dataset)}",
    ]
    if data.get("split_kind") not in (None, "official"):
        lines.append(
            f"* **Split note**: {data.get('split')}. The test part is therefore held out from "
            "the same files as the training part, not the official test set."
        )
    rule = (
        "a fraction r of the training examples is chosen and their labels are permuted among "
        "themselves (the paper's rule)"
        if config.corruption == "permute"
        else "a fraction r of the training examples gets uniformly random labels (Zhang et al.)"
    )
    lines += [
        f"* **Label corruption**: {rule}; test labels clean. Ratios r ∈ "
        f"{{{', '.join(f'{r:g}' for r in config.ratios)}}}; each trial's corruption is seeded "
        "by its seed and ratio (shared by its models).",
        f"* **Seeds (trials)**: {', '.join(map(str, config.seeds))}; a run's seed initialises "
        "the network and orders its minibatches.",
        "* **Models and training** (SGD with momentum, weight decay, learning rate "
        "lr/(1 + decay·t), t = minibatch steps):",
        "",
        "  | model | network | parameters | epochs | batch | lr | momentum | weight decay | "
        "lr decay | early stop |",
        "  | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    parameters = {r["model"]: r.get("parameters") for r in records.results.values()}
    for model in config.models:
        training = config.training_config(model, 0)
        lines.append(
            f"  | {model.name} | `{model.zoo}`{options_text(model.options)} | "
            f"{parameters.get(model.name, '?')} | {training.epochs} | {training.batch_size} | "
            f"{training.lr:g} | {training.momentum:g} | {training.weight_decay:g} | "
            f"{training.lr_decay:g} | "
            + (
                f"at {training.target_train_accuracy:g} train accuracy"
                if training.target_train_accuracy is not None
                else "no (all epochs)"
            )
            + " |"
        )
    lines.append("")
    examples = (
        "all training inputs"
        if config.measure_examples is None
        else f"the first {config.measure_examples} training inputs"
    )
    labelled = [name for name in config.measures if uses_labels(name)]
    unlabelled = [name for name in config.measures if name not in labelled]
    use = (
        f"; of these, {', '.join(f'`{n}`' for n in unlabelled)} depend on the inputs only"
        if unlabelled and labelled
        else ("; none of these uses the labels" if unlabelled else "")
    )
    lines.append(
        f"* **Measures**, computed after training on {examples} **with the corrupted labels**, "
        f"the labels each network was trained on{use}:"
    )
    for name in config.measures:
        options = config.measure_options.get(name, {})
        seconds = [
            entry["seconds"]
            for result in records.results.values()
            if isinstance(entry := result["measures"].get(name), dict) and "seconds" in entry
        ]
        lines.append(
            f"  * `{name}`{options_text(options)}: invariant to {invariances_text(name)}"
            + (f"; {mean(seconds):.2f} s per run on average" if seconds else "")
        )
    training_time = sum(
        (r.get("timings") or {}).get("training", 0) for r in records.results.values()
    )
    measure_time = sum(
        (r.get("timings") or {}).get("measures", 0) for r in records.results.values()
    )
    lines.append(
        f"* **Time**: {training_time / 60:.1f} min training and {measure_time / 60:.1f} min "
        f"measuring over the {len(records.results)} finished runs."
    )
    return "\n".join(lines)


def _paper_markdown(config: StudyConfig, data: Mapping[str, Any]) -> str:
    rows = paper_differences(config, data)
    differing = [row for row in rows if row[3] == DIFFERS]
    lead = (
        "This study follows the paper's protocol in every setting below."
        if not differing
        else f"{len(differing)} of {len(rows)} settings differ from the paper's protocol "
        "(MATH §6; `--preset paper` reproduces it):"
    )
    lines = [lead, "", "| setting | paper | this study | |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {name} | {cell(paper)} | {cell(ours)} | "
        f"{f'**{status}**' if status == DIFFERS else status} |"
        for name, paper, ours, status in rows
    ]
    if data.get("split_kind") not in (None, "official"):
        lines += ["", f"Data split: {data.get('split')}."]
    return "\n".join(lines)


#: The verdicts of :func:`paper_differences`.
SAME, DIFFERS, INCLUDES = "same", "differs", "includes the paper's"


def paper_differences(
    config: StudyConfig, data: Mapping[str, Any]
) -> list[tuple[str, str, str, str]]:
    """``(setting, paper, this study, verdict)`` for each setting of the paper's protocol.

    The paper's side is :func:`~minsharp.study.presets.paper_preset`. Each model is compared
    with the paper's model of the same zoo network, or else with the paper's MLP (networks
    on flat inputs) or LeNet (networks on images). The verdict is :data:`SAME`,
    :data:`DIFFERS` or, for the measures, :data:`INCLUDES`.
    """
    paper = paper_preset()
    rows: list[tuple[str, str, str, str]] = []

    def add(setting: str, theirs: str, ours: str, same: bool) -> None:
        rows.append((setting, theirs, ours, SAME if same else DIFFERS))

    sizes = data.get("sizes") or {}
    official = data.get("split_kind") == "official"
    add(
        "data",
        "MNIST, official split: 60 000 train / 10 000 test",
        f"{data.get('title', config.dataset)}, {sizes.get('train', '?')} train / "
        f"{sizes.get('test', '?')} test"
        + ("" if official else f" ({data.get('split_kind', 'split')}, see below)"),
        config.dataset == "mnist" and official and not data.get("subsampled", True),
    )
    add(
        "normalisation",
        "(x/255 − 0.5)/0.5",
        str(data.get("normalisation", "?")).split(" for ")[0],
        config.dataset in ("mnist", "fashion-mnist"),
    )
    add(
        "label corruption",
        paper.corruption,
        config.corruption,
        config.corruption == paper.corruption,
    )
    add(
        "ratios",
        _list(paper.ratios),
        _list(config.ratios),
        list(config.ratios) == list(paper.ratios),
    )
    add(
        "trials per ratio",
        str(len(paper.seeds)),
        str(len(config.seeds)),
        len(config.seeds) == len(paper.seeds),
    )
    add(
        "models",
        ", ".join(f"{m.name} (`{m.zoo}`)" for m in paper.models),
        ", ".join(f"{m.name} (`{m.zoo}`{options_text(m.options)})" for m in config.models),
        sorted((m.zoo, tuple(m.options.items())) for m in config.models)
        == sorted((m.zoo, ()) for m in paper.models),
    )
    by_zoo = {model.zoo: model for model in paper.models}
    for model in config.models:
        analogue = (
            by_zoo.get(model.zoo) or by_zoo["lenet" if ZOO[model.zoo].images else "paper_mlp"]
        )
        ours = config.training_config(model, 0).as_dict()
        theirs = paper.training_config(analogue, 0).as_dict()
        for key in (
            "epochs",
            "batch_size",
            "lr",
            "momentum",
            "weight_decay",
            "lr_decay",
            "target_train_accuracy",
        ):
            add(
                f"{model.name}: {key.replace('_', ' ')}"
                + ("" if analogue.zoo == model.zoo else f" (vs the paper's `{analogue.zoo}`)"),
                setting_text(theirs[key]),
                setting_text(ours[key]),
                ours[key] == theirs[key],
            )
    add(
        "measured on",
        "the training inputs, after the last epoch",
        "the training inputs, after the last epoch"
        if config.measure_examples is None
        else f"the first {config.measure_examples} training inputs",
        config.measure_examples is None,
    )
    paper_measures = {"minimum_sharpness", "normalized_sharpness"}
    rows.append(
        (
            "measures",
            "Minimum Sharpness, normalized sharpness",
            ", ".join(config.measures),
            INCLUDES if paper_measures <= set(config.measures) else DIFFERS,
        )
    )
    return rows


# --------------------------------------------------------------------------- helpers


def _csv(rows: list[dict[str, Any]], measures: list[str]) -> str:
    columns = [
        "run_id",
        "model",
        "ratio",
        "seed",
        "train_accuracy",
        "clean_train_accuracy",
        "test_accuracy",
        "gap",
        "final_loss",
        "epochs_run",
        "training_seconds",
        "measure_seconds",
        *measures,
        "errors",
    ]
    return csv_text(rows, columns)


def _tau(x: Sequence[float], y: Sequence[float]) -> float:
    return kendall_tau_b(list(x), list(y))


def _fixed(value: float) -> str:
    return f"{value:+.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def _with_interval(value: float, interval: Sequence[float]) -> str:
    if not math.isfinite(value):
        return "—"
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:+.2f}"
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"


def _list(values: Sequence[float]) -> str:
    return "{" + ", ".join(f"{value:g}" for value in values) + "}"

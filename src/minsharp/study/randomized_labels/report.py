"""The report of a randomized-label study: ``DIR/report.md``, figures and ``DIR/runs.csv``.

:func:`write_report` reads ``DIR/study.json`` and every finished ``DIR/runs/<id>/result.json``
and writes, each file atomically:

* ``report.md``: what was run (configuration, data with its split, machine, versions), how it
  differs from the paper's protocol (theory §6), training outcomes per ratio, the correlation
  table of every measure against the generalization gap (Kendall τ-b and Spearman ρ with
  percentile bootstrap intervals, Jiang et al.'s granulated Kendall per axis and averaged),
  failed measures and runs, and the figures;
* ``figures/measures_vs_gap.png`` (every measure against the gap, coloured by the label-noise
  ratio, as the paper's Fig. 2), ``figures/gap_<measure>.png`` (the same, one per measure),
  ``figures/measures_vs_ratio.png`` and ``figures/kendall_tau.png`` (τ-b per measure with its
  interval);
* ``runs.csv``: one row per finished run.

The figures are drawn by :mod:`minsharp.study.randomized_labels.figures` (matplotlib's Agg
canvas, no pyplot).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minsharp.models import ZOO
from minsharp.study.core import store
from minsharp.study.core.provenance import versions
from minsharp.study.core.store import StudyRecords
from minsharp.study.randomized_labels.config import StudyConfig, paper_preset
from minsharp.study.randomized_labels.figures import report_figures
from minsharp.study.randomized_labels.stress_report import stress_markdown
from minsharp.study.randomized_labels.study import RANDOMIZED_LABELS
from minsharp.study.report import markdown as reporting
from minsharp.study.report.evidence import paired_markdown, weak_evidence_warning
from minsharp.study.report.paths import portable_data
from minsharp.study.report.statistics import correlation_table, kendall_tau_b
from minsharp.training import TrainingConfig

#: The grid's axes, as the granulated Kendall coefficient groups runs.
AXES: tuple[str, ...] = ("ratio", "seed", "model")

#: Runs whose training accuracy ends below this are flagged in the report.
NEAR_PERFECT = 0.99

#: The measures that are ours, not the paper's, with the note the report gives them.
OURS: dict[str, str] = {
    "neuron_minimum_sharpness": "`neuron_minimum_sharpness` is ours, not the paper's: Minimum "
    "Sharpness over per-unit rescalings (theory §7), never above the paper's layer-wise "
    "`minimum_sharpness`."
}

#: Pairs (A, B) of measures whose τ-b difference the report tests (paired bootstrap).
PAIRS: tuple[tuple[str, str], ...] = (
    ("neuron_minimum_sharpness", "normalized_sharpness"),
    ("minimum_sharpness", "normalized_sharpness"),
    ("minimum_sharpness", "hessian_trace"),
    ("neuron_minimum_sharpness", "minimum_sharpness"),
)


@dataclass
class Report(reporting.Report):
    """What :func:`write_report` wrote, with the correlation table."""

    table: list[dict[str, Any]]


def read_records(directory: str | Path) -> StudyRecords:
    """The randomized-label study in ``directory``: its config and every finished run's result.

    Raises:
        StudyError: not a study directory, a study of another kind, or an unreadable
            ``study.json``.
    """
    return store.read_records(directory, RANDOMIZED_LABELS)


def run_rows(records: StudyRecords) -> list[dict[str, Any]]:
    """One flat row per finished run: axes, accuracies, gap, timings and measure values.

    A measure that failed on a run has the value ``nan`` there (and its name in ``errors``).
    """
    rows = []
    for run, result in records.results.items():
        row = reporting.run_row(run, result, "ratio")
        row["clean_train_accuracy"] = result.get("clean_train_accuracy")
        row["measure_seconds"] = (result.get("timings") or {}).get("measures")
        entries = {
            name: result["measures"].get(name) or {"error": "missing"}
            for name in records.config.measures
        }
        row.update({name: reporting.measure_value(entry) for name, entry in entries.items()})
        row["errors"] = ";".join(name for name, entry in entries.items() if "error" in entry)
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
        The paths written, the correlation table and, as the summary, the table as text.

    Raises:
        StudyError: not a study directory.
    """
    records = read_records(directory)
    rows = run_rows(records)
    measures = list(records.config.measures)
    table = (
        correlation_table(
            rows, measures, gap="gap", axes=AXES, resamples=resamples, seed=seed, level=level
        )
        if rows
        else []
    )
    path, csv_path, figures = reporting.write_files(
        records.directory,
        rows=rows,
        columns=reporting.csv_columns(
            "ratio", measures, fit=["clean_train_accuracy"], seconds=["measure_seconds"]
        ),
        markdown=_markdown(
            records,
            _results_markdown(records, rows, table, resamples=resamples, seed=seed, level=level),
        ),
        figures=report_figures(rows, measures, table),
    )
    summary = (
        "Rank correlation of each measure with the generalization gap:\n\n" + format_table(table)
        if table
        else "No finished runs yet: nothing to correlate."
    )
    return Report(path, csv_path, figures, records, summary, table)


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


def _markdown(records: StudyRecords, results: list[str]) -> str:
    config = records.config
    out: list[str] = []
    add = out.append
    add(f"# Randomized-label study — preset `{config.preset}`\n")
    add(
        "Does a sharpness measure predict generalization? Networks are trained on training "
        "sets whose labels are partly shuffled (label-noise ratio r), each is measured, and "
        "every measure is rank-correlated with the generalization gap, train accuracy − test "
        "accuracy (Ibayashi, Hamaguchi & Imaizumi 2021, Fig. 2; theory §6).\n"
    )
    add(reporting.written_markdown(records, by=f" by minsharp {versions().get('minsharp')}"))
    out += results
    out += reporting.closing_markdown(
        records,
        groups=("measures",),
        left_out="the correlations for these runs",
        setup=_setup_markdown(records),
        paper=_paper_markdown(config, portable_data(records)),
        files=reporting.files_markdown(
            records,
            csv="axes, accuracies, gap, timings, measure values; `errors` names the measures "
            "that failed on the run",
            result="corruption record, training history per epoch, every measure's value, "
            "options, certificate, details and time",
            checkpoint="the trained weights (`model.safetensors`) and the JSON that rebuilds "
            "the network (`minsharp.training.load_checkpoint`)",
            sessions="every session that worked on the study",
        ),
    )
    return "\n".join(out)


def _results_markdown(
    records: StudyRecords,
    rows: list[dict[str, Any]],
    table: list[dict[str, Any]],
    *,
    resamples: int,
    seed: int,
    level: float,
) -> list[str]:
    """The results section: the correlation table, its figures and the values per ratio."""
    config = records.config
    percent = f"{level * 100:g} %"
    out: list[str] = []
    add = out.append
    if table:
        add("## Results\n")
        add(_results_lead(records, rows) + "\n")
        add(_correlation_markdown(table, percent) + "\n")
        add(
            f"τ-b: Kendall's τ with ties accounted for. {percent} intervals: percentile "
            f"bootstrap over runs ({resamples} resamples, seed {seed}). ψ: Jiang et al.'s "
            "(2020) granulated Kendall coefficient, the mean τ-b over groups of runs that "
            "differ only in that axis (— where the axis has a single value); Ψ: the mean of "
            "the defined ψ. Positive values mean the measure grows with the gap."
            + "".join(f" {OURS[name]}" for name in config.measures if name in OURS)
            + "\n"
        )
        warning = weak_evidence_warning(table)
        if warning:
            add(warning + "\n")
        paired = paired_markdown(rows, PAIRS, resamples=resamples, seed=seed, level=level)
        if paired:
            out += ["### Does one measure beat another?\n", paired + "\n"]
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
        out += stress_markdown(records, rows)
    else:
        add("## Results\n\nNo run has finished yet: there is nothing to correlate.\n")
    return out


def _results_lead(records: StudyRecords, rows: list[dict[str, Any]]) -> str:
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
    rising = []
    if len(ratios) > 1:
        for name in records.config.measures:
            means = [
                reporting.mean([r[name] for r in rows if r["ratio"] == ratio]) for ratio in ratios
            ]
            if all(math.isfinite(value) for value in means):
                rising.append(f"{name} {kendall_tau_b(ratios, means):+.2f}")
    if rising:
        lines.append(
            "Kendall τ-b of each measure's mean per ratio with the ratio (does it rise with "
            "the label noise?): " + ", ".join(rising) + "."
        )
    return " ".join(lines)


def _correlation_markdown(table: list[dict[str, Any]], percent: str) -> str:
    lines = reporting.table_head(
        "measure",
        "invariant to",
        "n",
        f"Kendall τ-b [{percent} CI]",
        f"Spearman ρ [{percent} CI]",
        *(f"ψ {axis}" for axis in AXES),
        "Ψ",
    )
    for row in table:
        label = f"`{row['measure']}`" + (" (ours)" if row["measure"] in OURS else "")
        lines.append(
            f"| {label} | {reporting.invariances_text(row['measure'])} | {row['n']} | "
            f"{_with_interval(row['kendall_tau_b'], row['kendall_tau_b_ci'])} | "
            f"{_with_interval(row['spearman_rho'], row['spearman_rho_ci'])} | "
            + " | ".join(_fixed(row["granulated"].get(axis, math.nan)) for axis in AXES)
            + f" | {_fixed(row['granulated_average'])} |"
        )
    return "\n".join(lines)


def _per_ratio_markdown(rows: list[dict[str, Any]], config: StudyConfig) -> str:
    measures = list(config.measures)
    lines = reporting.table_head(
        "r", "runs", "train acc", "test acc", "gap", *(f"`{name}`" for name in measures)
    )
    for ratio in sorted({row["ratio"] for row in rows}):
        chosen = [row for row in rows if row["ratio"] == ratio]
        cells = [
            f"{ratio:g}",
            str(len(chosen)),
            f"{reporting.mean([r['train_accuracy'] for r in chosen]):.3f}",
            f"{reporting.mean([r['test_accuracy'] for r in chosen]):.3f}",
            f"{reporting.mean([r['gap'] for r in chosen]):.3f}",
        ] + [reporting.number_text(reporting.mean([r[name] for r in chosen])) for name in measures]
        lines.append("| " + " | ".join(cells) + " |")
    return "Means over seeds and models.\n\n" + "\n".join(lines)


def _setup_markdown(records: StudyRecords) -> str:
    config: StudyConfig = records.config
    rule = (
        "a fraction r of the training examples is chosen and their labels are permuted among "
        "themselves (the paper's rule)"
        if config.corruption == "permute"
        else "a fraction r of the training examples gets uniformly random labels (Zhang et al.)"
    )
    lines = [
        *reporting.data_lines(records),
        f"* **Label corruption**: {rule}; test labels clean. Ratios r ∈ "
        f"{reporting.set_text(config.ratios)}; each trial's corruption is seeded by its seed "
        "and ratio "
        "(shared by its models).",
        f"* **Seeds (trials)**: {', '.join(map(str, config.seeds))}; a run's seed initialises "
        "the network and orders its minibatches.",
        "* **Models and training** (SGD with momentum, weight decay, learning rate "
        "lr/(1 + decay·t), t = minibatch steps):",
        "",
        *reporting.models_table(
            records,
            ["epochs", "batch", *reporting.SGD_COLUMNS, "early stop"],
            ((model, _training_cells(config.training_config(model, 0))) for model in config.models),
        ),
    ]
    labelled = [name for name in config.measures if reporting.uses_labels(name)]
    unlabelled = [name for name in config.measures if name not in labelled]
    use = (
        f"; of these, {', '.join(f'`{n}`' for n in unlabelled)} depend on the inputs only"
        if unlabelled and labelled
        else ("; none of these uses the labels" if unlabelled else "")
    )
    lines += [
        "",
        f"* **Measures**, computed after training on "
        f"{reporting.examples_text(config.measure_examples, 'training inputs')} "
        "**with the corrupted "
        f"labels**, the labels each network was trained on{use}:",
        *reporting.measure_lines(records, per="run"),
        f"* **Time**: {reporting.timing_total(records, 'training') / 60:.1f} min training and "
        f"{reporting.timing_total(records, 'measures') / 60:.1f} min measuring over the "
        f"{len(records.results)} finished runs.",
    ]
    return "\n".join(lines)


def _training_cells(training: TrainingConfig) -> list[Any]:
    """Epochs, batch size, SGD settings and early stop of a model's training."""
    early = (
        f"at {training.target_train_accuracy:g} train accuracy"
        if training.target_train_accuracy is not None
        else "no (all epochs)"
    )
    return [training.epochs, training.batch_size, *reporting.sgd_cells(training), early]


def _paper_markdown(config: StudyConfig, data: Mapping[str, Any]) -> str:
    rows = paper_differences(config, data)
    differing = [row for row in rows if row[3] == reporting.DIFFERS]
    lead = (
        "This study follows the paper's protocol in every setting below."
        if not differing
        else f"{len(differing)} of {len(rows)} settings differ from the paper's protocol "
        "(theory §6; `--preset paper` reproduces it):"
    )
    return "\n".join([lead, "", *reporting.paper_table(rows, data)])


#: The keys of the training settings compared with the paper's.
_TRAINING_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "lr_decay",
    "target_train_accuracy",
)


def paper_differences(
    config: StudyConfig, data: Mapping[str, Any]
) -> list[tuple[str, str, str, str]]:
    """``(setting, paper, this study, verdict)`` for each setting of the paper's protocol.

    The paper's side is :func:`~minsharp.study.randomized_labels.config.paper_preset`. Each
    model is compared with the paper's model of the same zoo network, or else with the
    paper's MLP (networks on flat inputs) or LeNet (networks on images). The verdict is
    :data:`~minsharp.study.report.markdown.SAME`,
    :data:`~minsharp.study.report.markdown.DIFFERS` or, for the
    measures, :data:`~minsharp.study.report.markdown.INCLUDES`.
    """
    paper = paper_preset()
    return [
        *_protocol_rows(config, data, paper),
        *_training_differences(config, paper),
        *_measure_differences(config),
    ]


def _protocol_rows(
    config: StudyConfig, data: Mapping[str, Any], paper: StudyConfig
) -> list[tuple[str, str, str, str]]:
    """The data, corruption, grid and models against the paper's (:func:`paper_differences`)."""
    sizes = data.get("sizes") or {}
    official = data.get("split_kind") == "official"
    rows = [
        (
            "data",
            "MNIST, official split: 60 000 train / 10 000 test",
            f"{data.get('title', config.dataset)}, {sizes.get('train', '?')} train / "
            f"{sizes.get('test', '?')} test"
            + ("" if official else f" ({data.get('split_kind', 'split')}, see below)"),
            reporting.verdict(
                config.dataset == "mnist" and official and not data.get("subsampled", True)
            ),
        ),
        (
            "normalisation",
            "(x/255 − 0.5)/0.5",
            str(data.get("normalisation", "?")).split(" for ")[0],
            reporting.verdict(config.dataset in ("mnist", "fashion-mnist")),
        ),
        (
            "label corruption",
            paper.corruption,
            config.corruption,
            reporting.verdict(config.corruption == paper.corruption),
        ),
        (
            "ratios",
            reporting.set_text(paper.ratios),
            reporting.set_text(config.ratios),
            reporting.verdict(list(config.ratios) == list(paper.ratios)),
        ),
        (
            "trials per ratio",
            str(len(paper.seeds)),
            str(len(config.seeds)),
            reporting.verdict(len(config.seeds) == len(paper.seeds)),
        ),
        (
            "models",
            ", ".join(f"{m.name} (`{m.zoo}`)" for m in paper.models),
            ", ".join(
                f"{m.name} (`{m.zoo}`{reporting.options_text(m.options)})" for m in config.models
            ),
            reporting.verdict(
                sorted((m.zoo, tuple(m.options.items())) for m in config.models)
                == sorted((m.zoo, ()) for m in paper.models)
            ),
        ),
    ]
    return rows


def _training_differences(
    config: StudyConfig, paper: StudyConfig
) -> list[tuple[str, str, str, str]]:
    """Each model's training against its paper analogue's (:func:`paper_differences`)."""
    rows = []
    by_zoo = {model.zoo: model for model in paper.models}
    for model in config.models:
        analogue = (
            by_zoo.get(model.zoo)
            or by_zoo["lenet" if model.zoo in ZOO and ZOO[model.zoo].images else "paper_mlp"]
        )
        suffix = "" if analogue.zoo == model.zoo else f" (vs the paper's `{analogue.zoo}`)"
        rows += [
            (f"{model.name}: {setting}{suffix}", theirs, ours, same)
            for setting, theirs, ours, same in reporting.training_rows(
                config.training_config(model, 0), paper.training_config(analogue, 0), _TRAINING_KEYS
            )
        ]
    return rows


def _measure_differences(config: StudyConfig) -> list[tuple[str, str, str, str]]:
    """What the measures are computed on, and which, against the paper's."""
    on_all = "the training inputs, after the last epoch"
    return [
        (
            "measured on",
            on_all,
            on_all
            if config.measure_examples is None
            else reporting.examples_text(config.measure_examples, "training inputs"),
            reporting.verdict(config.measure_examples is None),
        ),
        (
            "measures",
            "Minimum Sharpness, normalized sharpness",
            ", ".join(config.measures),
            reporting.INCLUDES
            if {"minimum_sharpness", "normalized_sharpness"} <= set(config.measures)
            else reporting.DIFFERS,
        ),
    ]


# --------------------------------------------------------------------------- helpers


def _fixed(value: float) -> str:
    return f"{value:+.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def _with_interval(value: float, interval: Sequence[float]) -> str:
    if not math.isfinite(value):
        return "—"
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:+.2f}"
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"

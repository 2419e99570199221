"""The report of a BN-sharpness training study: ``report.md``, ``figures/`` and ``runs.csv``.

Each penalty weight λ > 0 is compared with plain SGD (λ = 0) per model, paired by seed (both
runs of a pair start from the same weights and see the same minibatches). The report gives,
over seeds, the mean ± sample standard deviation (and range) of the test and train accuracy,
of BN-sharpness before and after training and of the wall time per optimisation step; the
paired test-accuracy difference with a 95 % Student-t interval; and the paired cost ratio.
The paper's claim (Yi et al. 2019: the penalty improves test accuracy over plain SGD) is
judged on the paired test-accuracy difference:

* **held** — the mean difference is positive and its 95 % interval excludes 0;
* **not significant** — the mean is positive but the interval includes 0;
* **did not hold** — the mean is zero or negative.

Figures: ``figures/test_accuracy.png`` (each seed's pair, and the mean test accuracy per epoch
for each λ), ``figures/bn_sharpness.png`` (BN-sharpness before and after training).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from minsharp.study.bn_training.study import (
    BN_SHARPNESS,
    MEASURE_GROUPS,
    BNSharpnessConfig,
    paper_preset,
)
from minsharp.study.core import store
from minsharp.study.core.config import ModelPlan, ratio_label
from minsharp.study.core.store import StudyRecords
from minsharp.study.report import markdown as reporting
from minsharp.study.report.paths import portable_data
from minsharp.study.report.plots import MARKERS, log_scale_if_wide, new_figure
from minsharp.training import TrainingConfig

#: Coverage of the paired interval.
LEVEL = 0.95

HELD, NOT_HELD = reporting.HELD, reporting.NOT_HELD
NOT_SIGNIFICANT = "not significant"
UNDECIDED = "undecided (fewer than two pairs)"


@dataclass(frozen=True)
class Pairing:
    """One λ > 0 against plain SGD (λ = 0) for one model, paired by seed.

    Attributes:
        model: the model's name.
        weight: λ.
        differences: test accuracy (λ) − test accuracy (0) per seed.
        cost_ratios: seconds per step (λ) / seconds per step (0) per seed.
        sharpness_ratios: BN-sharpness after training, λ over 0, per seed.
    """

    model: str
    weight: float
    differences: dict[int, float]
    cost_ratios: dict[int, float]
    sharpness_ratios: dict[int, float]

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        """Student-t interval of the mean difference (``nan`` with fewer than two pairs)."""
        values = np.array(list(self.differences.values()), dtype=float)
        if len(values) < 2:
            return math.nan, math.nan
        half = stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1)
        half /= math.sqrt(len(values))
        return float(values.mean() - half), float(values.mean() + half)

    @property
    def verdict(self) -> str:
        """:data:`HELD`, :data:`NOT_SIGNIFICANT`, :data:`NOT_HELD` or :data:`UNDECIDED`."""
        if len(self.differences) < 2:
            return UNDECIDED
        low, _ = self.interval()
        average = reporting.mean(list(self.differences.values()))
        if average <= 0:
            return NOT_HELD
        return HELD if low > 0 else NOT_SIGNIFICANT


@dataclass
class Report(reporting.Report):
    """What :func:`write_report` wrote, with the pairings; the summary holds the verdicts."""

    pairings: list[Pairing]


def run_rows(records: StudyRecords) -> list[dict[str, Any]]:
    """One flat row per finished run: axes, accuracies, cost and every measure.

    Each measure appears after training (``<measure>``) and before (``<measure>_before``);
    ``nan`` where it failed.
    """
    rows = []
    for run, result in records.results.items():
        row = reporting.run_row(run, result, "weight")
        row.update(
            steps=result.get("steps"),
            seconds_per_step=result["seconds_per_step"],
            test_curve=(result.get("history") or {}).get("test_accuracy") or [],
        )
        errors = []
        for name in records.config.measures:
            for group, suffix in (("measures", ""), ("measures_before", "_before")):
                entry = result[group].get(name) or {"error": "missing"}
                row[name + suffix] = reporting.measure_value(entry)
                if "error" in entry:
                    errors.append(name + suffix)
        row["errors"] = ";".join(errors)
        rows.append(row)
    return rows


def pairings(rows: Sequence[Mapping[str, Any]], config: BNSharpnessConfig) -> list[Pairing]:
    """Each λ > 0 against λ = 0, per model, over the seeds where both runs finished."""
    found = []
    for model in config.models:
        baseline = {r["seed"]: r for r in reporting.select(rows, model=model.name, weight=0.0)}
        for weight in sorted(w for w in config.weights if w > 0):
            treated = {
                r["seed"]: r for r in reporting.select(rows, model=model.name, weight=weight)
            }
            seeds = sorted(set(baseline) & set(treated))
            if not seeds and not treated:
                continue
            found.append(
                Pairing(
                    model=model.name,
                    weight=weight,
                    differences={
                        s: treated[s]["test_accuracy"] - baseline[s]["test_accuracy"] for s in seeds
                    },
                    cost_ratios=_ratios(treated, baseline, seeds, "seconds_per_step"),
                    sharpness_ratios=_ratios(treated, baseline, seeds, "bn_sharpness"),
                )
            )
    return found


def _ratios(
    treated: Mapping[int, Mapping[str, Any]],
    baseline: Mapping[int, Mapping[str, Any]],
    seeds: Sequence[int],
    key: str,
) -> dict[int, float]:
    found = {}
    for seed in seeds:
        top, bottom = (
            reporting.as_float(treated[seed].get(key)),
            reporting.as_float(baseline[seed].get(key)),
        )
        if math.isfinite(top) and math.isfinite(bottom) and bottom > 0:
            found[seed] = top / bottom
    return found


def write_report(directory: str | Path) -> Report:
    """Write ``report.md``, the figures and ``runs.csv`` of the BN study in ``directory``.

    Raises:
        StudyError: not a BN-sharpness study directory.
    """
    records = store.read_records(directory, BN_SHARPNESS)
    config: BNSharpnessConfig = records.config
    rows = run_rows(records)
    found = pairings(rows, config)
    verdicts = [_verdict_line(pairing) for pairing in found if pairing.differences]
    measures = [name + suffix for name in config.measures for suffix in ("_before", "")]
    path, csv_path, figures = reporting.write_files(
        records.directory,
        rows=rows,
        columns=reporting.csv_columns("weight", measures, during=["steps", "seconds_per_step"]),
        markdown=_markdown(records, rows, found, verdicts),
        figures={
            "test_accuracy.png": lambda: _accuracy_figure(rows, config),
            "bn_sharpness.png": lambda: _sharpness_figure(rows, config),
        },
    )
    summary = "BN-sharpness training vs plain SGD (paired by seed):\n\n" + (
        "\n".join(verdicts) if verdicts else "No complete pair of runs yet."
    )
    return Report(path, csv_path, figures, records, summary, found)


# --------------------------------------------------------------------------- markdown


def _verdict_line(pairing: Pairing) -> str:
    values = list(pairing.differences.values())
    low, high = pairing.interval()
    better = sum(value > 0 for value in values)
    interval = (
        f", {LEVEL * 100:g} % interval [{100 * low:+.2f}, {100 * high:+.2f}]"
        if math.isfinite(low)
        else ""
    )
    costs = list(pairing.cost_ratios.values())
    cost = (
        f"; cost per step ×{reporting.geometric_mean(costs):.2f} "
        f"({min(costs):.2f}–{max(costs):.2f})"
        if costs
        else ""
    )
    sharp = list(pairing.sharpness_ratios.values())
    sharpness = (
        f"; BN-sharpness after training ×{reporting.geometric_mean(sharp):.3g} of plain SGD's"
        if sharp
        else ""
    )
    return (
        f"{pairing.model}, λ = {pairing.weight:g}: {pairing.verdict} — test accuracy "
        f"{reporting.mean(values) * 100:+.2f} points over plain SGD (paired over {len(values)} "
        f"seed{'' if len(values) == 1 else 's'}"
        f"{interval}; better on {better} of {len(values)}){cost}{sharpness}."
    )


def _markdown(
    records: StudyRecords,
    rows: list[dict[str, Any]],
    found: list[Pairing],
    verdicts: list[str],
) -> str:
    config: BNSharpnessConfig = records.config
    out: list[str] = []
    add = out.append
    add(f"# BN-sharpness training vs plain SGD — preset `{config.preset}`\n")
    add(
        "Does minimising L + λ·S_BN, the BN-sharpness penalty of Yi et al. (2019; our "
        "reconstruction, theory §5), give better test accuracy than plain SGD? Networks with "
        "batch-norm are trained from the same initial weights and minibatch order, with and "
        "without the penalty, for the same epochs; each step of the penalised training "
        "follows ĝ = (1 − λ)∇L(w) + λ∇L(w + t v), t ~ U(0, δ), v the BN-sharpness direction "
        "held fixed (`minsharp.training.bn_penalty`).\n"
    )
    add(reporting.written_markdown(records))
    out += _verdict_markdown(found, verdicts)
    if rows:
        add("## Results per penalty weight\n")
        add(_results_table(rows, config) + "\n")
        add(
            "Mean ± sample standard deviation over seeds (range, count). BN-sharpness "
            f"(δ = {config.delta:g}) before training is taken at the initial weights with the "
            "training set's batch-norm statistics, after training with the running "
            "statistics; time per step is the wall time of the optimisation steps alone "
            "(no evaluation), divided by the steps.\n"
        )
        add("![test accuracy](figures/test_accuracy.png)\n")
        add(
            "Left: each seed's test accuracy without (λ = 0) and with the penalty. Right: the "
            "mean test accuracy after each epoch (band: range over seeds).\n"
        )
        add("![BN-sharpness before and after training](figures/bn_sharpness.png)\n")
        add("### Extra cost per step\n")
        add(_cost_markdown(found, records) + "\n")
    out += reporting.closing_markdown(
        records,
        groups=MEASURE_GROUPS,
        left_out="the comparisons for these runs",
        setup=_setup_markdown(records),
        paper=_paper_markdown(config, portable_data(records)),
        files=reporting.files_markdown(
            records,
            csv="accuracies, time per step, each measure before and after training",
            result="training history per epoch with the time of the steps, every measure's "
            "value, options and details",
        ),
    )
    return "\n".join(out)


def _verdict_markdown(found: list[Pairing], verdicts: list[str]) -> list[str]:
    """The verdict section: whether the penalty improved test accuracy, per pairing."""
    out: list[str] = ["## Verdict\n"]
    add = out.append
    decided = [p for p in found if p.verdict != UNDECIDED]
    if decided:
        held = all(p.verdict == HELD for p in decided)
        add(
            "**The paper's claim (the penalty improves test accuracy over plain SGD) "
            + (HELD if held else NOT_HELD)
            + f"** on this run, judged by the paired difference and its {LEVEL * 100:g} % "
            "Student-t interval:\n"
        )
        add("\n".join(f"* {line}" for line in verdicts) + "\n")
    else:
        add("Fewer than two complete pairs of runs: nothing to compare yet.\n")
    return out


def _results_table(rows: Sequence[Mapping[str, Any]], config: BNSharpnessConfig) -> str:
    lines = reporting.table_head(
        "model",
        "λ",
        "runs",
        "test acc",
        "train acc",
        "BN-sharpness before",
        "BN-sharpness after",
        "ms per step",
    )
    weights = sorted(config.weights)
    for model, weight, chosen in reporting.setting_groups(rows, config.models, "weight", weights):
        lines.append(
            f"| {model.name} | {weight:g} | {len(chosen)} | "
            f"{reporting.spread([r['test_accuracy'] for r in chosen]).text(4)} | "
            f"{reporting.spread([r['train_accuracy'] for r in chosen]).text(4)} | "
            f"{reporting.spread([r['bn_sharpness_before'] for r in chosen]).text(3)} | "
            f"{reporting.spread([r['bn_sharpness'] for r in chosen]).text(3)} | "
            f"{reporting.spread([1000 * r['seconds_per_step'] for r in chosen]).text(3)} |"
        )
    return "\n".join(lines)


def _cost_markdown(found: Sequence[Pairing], records: StudyRecords) -> str:
    lines = []
    for pairing in found:
        costs = list(pairing.cost_ratios.values())
        if not costs:
            continue
        lines.append(
            f"* {pairing.model}, λ = {pairing.weight:g}: a step costs "
            f"×{reporting.geometric_mean(costs):.2f} the plain SGD step "
            "(geometric mean of the per-seed "
            f"ratios; range {min(costs):.2f}–{max(costs):.2f}, n = {len(costs)})."
        )
    sessions = records.study.get("sessions", []) or []
    threads = sorted({session.get("threads") for session in sessions})
    lines.append(
        "\nThe penalised step does two forward and backward passes (at w and at w + t v) "
        "and forms the direction v, so about ×2 is expected; the ratio is measured on the "
        f"study's own machine (torch threads {', '.join(map(str, threads))}), where other "
        "load moves both numbers."
    )
    return "\n".join(lines)


def _setup_markdown(records: StudyRecords) -> str:
    config: BNSharpnessConfig = records.config
    lines = [
        *reporting.data_lines(records),
        f"* **Seeds**: {', '.join(map(str, config.seeds))}; a seed initialises a network and "
        "orders its minibatches, the same for every λ.",
        f"* **Penalty**: λ ∈ {reporting.set_text(config.weights)} (0: plain SGD), "
        f"δ = {config.delta:g} "
        "(each block moves by at most δ times its norm).",
        "* **Models and training** (SGD with momentum, weight decay, learning rate "
        "lr/(1 + decay·t), t = steps; the same epochs for every λ):",
        "",
        *reporting.models_table(
            records,
            ["epochs", "batch", *reporting.SGD_COLUMNS],
            ((model, _training_cells(config.training_config(model, 0))) for model in config.models),
        ),
        "",
        "* **Measures**, before and after training, on "
        f"{reporting.examples_text(config.measure_examples, 'training examples')}:",
        *reporting.measure_lines(records),
        f"* **Time**: {reporting.timing_total(records, 'training') / 60:.1f} min training over the "
        f"{len(records.results)} finished runs; {reporting.per_run_text(records)} s per run.",
    ]
    return "\n".join(lines)


def _training_cells(training: TrainingConfig) -> list[Any]:
    """Epochs, batch size and SGD settings of a model's training."""
    return [training.epochs, training.batch_size, *reporting.sgd_cells(training)]


def _paper_markdown(config: BNSharpnessConfig, data: Mapping[str, Any]) -> str:
    paper = paper_preset()
    sizes = data.get("sizes") or {}
    settings = [
        (
            "data",
            "CIFAR-10, 50 000 / 10 000",
            f"{data.get('title', config.dataset)}, {sizes.get('train', '?')} / "
            f"{sizes.get('test', '?')}",
        ),
        ("networks", _networks(paper.models), _networks(config.models)),
        ("λ", reporting.set_text(paper.weights), reporting.set_text(config.weights)),
        ("δ", f"{paper.delta:g}", f"{config.delta:g}"),
        ("seeds", str(len(paper.seeds)), str(len(config.seeds))),
    ]
    rows = [
        (name, theirs, ours, reporting.verdict(theirs == ours)) for name, theirs, ours in settings
    ]
    rows += reporting.training_rows(
        config.training_config(config.models[0], 0),
        paper.training_config(paper.models[0], 0),
        ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_decay"),
    )
    lines = [
        "theory §5 reconstructs the method (the paper's text was not available to us) and "
        "states no protocol: every setting of `--preset paper` below is our assumption (the "
        "paper's own networks and schedule are not stated there). The penalty itself "
        "is our reading: blocks, direction v, t ~ U(0, δ) with v held fixed, and the "
        "combined gradient (1 − λ)∇L(w) + λ∇L(w + t v) derived in `minsharp.training.bn_penalty`.",
        "",
        *reporting.paper_table(rows, data, paper="paper preset (assumed)"),
    ]
    return "\n".join(lines)


def _networks(models: Sequence[ModelPlan]) -> str:
    return ", ".join(f"`{m.zoo}`{reporting.options_text(m.options)}" for m in models)


# --------------------------------------------------------------------------- figures

_COLOURS = ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red")


def _accuracy_figure(rows: Sequence[Mapping[str, Any]], config: BNSharpnessConfig) -> Any:
    figure = new_figure(9.0, 3.4 * len(config.models))
    weights = sorted(config.weights)
    for index, model in enumerate(config.models):
        paired = figure.add_subplot(len(config.models), 2, 2 * index + 1)
        curves = figure.add_subplot(len(config.models), 2, 2 * index + 2)
        chosen = reporting.select(rows, model=model.name)
        _paired_panel(paired, chosen, config.seeds, weights)
        _curves_panel(curves, chosen, weights)
        paired.set_xticks(range(len(weights)), [f"λ = {w:g}" for w in weights], fontsize=8)
        paired.set_ylabel("test accuracy", fontsize=8)
        paired.set_title(f"{model.name}: test accuracy per seed (◆ mean)", fontsize=9)
        curves.set_xlabel("epoch", fontsize=8)
        curves.set_title(f"{model.name}: mean test accuracy per epoch", fontsize=9)
        curves.legend(fontsize=7)
        for axis in (paired, curves):
            axis.tick_params(which="both", labelsize=7)
    return figure


def _paired_panel(
    axis: Any, rows: Sequence[Mapping[str, Any]], seeds: Sequence[int], weights: list[float]
) -> None:
    """Each seed's test accuracy per λ as a line, and the mean per λ as a diamond."""
    for seed in seeds:
        points = sorted(reporting.select(rows, seed=seed), key=lambda r: r["weight"])
        if points:
            axis.plot(
                [weights.index(r["weight"]) for r in points],
                [r["test_accuracy"] for r in points],
                "-",
                color="tab:gray",
                alpha=0.6,
                marker=MARKERS[0],
                markersize=4,
            )
    for position, weight in enumerate(weights):
        values = [r["test_accuracy"] for r in reporting.select(rows, weight=weight)]
        if values:
            axis.plot([position], [reporting.mean(values)], "D", color="black", markersize=7)


def _curves_panel(axis: Any, rows: Sequence[Mapping[str, Any]], weights: list[float]) -> None:
    """The mean test accuracy per epoch for each λ, with the range over seeds as a band."""
    for position, weight in enumerate(weights):
        curves = [r["test_curve"] for r in reporting.select(rows, weight=weight) if r["test_curve"]]
        if not curves:
            continue
        length = min(len(curve) for curve in curves)
        matrix = np.array([curve[:length] for curve in curves], dtype=float)
        epochs = np.arange(1, length + 1)
        colour = _COLOURS[position % len(_COLOURS)]
        axis.plot(epochs, matrix.mean(0), color=colour, label=f"λ = {weight:g}")
        axis.fill_between(epochs, matrix.min(0), matrix.max(0), color=colour, alpha=0.2)


def _sharpness_figure(rows: Sequence[Mapping[str, Any]], config: BNSharpnessConfig) -> Any:
    figure = new_figure(4.0 + 1.2 * len(config.weights), 3.4)
    axis = figure.add_subplot(1, 1, 1)
    labels, values = [], []
    weights = sorted(config.weights)
    for model, weight, chosen in reporting.setting_groups(rows, config.models, "weight", weights):
        position = len(labels)
        for offset, (key, colour, when) in enumerate(
            (("bn_sharpness_before", "tab:gray", "before"), ("bn_sharpness", "tab:blue", "after"))
        ):
            points = [r[key] for r in chosen if math.isfinite(r[key])]
            values += points
            axis.scatter(
                [position + 0.15 * (2 * offset - 1)] * len(points),
                points,
                color=colour,
                s=14,
                label=f"{when} training" if position == 0 else None,
            )
        labels.append(
            f"{model.name}\nλ = {ratio_label(weight)}"
            if len(config.models) > 1
            else f"λ = {weight:g}"
        )
    log_scale_if_wide(axis, values)
    axis.set_xticks(range(len(labels)), labels, fontsize=8)
    axis.set_ylabel(f"BN-sharpness (δ = {config.delta:g})", fontsize=8)
    axis.set_title("BN-sharpness before and after training, per seed", fontsize=9)
    axis.legend(fontsize=7)
    axis.tick_params(which="both", labelsize=7)
    return figure

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

from minsharp.io import write_text_atomic
from minsharp.study import base
from minsharp.study.base import RESULT_FILE, RUNS_DIR, StudyRecords
from minsharp.study.bn_sharpness import (
    BN_SHARPNESS,
    MEASURE_GROUPS,
    BNSharpnessConfig,
    paper_preset,
)
from minsharp.study.figures import MARKERS, log_scale_if_wide, new_figure, save_figure
from minsharp.study.presets import ratio_label
from minsharp.study.reporting import (
    CSV_FILE,
    FIGURES_DIR,
    REPORT_FILE,
    as_float,
    cell,
    csv_text,
    invariances_text,
    machine_markdown,
    mean,
    options_text,
    problems_markdown,
    report_time,
    setting_text,
    spread,
)

#: Coverage of the paired interval.
LEVEL = 0.95

HELD, NOT_SIGNIFICANT, NOT_HELD, UNDECIDED = (
    "held",
    "not significant",
    "did not hold",
    "undecided (fewer than two pairs)",
)


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
        average = mean(list(self.differences.values()))
        if average <= 0:
            return NOT_HELD
        return HELD if low > 0 else NOT_SIGNIFICANT


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    path: Path
    csv: Path
    figures: list[Path]
    pairings: list[Pairing]
    records: StudyRecords
    summary: str
    """A few plain lines for the terminal: the verdicts."""


def read_records(directory: str | Path) -> StudyRecords:
    """The BN-sharpness study in ``directory`` (:func:`minsharp.study.base.read_records`)."""
    return base.read_records(directory, BN_SHARPNESS)


def run_rows(records: StudyRecords) -> list[dict[str, Any]]:
    """One flat row per finished run: axes, accuracies, cost and every measure.

    Each measure appears after training (``<measure>``) and before (``<measure>_before``);
    ``nan`` where it failed.
    """
    rows = []
    for run, result in records.results.items():
        row: dict[str, Any] = {
            "run_id": run,
            "model": result["model"],
            "weight": result["weight"],
            "seed": result["seed"],
            "train_accuracy": result["train_accuracy"],
            "test_accuracy": result["test_accuracy"],
            "gap": as_float(result.get("gap")),
            "final_loss": as_float(result.get("final_loss")),
            "epochs_run": result.get("epochs_run"),
            "steps": result.get("steps"),
            "seconds_per_step": result["seconds_per_step"],
            "training_seconds": (result.get("timings") or {}).get("training"),
            "test_curve": (result.get("history") or {}).get("test_accuracy") or [],
        }
        errors = []
        for name in records.config.measures:
            for group, suffix in (("measures", ""), ("measures_before", "_before")):
                entry = result[group].get(name) or {"error": "missing"}
                row[name + suffix] = as_float(entry.get("value")) if "value" in entry else math.nan
                if "error" in entry:
                    errors.append(name + suffix)
        row["errors"] = ";".join(errors)
        rows.append(row)
    return rows


def pairings(rows: Sequence[Mapping[str, Any]], config: BNSharpnessConfig) -> list[Pairing]:
    """Each λ > 0 against λ = 0, per model, over the seeds where both runs finished."""
    found = []
    for model in config.models:
        baseline = {r["seed"]: r for r in rows if r["model"] == model.name and r["weight"] == 0.0}
        for weight in sorted(w for w in config.weights if w > 0):
            treated = {
                r["seed"]: r for r in rows if r["model"] == model.name and r["weight"] == weight
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
        top, bottom = as_float(treated[seed].get(key)), as_float(baseline[seed].get(key))
        if math.isfinite(top) and math.isfinite(bottom) and bottom > 0:
            found[seed] = top / bottom
    return found


def write_report(directory: str | Path) -> Report:
    """Write ``report.md``, the figures and ``runs.csv`` of the BN study in ``directory``.

    Raises:
        StudyError: not a BN-sharpness study directory.
    """
    records = read_records(directory)
    directory = records.directory
    config: BNSharpnessConfig = records.config
    rows = run_rows(records)
    found = pairings(rows, config)
    columns = [
        "run_id",
        "model",
        "weight",
        "seed",
        "train_accuracy",
        "test_accuracy",
        "gap",
        "final_loss",
        "epochs_run",
        "steps",
        "seconds_per_step",
        "training_seconds",
        *[name + suffix for name in config.measures for suffix in ("_before", "")],
        "errors",
    ]
    csv_path = directory / CSV_FILE
    write_text_atomic(csv_path, csv_text(rows, columns))
    figures_dir = directory / FIGURES_DIR
    figures_dir.mkdir(exist_ok=True)
    figures = (
        [
            save_figure(_accuracy_figure(rows, config), figures_dir / "test_accuracy.png"),
            save_figure(_sharpness_figure(rows, config), figures_dir / "bn_sharpness.png"),
        ]
        if rows
        else []
    )
    verdicts = [_verdict_line(pairing) for pairing in found if pairing.differences]
    path = directory / REPORT_FILE
    write_text_atomic(path, _markdown(records, rows, found, verdicts))
    summary = "\n".join(verdicts) if verdicts else "No complete pair of runs yet."
    return Report(path, csv_path, figures, found, records, summary)


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
        f"; cost per step ×{_geometric(costs):.2f} ({min(costs):.2f}–{max(costs):.2f})"
        if costs
        else ""
    )
    sharp = list(pairing.sharpness_ratios.values())
    sharpness = (
        f"; BN-sharpness after training ×{_geometric(sharp):.3g} of plain SGD's" if sharp else ""
    )
    return (
        f"{pairing.model}, λ = {pairing.weight:g}: {pairing.verdict} — test accuracy "
        f"{mean(values) * 100:+.2f} points over plain SGD (paired over {len(values)} "
        f"seed{'' if len(values) == 1 else 's'}"
        f"{interval}; better on {better} of {len(values)}){cost}{sharpness}."
    )


def _geometric(values: Sequence[float]) -> float:
    positive = [value for value in values if value > 0]
    return math.exp(float(np.mean(np.log(positive)))) if positive else math.nan


def _markdown(
    records: StudyRecords,
    rows: list[dict[str, Any]],
    found: list[Pairing],
    verdicts: list[str],
) -> str:
    config: BNSharpnessConfig = records.config
    study = records.study
    planned = len(study.get("runs", []))
    out: list[str] = []
    add = out.append
    add(f"# BN-sharpness training vs plain SGD — preset `{config.preset}`\n")
    add(
        "Does minimising L + λ·S_BN, the BN-sharpness penalty of Yi et al. (2019; our "
        "reconstruction, MATH §5), give better test accuracy than plain SGD? Networks with "
        "batch-norm are trained from the same initial weights and minibatch order, with and "
        "without the penalty, for the same epochs; each step of the penalised training "
        "follows ĝ = (1 − λ)∇L(w) + λ∇L(w + t v), t ~ U(0, δ), v the BN-sharpness direction "
        "held fixed (`minsharp.bn_training`).\n"
    )
    add(
        f"Written {report_time()} from {len(rows)} finished of {planned} planned runs in "
        f"`{records.directory}`."
        + (
            " **The study is not finished**: rerun the same command to complete it."
            if len(rows) < planned
            else ""
        )
        + "\n"
    )
    add("## Verdict\n")
    decided = [p for p in found if p.verdict != UNDECIDED]
    if decided:
        held = all(p.verdict == HELD for p in decided)
        add(
            "**The paper's claim (the penalty improves test accuracy over plain SGD) "
            + ("held" if held else "did not hold")
            + f"** on this run, judged by the paired difference and its {LEVEL * 100:g} % "
            "Student-t interval:\n"
        )
        add("\n".join(f"* {line}" for line in verdicts) + "\n")
    else:
        add("Fewer than two complete pairs of runs: nothing to compare yet.\n")
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
    add(problems_markdown(records, MEASURE_GROUPS, left_out="the comparisons for these runs"))
    add("## What was run\n")
    add(_setup_markdown(records) + "\n")
    add("## How this run differs from the paper\n")
    add(_paper_markdown(config, study.get("data", {}) or {}) + "\n")
    add("## Machine and versions\n")
    add(machine_markdown(study) + "\n")
    add("## Files\n")
    add(
        f"* `{CSV_FILE}`: one row per finished run (accuracies, time per step, each measure "
        "before and after training).\n"
        f"* `{RUNS_DIR}/<run-id>/{RESULT_FILE}`: everything about one run (training history "
        "per epoch with the time of the steps, every measure's value, options and details); "
        "`checkpoint/` holds the trained network.\n"
        "* `study.json`: the configuration, the data record, the planned runs and every "
        "session.\n"
        f"* Regenerate this report with `minsharp report {records.directory}`.\n"
    )
    return "\n".join(out)


def _results_table(rows: Sequence[Mapping[str, Any]], config: BNSharpnessConfig) -> str:
    lines = [
        "| model | λ | runs | test acc | train acc | BN-sharpness before | BN-sharpness after "
        "| ms per step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in config.models:
        for weight in sorted(config.weights):
            chosen = [r for r in rows if r["model"] == model.name and r["weight"] == weight]
            if not chosen:
                continue
            lines.append(
                f"| {model.name} | {weight:g} | {len(chosen)} | "
                f"{spread([r['test_accuracy'] for r in chosen]).text(4)} | "
                f"{spread([r['train_accuracy'] for r in chosen]).text(4)} | "
                f"{spread([r['bn_sharpness_before'] for r in chosen]).text(3)} | "
                f"{spread([r['bn_sharpness'] for r in chosen]).text(3)} | "
                f"{spread([1000 * r['seconds_per_step'] for r in chosen]).text(3)} |"
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
            f"×{_geometric(costs):.2f} the plain SGD step (geometric mean of the per-seed "
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
    data = records.study.get("data", {}) or {}
    lines = [f"* **Data**: {data.get('summary', config.dataset)}"]
    if data.get("split_kind") not in (None, "official"):
        lines.append(
            f"* **Split note**: {data.get('split')}. The test part is therefore held out from "
            "the same files as the training part, not the official test set."
        )
    lines += [
        f"* **Seeds**: {', '.join(map(str, config.seeds))}; a seed initialises a network and "
        "orders its minibatches, the same for every λ.",
        f"* **Penalty**: λ ∈ {{{', '.join(f'{w:g}' for w in config.weights)}}} (0: plain "
        f"SGD), δ = {config.delta:g} (each block moves by at most δ times its norm).",
        "* **Models and training** (SGD with momentum, weight decay, learning rate "
        "lr/(1 + decay·t), t = steps; the same epochs for every λ):",
        "",
        "  | model | network | parameters | epochs | batch | lr | momentum | weight decay | "
        "lr decay |",
        "  | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    parameters = {r["model"]: r.get("parameters") for r in records.results.values()}
    for model in config.models:
        training = config.training_config(model, 0)
        lines.append(
            f"  | {model.name} | `{model.zoo}`{options_text(model.options)} | "
            f"{parameters.get(model.name, '?')} | {training.epochs} | {training.batch_size} | "
            f"{training.lr:g} | {training.momentum:g} | {training.weight_decay:g} | "
            f"{training.lr_decay:g} |"
        )
    examples = (
        "all training examples"
        if config.measure_examples is None
        else f"the first {config.measure_examples} training examples"
    )
    lines += ["", f"* **Measures**, before and after training, on {examples}:"]
    options = config.effective_measure_options()
    for name in config.measures:
        lines.append(
            f"  * `{name}`{options_text(options.get(name, {}))}: invariant to "
            f"{invariances_text(name)}"
        )
    training_time = sum(
        (r.get("timings") or {}).get("training", 0) for r in records.results.values()
    )
    per_run = [(r.get("timings") or {}).get("total") for r in records.results.values()]
    lines.append(
        f"* **Time**: {training_time / 60:.1f} min training over the {len(records.results)} "
        f"finished runs; {spread(per_run).text(3)} s per run."
    )
    return "\n".join(lines)


def _paper_markdown(config: BNSharpnessConfig, data: Mapping[str, Any]) -> str:
    paper = paper_preset()
    sizes = data.get("sizes") or {}
    rows = [
        (
            "data",
            "CIFAR-10, 50 000 / 10 000",
            f"{data.get('title', config.dataset)}, {sizes.get('train', '?')} / "
            f"{sizes.get('test', '?')}",
        ),
        (
            "networks",
            ", ".join(f"`{m.zoo}`{options_text(m.options)}" for m in paper.models),
            ", ".join(f"`{m.zoo}`{options_text(m.options)}" for m in config.models),
        ),
        ("λ", _numbers(paper.weights), _numbers(config.weights)),
        ("δ", f"{paper.delta:g}", f"{config.delta:g}"),
        ("seeds", str(len(paper.seeds)), str(len(config.seeds))),
    ]
    ours, theirs = (
        config.training_config(config.models[0], 0),
        paper.training_config(paper.models[0], 0),
    )
    for key in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_decay"):
        rows.append(
            (
                key.replace("_", " "),
                setting_text(getattr(theirs, key)),
                setting_text(getattr(ours, key)),
            )
        )
    lines = [
        "MATH §5 reconstructs the method (the paper's text was not available to us) and "
        "states no protocol: every setting of `--preset paper` below is our assumption (the "
        "paper's own networks and schedule are not stated there). The penalty itself "
        "is our reading: blocks, direction v, t ~ U(0, δ) with v held fixed, and the "
        "combined gradient (1 − λ)∇L(w) + λ∇L(w + t v) derived in `minsharp.bn_training`.",
        "",
        "| setting | paper preset (assumed) | this study | |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {name} | {cell(theirs_)} | {cell(ours_)} | "
        f"{'same' if theirs_ == ours_ else '**differs**'} |"
        for name, theirs_, ours_ in rows
    ]
    if data.get("split_kind") not in (None, "official"):
        lines += ["", f"Data split: {data.get('split')}."]
    return "\n".join(lines)


def _numbers(values: Sequence[float]) -> str:
    return "{" + ", ".join(f"{value:g}" for value in values) + "}"


# --------------------------------------------------------------------------- figures

_COLOURS = ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red")


def _accuracy_figure(rows: Sequence[Mapping[str, Any]], config: BNSharpnessConfig) -> Any:
    figure = new_figure(9.0, 3.4 * len(config.models))
    weights = sorted(config.weights)
    for index, model in enumerate(config.models):
        paired = figure.add_subplot(len(config.models), 2, 2 * index + 1)
        curves = figure.add_subplot(len(config.models), 2, 2 * index + 2)
        chosen = [r for r in rows if r["model"] == model.name]
        for seed in config.seeds:
            points = sorted((r for r in chosen if r["seed"] == seed), key=lambda r: r["weight"])
            if points:
                paired.plot(
                    [weights.index(r["weight"]) for r in points],
                    [r["test_accuracy"] for r in points],
                    "-",
                    color="tab:gray",
                    alpha=0.6,
                    marker=MARKERS[0],
                    markersize=4,
                )
        for position, weight in enumerate(weights):
            values = [r["test_accuracy"] for r in chosen if r["weight"] == weight]
            if values:
                paired.plot([position], [mean(values)], "D", color="black", markersize=7)
            curves_of = [
                r["test_curve"] for r in chosen if r["weight"] == weight and r["test_curve"]
            ]
            if curves_of:
                length = min(len(curve) for curve in curves_of)
                matrix = np.array([curve[:length] for curve in curves_of], dtype=float)
                epochs = np.arange(1, length + 1)
                colour = _COLOURS[position % len(_COLOURS)]
                curves.plot(epochs, matrix.mean(0), color=colour, label=f"λ = {weight:g}")
                curves.fill_between(epochs, matrix.min(0), matrix.max(0), color=colour, alpha=0.2)
        paired.set_xticks(range(len(weights)), [f"λ = {w:g}" for w in weights], fontsize=8)
        paired.set_ylabel("test accuracy", fontsize=8)
        paired.set_title(f"{model.name}: test accuracy per seed (◆ mean)", fontsize=9)
        curves.set_xlabel("epoch", fontsize=8)
        curves.set_title(f"{model.name}: mean test accuracy per epoch", fontsize=9)
        curves.legend(fontsize=7)
        for axis in (paired, curves):
            axis.tick_params(which="both", labelsize=7)
    return figure


def _sharpness_figure(rows: Sequence[Mapping[str, Any]], config: BNSharpnessConfig) -> Any:
    figure = new_figure(4.0 + 1.2 * len(config.weights), 3.4)
    axis = figure.add_subplot(1, 1, 1)
    weights = sorted(config.weights)
    labels, values = [], []
    position = 0
    for model in config.models:
        for weight in weights:
            chosen = [r for r in rows if r["model"] == model.name and r["weight"] == weight]
            if not chosen:
                continue
            for offset, (key, colour) in enumerate(
                (("bn_sharpness_before", "tab:gray"), ("bn_sharpness", "tab:blue"))
            ):
                points = [r[key] for r in chosen if math.isfinite(r[key])]
                values += points
                axis.scatter(
                    [position + 0.15 * (2 * offset - 1)] * len(points),
                    points,
                    color=colour,
                    s=14,
                    label=("before training" if offset == 0 else "after training")
                    if position == 0
                    else None,
                )
            labels.append(
                f"{model.name}\nλ = {ratio_label(weight)}"
                if len(config.models) > 1
                else f"λ = {weight:g}"
            )
            position += 1
    log_scale_if_wide(axis, values)
    axis.set_xticks(range(len(labels)), labels, fontsize=8)
    axis.set_ylabel(f"BN-sharpness (δ = {config.delta:g})", fontsize=8)
    axis.set_title("BN-sharpness before and after training, per seed", fontsize=9)
    axis.legend(fontsize=7)
    axis.tick_params(which="both", labelsize=7)
    return figure

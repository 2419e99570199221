"""The report of a batch-size study: ``DIR/report.md``, ``DIR/figures/`` and ``DIR/runs.csv``.

For each model the smallest batch size (SB) is compared with the largest (LB), paired by
seed (both networks of a pair start from the same weights). Per measure the report gives the
mean ± sample standard deviation over seeds of each, the paired ratio LB/SB (geometric mean
and range) and on how many seeds LB came out sharper. The claim of Rangamani et al. (2019),
*large-batch minima are sharper under the invariant measure*, is judged on
``quotient_flatness`` (their measure; Minimum Sharpness and normalized sharpness alongside):

* **held** — LB above SB on every seed;
* **held on average only** — the geometric-mean ratio is above 1, but not on every seed;
* **did not hold** — otherwise.

The rescaled copies show which measures move under a function-preserving layer rescaling:
the relative change ``|m(T_α θ) / m(θ) − 1|`` per measure, largest and median over networks,
against :data:`MOVES`.

Figures: ``figures/batch_size.png`` (each measure and the test accuracy against the batch
size, one line per seed, rescaled copies as open markers) and ``figures/rescaling.png`` (the
largest relative change of each measure under rescaling).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minsharp.io import write_text_atomic
from minsharp.study import base
from minsharp.study.base import RESULT_FILE, RUNS_DIR, StudyRecords
from minsharp.study.batch_size import (
    BATCH_SIZE,
    MEASURE_GROUPS,
    BatchSizeConfig,
    paper_preset,
)
from minsharp.study.figures import MARKERS, log_scale_if_wide, new_figure, save_figure
from minsharp.study.reporting import (
    CSV_FILE,
    FIGURES_DIR,
    REPORT_FILE,
    as_float,
    cell,
    csv_text,
    declared_invariances,
    invariances_text,
    machine_markdown,
    mean,
    options_text,
    problems_markdown,
    report_time,
    setting_text,
    spread,
)

#: A measure whose relative change under the rescaling stays at or below this is "unmoved".
MOVES = 1e-2

#: The measure the paper's claim is about, and the other invariant ones reported with it.
CLAIM_MEASURE = "quotient_flatness"
INVARIANT_MEASURES = ("quotient_flatness", "minimum_sharpness", "normalized_sharpness")

HELD, ON_AVERAGE, NOT_HELD, UNDECIDED = (
    "held",
    "held on average only",
    "did not hold",
    "undecided (no complete pair)",
)


@dataclass(frozen=True)
class Comparison:
    """SB against LB for one model and one measure (or accuracy), paired by seed.

    Attributes:
        model: the model's name.
        quantity: a measure name, ``"test_accuracy"``, ``"train_accuracy"`` or ``"gap"``.
        small: the SB values by seed.
        large: the LB values by seed.
        ratios: LB/SB per seed with both values positive and finite.
        differences: LB − SB per seed with both values finite.
    """

    model: str
    quantity: str
    small: dict[int, float]
    large: dict[int, float]
    ratios: dict[int, float]
    differences: dict[int, float]

    @property
    def geometric_ratio(self) -> float:
        """Geometric mean of the ratios LB/SB (``nan`` without pairs)."""
        values = list(self.ratios.values())
        return math.exp(float(np.mean(np.log(values)))) if values else math.nan

    @property
    def larger(self) -> int:
        """Seeds on which LB exceeds SB."""
        return sum(value > 0 for value in self.differences.values())

    @property
    def verdict(self) -> str:
        """:data:`HELD`, :data:`ON_AVERAGE` or :data:`NOT_HELD` for "LB is sharper"."""
        if not self.differences:
            return UNDECIDED
        if self.larger == len(self.differences):
            return HELD
        if self.geometric_ratio > 1:
            return ON_AVERAGE
        return NOT_HELD


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    path: Path
    csv: Path
    figures: list[Path]
    comparisons: list[Comparison]
    records: StudyRecords
    summary: str
    """A few plain lines for the terminal: the verdicts."""


def read_records(directory: str | Path) -> StudyRecords:
    """The batch-size study in ``directory`` (:func:`minsharp.study.base.read_records`)."""
    return base.read_records(directory, BATCH_SIZE)


def run_rows(records: StudyRecords) -> list[dict[str, Any]]:
    """One flat row per finished run: axes, accuracies, timings and the measures.

    Each measure appears on the network (``<measure>``), on its rescaled copy
    (``<measure>_rescaled``) and as the relative change (``<measure>_change`` =
    rescaled/original − 1); ``nan`` where a measure failed.
    """
    rows = []
    for run, result in records.results.items():
        timings = result.get("timings", {}) or {}
        row: dict[str, Any] = {
            "run_id": run,
            "model": result["model"],
            "batch_size": result["batch_size"],
            "seed": result["seed"],
            "train_accuracy": result["train_accuracy"],
            "test_accuracy": result["test_accuracy"],
            "gap": result["gap"],
            "final_loss": as_float(result.get("final_loss")),
            "epochs_run": result.get("epochs_run"),
            "steps": result.get("steps"),
            "reached_target": result.get("reached_target"),
            "function_deviation": as_float(
                (result.get("rescaling") or {}).get("function_deviation")
            ),
            "training_seconds": timings.get("training"),
            "measure_seconds": as_float(timings.get("measures"))
            + as_float(timings.get("rescaled_measures")),
        }
        errors = []
        for name in records.config.measures:
            original = _value(result["measures"].get(name))
            rescaled = _value(result["rescaled_measures"].get(name))
            row[name] = original
            row[f"{name}_rescaled"] = rescaled
            row[f"{name}_change"] = rescaled / original - 1 if original != 0 else math.nan
            errors += [
                f"{name} ({group})"
                for group in MEASURE_GROUPS
                if "error" in (result[group].get(name) or {"error": "missing"})
            ]
        row["errors"] = ";".join(errors)
        rows.append(row)
    return rows


def _value(entry: Mapping[str, Any] | None) -> float:
    return as_float(entry.get("value")) if entry and "value" in entry else math.nan


def compare(
    rows: Sequence[Mapping[str, Any]], config: BatchSizeConfig, quantity: str
) -> list[Comparison]:
    """SB (smallest batch) against LB (largest) for ``quantity``, one per model with runs."""
    small, large = min(config.batch_sizes), max(config.batch_sizes)
    found = []
    for model in config.models:
        values = {
            size: {
                r["seed"]: r[quantity]
                for r in rows
                if r["model"] == model.name and r["batch_size"] == size
            }
            for size in (small, large)
        }
        if not values[small] and not values[large]:
            continue
        pairs = [
            seed
            for seed in values[small]
            if seed in values[large]
            and math.isfinite(values[small][seed])
            and math.isfinite(values[large][seed])
        ]
        found.append(
            Comparison(
                model=model.name,
                quantity=quantity,
                small=values[small],
                large=values[large],
                ratios={
                    seed: values[large][seed] / values[small][seed]
                    for seed in pairs
                    if values[small][seed] > 0 and values[large][seed] > 0
                },
                differences={seed: values[large][seed] - values[small][seed] for seed in pairs},
            )
        )
    return found


def write_report(directory: str | Path) -> Report:
    """Write ``report.md``, the figures and ``runs.csv`` of the batch-size study in ``directory``.

    Raises:
        StudyError: not a batch-size study directory.
    """
    records = read_records(directory)
    directory = records.directory
    config: BatchSizeConfig = records.config
    rows = run_rows(records)
    comparisons = [
        comparison
        for quantity in [*config.measures, "test_accuracy", "train_accuracy", "gap"]
        for comparison in compare(rows, config, quantity)
    ]
    columns = [
        "run_id",
        "model",
        "batch_size",
        "seed",
        "train_accuracy",
        "test_accuracy",
        "gap",
        "final_loss",
        "epochs_run",
        "steps",
        "reached_target",
        "function_deviation",
        "training_seconds",
        "measure_seconds",
        *[f"{name}{suffix}" for name in config.measures for suffix in ("", "_rescaled", "_change")],
        "errors",
    ]
    csv_path = directory / CSV_FILE
    write_text_atomic(csv_path, csv_text(rows, columns))
    figures_dir = directory / FIGURES_DIR
    figures_dir.mkdir(exist_ok=True)
    figures = (
        [
            save_figure(_values_figure(rows, config), figures_dir / "batch_size.png"),
            save_figure(_rescaling_figure(rows, config), figures_dir / "rescaling.png"),
        ]
        if rows
        else []
    )
    verdicts = _verdict_lines(comparisons, config)
    text = _markdown(records, rows, comparisons, verdicts)
    path = directory / REPORT_FILE
    write_text_atomic(path, text)
    summary = "\n".join(verdicts) if verdicts else "No complete SB/LB pair yet."
    return Report(path, csv_path, figures, comparisons, records, summary)


# --------------------------------------------------------------------------- markdown


def _verdict_lines(comparisons: Sequence[Comparison], config: BatchSizeConfig) -> list[str]:
    """One plain sentence per model and invariant measure on the paper's claim."""
    small, large = min(config.batch_sizes), max(config.batch_sizes)
    lines = []
    for comparison in comparisons:
        if comparison.quantity not in INVARIANT_MEASURES or not comparison.differences:
            continue
        ratios = list(comparison.ratios.values())
        extent = f", range {min(ratios):.3g}–{max(ratios):.3g}" if len(ratios) > 1 else ""
        lines.append(
            f"{comparison.model}, {comparison.quantity}: {comparison.verdict} — LB ({large}) "
            f"above SB ({small}) on {comparison.larger} of {len(comparison.differences)} seeds; "
            f"LB/SB geometric-mean ratio {comparison.geometric_ratio:.3g}{extent}; "
            f"SB {spread(list(comparison.small.values())).text(3)}, "
            f"LB {spread(list(comparison.large.values())).text(3)}."
        )
    return lines


def _markdown(
    records: StudyRecords,
    rows: list[dict[str, Any]],
    comparisons: list[Comparison],
    verdicts: list[str],
) -> str:
    config: BatchSizeConfig = records.config
    study = records.study
    planned = len(study.get("runs", []))
    small, large = min(config.batch_sizes), max(config.batch_sizes)
    out: list[str] = []
    add = out.append
    add(f"# Large- vs small-batch minima — preset `{config.preset}`\n")
    add(
        "Are large-batch SGD minima sharper than small-batch ones once sharpness is measured "
        "invariantly? Rangamani et al. (2019) answer yes with their quotient-manifold measure "
        "λ_max(D H D), D = blockdiag(‖P‖_F I) (MATH §4). Here matched networks (same "
        f"initial weights per seed) are trained with batch size {small} (SB) and {large} (LB) "
        "and measured; a randomly α-rescaled copy of each network (the same function) is "
        "measured too, to show which measures are invariant.\n"
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
    claim = [c for c in comparisons if c.quantity == CLAIM_MEASURE and c.differences]
    if claim:
        held = all(c.verdict == HELD for c in claim)
        add(
            "**The paper's claim (large-batch minima are sharper under the invariant measure "
            f"`{CLAIM_MEASURE}`) {'held' if held else 'did not hold in full'}** on this run"
            + ("" if held else "; per model:")
            + "\n"
        )
        add("\n".join(f"* {line}" for line in verdicts) + "\n")
        missed = [r["run_id"] for r in rows if r["reached_target"] is False]
        if missed:
            add(
                f"**{len(missed)} of {len(rows)} networks did not reach the target training "
                f"accuracy** ({', '.join(missed[:8])}{', …' if len(missed) > 8 else ''}): "
                "their minima are not matched to the others'; give them more epochs.\n"
            )
        add(_accuracy_lead(comparisons, small, large) + "\n")
    else:
        add("No complete SB/LB pair has finished yet: nothing to compare.\n")
    if rows:
        add("## Measures, small vs large batch\n")
        add(_measure_table(comparisons, config) + "\n")
        add(
            "Values: mean ± sample standard deviation over seeds (range, count). LB/SB: the "
            "geometric mean of the per-seed ratios, with their range. The last column counts "
            "the seeds on which LB is above SB.\n"
        )
        add("![measures against the batch size](figures/batch_size.png)\n")
        add("Each line is one seed (filled: the trained network; open: its rescaled copy).\n")
        add("## Accuracy\n")
        add(_accuracy_table(rows, config) + "\n")
        add("## Which measures move under a layer rescaling\n")
        add(_rescaling_markdown(rows, config) + "\n")
        add("![relative change under rescaling](figures/rescaling.png)\n")
    add(problems_markdown(records, MEASURE_GROUPS, left_out="the comparisons for these runs"))
    add("## What was run\n")
    add(_setup_markdown(records) + "\n")
    add("## How this run differs from the paper\n")
    add(_paper_markdown(config, study.get("data", {}) or {}) + "\n")
    add("## Machine and versions\n")
    add(machine_markdown(study) + "\n")
    add("## Files\n")
    add(
        f"* `{CSV_FILE}`: one row per finished run (accuracies, epochs, steps, timings, each "
        "measure on the network, on its rescaled copy and the relative change).\n"
        f"* `{RUNS_DIR}/<run-id>/{RESULT_FILE}`: everything about one run (training history, "
        "the rescaling's α per layer and the function check, every measure's value, options, "
        "certificate and time); `checkpoint/` holds the trained network.\n"
        "* `study.json`: the configuration, the data record, the planned runs and every "
        "session.\n"
        f"* Regenerate this report with `minsharp report {records.directory}`.\n"
    )
    return "\n".join(out)


def _accuracy_lead(comparisons: Sequence[Comparison], small: int, large: int) -> str:
    lines = []
    for comparison in comparisons:
        if comparison.quantity != "test_accuracy" or not comparison.differences:
            continue
        gaps = [0.0 - value for value in comparison.differences.values()]  # SB − LB
        lines.append(
            f"{comparison.model}: test accuracy SB − LB = {spread(gaps).text(3)} "
            f"(SB higher on {sum(g > 0 for g in gaps)} of {len(gaps)} seeds)"
        )
    if not lines:
        return ""
    return (
        f"Test-accuracy gap between batch sizes {small} and {large} (Keskar et al.'s "
        "generalization gap): " + "; ".join(lines) + "."
    )


def _measure_table(comparisons: Sequence[Comparison], config: BatchSizeConfig) -> str:
    small, large = min(config.batch_sizes), max(config.batch_sizes)
    lines = [
        f"| model | measure | invariant to | SB ({small}) | LB ({large}) | LB/SB | LB > SB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for comparison in comparisons:
        if comparison.quantity not in config.measures:
            continue
        ratios = list(comparison.ratios.values())
        ratio = (
            f"{comparison.geometric_ratio:.3g} ({min(ratios):.3g}–{max(ratios):.3g})"
            if ratios
            else "—"
        )
        lines.append(
            f"| {comparison.model} | `{comparison.quantity}` | "
            f"{invariances_text(comparison.quantity)} | "
            f"{spread(list(comparison.small.values())).text(3)} | "
            f"{spread(list(comparison.large.values())).text(3)} | {ratio} | "
            f"{comparison.larger}/{len(comparison.differences)} |"
        )
    return "\n".join(lines)


def _accuracy_table(rows: Sequence[Mapping[str, Any]], config: BatchSizeConfig) -> str:
    lines = [
        "| model | batch | runs | train acc | test acc | gap (train − test) | epochs | steps | "
        "reached target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in config.models:
        for size in sorted(config.batch_sizes):
            chosen = [r for r in rows if r["model"] == model.name and r["batch_size"] == size]
            if not chosen:
                continue
            reached = sum(bool(r["reached_target"]) for r in chosen)
            lines.append(
                f"| {model.name} | {size} | {len(chosen)} | "
                f"{spread([r['train_accuracy'] for r in chosen]).text(3)} | "
                f"{spread([r['test_accuracy'] for r in chosen]).text(3)} | "
                f"{spread([r['gap'] for r in chosen]).text(3)} | "
                f"{spread([r['epochs_run'] for r in chosen]).text(3)} | "
                f"{spread([r['steps'] for r in chosen]).text(3)} | {reached}/{len(chosen)} |"
            )
    return "\n".join(lines)


def _rescaling_markdown(rows: Sequence[Mapping[str, Any]], config: BatchSizeConfig) -> str:
    deviations = [r["function_deviation"] for r in rows if math.isfinite(r["function_deviation"])]
    lines = [
        f"Each trained network was copied with `W_l → α_l W_l`, `Π α_l = 1`, α_l drawn "
        f"log-uniformly in [1/{config.rescale_spread:g}, {config.rescale_spread:g}] and "
        "normalised (seeded per run; the α are in each `result.json`). "
        + (
            f"The copies compute the same function: the largest relative change of the "
            f"logits over the measured inputs is {max(deviations):.2g}."
            if deviations
            else ""
        ),
        "",
        "| measure | declared invariant to | largest relative change | median | moves? |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in config.measures:
        changes = [abs(r[f"{name}_change"]) for r in rows if math.isfinite(r[f"{name}_change"])]
        if not changes:
            lines.append(f"| `{name}` | {invariances_text(name)} | — | — | — |")
            continue
        largest = max(changes)
        lines.append(
            f"| `{name}` | {invariances_text(name)} | {largest:.2g} | "
            f"{float(np.median(changes)):.2g} | "
            + ("**yes**" if largest > MOVES else f"no (≤ {MOVES:g})")
            + " |"
        )
    lines += [
        "",
        "Relative change: |m(rescaled) / m(network) − 1|. The Lanczos measures (`quotient_"
        "flatness`, `top_eigenvalue`) are converged to a relative residual of their "
        "`tolerance` only, so their invariant values agree to about that.",
    ]
    return "\n".join(lines)


def _setup_markdown(records: StudyRecords) -> str:
    config: BatchSizeConfig = records.config
    data = records.study.get("data", {}) or {}
    lines = [f"* **Data**: {data.get('summary', config.dataset)}"]
    if data.get("split_kind") not in (None, "official"):
        lines.append(
            f"* **Split note**: {data.get('split')}. The test part is therefore held out from "
            "the same files as the training part, not the official test set."
        )
    lines += [
        f"* **Seeds**: {', '.join(map(str, config.seeds))}; a seed initialises a network "
        "(the same weights for every batch size) and orders its minibatches.",
        "* **Models and training** (SGD with momentum; learning rate lr/(1 + decay·t); "
        "training stops at the target training accuracy or after the epochs):",
        "",
        "  | model | network | parameters | batch | epochs (at most) | lr | momentum | "
        "weight decay | lr decay | target train accuracy |",
        "  | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    parameters = {r["model"]: r.get("parameters") for r in records.results.values()}
    for model in config.models:
        for size in sorted(config.batch_sizes):
            training = config.training_config(model, 0, size)
            lines.append(
                f"  | {model.name} | `{model.zoo}`{options_text(model.options)} | "
                f"{parameters.get(model.name, '?')} | {size} | {training.epochs} | "
                f"{training.lr:g} | {training.momentum:g} | {training.weight_decay:g} | "
                f"{training.lr_decay:g} | {setting_text(training.target_train_accuracy)} |"
            )
    examples = (
        "all training examples"
        if config.measure_examples is None
        else f"the first {config.measure_examples} training examples"
    )
    lines += ["", f"* **Measures**, after training, on {examples} with their labels:"]
    for name in config.measures:
        seconds = [
            entry["seconds"]
            for result in records.results.values()
            if isinstance(entry := result["measures"].get(name), dict) and "seconds" in entry
        ]
        lines.append(
            f"  * `{name}`{options_text(config.measure_options.get(name, {}))}: invariant to "
            f"{invariances_text(name)}"
            + (f"; {mean(seconds):.2f} s per network on average" if seconds else "")
        )
    total = {
        key: sum((r.get("timings") or {}).get(key, 0) for r in records.results.values())
        for key in ("training", "measures", "rescaled_measures", "total")
    }
    per_run = [(r.get("timings") or {}).get("total") for r in records.results.values()]
    lines.append(
        f"* **Time**: {total['training'] / 60:.1f} min training, "
        f"{(total['measures'] + total['rescaled_measures']) / 60:.1f} min measuring "
        f"(networks and copies) over the {len(records.results)} finished runs; "
        f"{spread(per_run).text(3)} s per run."
    )
    return "\n".join(lines)


def _paper_markdown(config: BatchSizeConfig, data: Mapping[str, Any]) -> str:
    paper = paper_preset()
    official = data.get("split_kind") == "official" and not data.get("subsampled", True)
    sizes = data.get("sizes") or {}
    rows: list[tuple[str, str, str, bool]] = [
        (
            "data (MATH §4)",
            "MNIST, 60 000 train / 10 000 test",
            f"{data.get('title', config.dataset)}, {sizes.get('train', '?')} train / "
            f"{sizes.get('test', '?')} test ({data.get('split_kind', '?')})",
            config.dataset == "mnist" and official,
        ),
        (
            "networks (MATH §4)",
            "MLP 784-512×5-10 and LeNet, without biases",
            ", ".join(f"`{m.zoo}`{options_text(m.options)}" for m in config.models),
            sorted((m.zoo, sorted(m.options.items())) for m in config.models)
            == sorted((m.zoo, sorted(m.options.items())) for m in paper.models),
        ),
        (
            "measure (MATH §4)",
            "λ_max(D H D) on the full training set",
            "`quotient_flatness` on "
            + (
                "all training examples"
                if config.measure_examples is None
                else f"the first {config.measure_examples}"
            ),
            "quotient_flatness" in config.measures and config.measure_examples is None,
        ),
        (
            "batch sizes (assumed: Keskar et al.)",
            " vs ".join(map(str, paper.batch_sizes)),
            " vs ".join(map(str, sorted(config.batch_sizes))),
            sorted(config.batch_sizes) == sorted(paper.batch_sizes),
        ),
        (
            "seeds (assumed)",
            str(len(paper.seeds)),
            str(len(config.seeds)),
            len(config.seeds) == len(paper.seeds),
        ),
    ]
    by_zoo = {model.zoo: model for model in paper.models}
    for model in config.models:
        analogue = by_zoo.get(model.zoo)
        if analogue is None:
            continue
        ours = config.training_config(model, 0).as_dict()
        theirs = paper.training_config(analogue, 0).as_dict()
        for key in (
            "epochs",
            "lr",
            "momentum",
            "weight_decay",
            "lr_decay",
            "target_train_accuracy",
        ):
            rows.append(
                (
                    f"{model.name}: {key.replace('_', ' ')} (assumed)",
                    setting_text(theirs[key]),
                    setting_text(ours[key]),
                    ours[key] == theirs[key],
                )
            )
    differing = sum(not same for *_, same in rows)
    lead = (
        "MATH §4 states the data, the networks and the measure; everything marked *assumed* "
        "is our choice for `--preset paper`, not the paper's statement. "
        + (
            "This study uses the `paper` preset's settings throughout."
            if not differing
            else f"{differing} of {len(rows)} settings differ from the `paper` preset:"
        )
    )
    lines = [lead, "", "| setting | paper preset | this study | |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {name} | {cell(theirs)} | {cell(ours)} | {'same' if same else '**differs**'} |"
        for name, theirs, ours, same in rows
    ]
    if data.get("split_kind") not in (None, "official"):
        lines += ["", f"Data split: {data.get('split')}."]
    lines += [
        "",
        "Rangamani et al. also report CIFAR-10 networks (AlexNet-like and VGG16 without "
        "batch-norm), which the zoo does not hold; this study covers the MNIST part.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def _values_figure(rows: Sequence[Mapping[str, Any]], config: BatchSizeConfig) -> Any:
    panels = [*config.measures, "test_accuracy"]
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure = new_figure(3.8 * columns, 3.0 * lines)
    sizes = sorted(config.batch_sizes)
    positions = {size: index for index, size in enumerate(sizes)}
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for index, panel in enumerate(panels):
        axis = figure.add_subplot(lines, columns, index + 1)
        values: list[float] = []
        for number, model in enumerate(config.models):
            colour = colours[number % len(colours)]
            marker = MARKERS[number % len(MARKERS)]
            offset = 0.08 * (number - (len(config.models) - 1) / 2)
            for seed in config.seeds:
                chosen = sorted(
                    (r for r in rows if r["model"] == model.name and r["seed"] == seed),
                    key=lambda r: r["batch_size"],
                )
                if not chosen:
                    continue
                x = [positions[r["batch_size"]] + offset for r in chosen]
                y = [r[panel] for r in chosen]
                values += y
                label = model.name if seed == config.seeds[0] else None
                axis.plot(x, y, "-", marker=marker, color=colour, label=label, markersize=5)
                if panel in config.measures:
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


def _rescaling_figure(rows: Sequence[Mapping[str, Any]], config: BatchSizeConfig) -> Any:
    figure = new_figure(max(4.5, 0.9 * len(config.measures) + 2), 3.4)
    axis = figure.add_subplot(1, 1, 1)
    floor = 1e-12
    largest = []
    for name in config.measures:
        changes = [abs(r[f"{name}_change"]) for r in rows if math.isfinite(r[f"{name}_change"])]
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

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

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minsharp.study.batch_size.figures import (
    MOVES,
    relative_changes,
    rescaling_figure,
    values_figure,
)
from minsharp.study.batch_size.study import (
    BATCH_SIZE,
    MEASURE_GROUPS,
    BatchSizeConfig,
    paper_preset,
)
from minsharp.study.core import store
from minsharp.study.core.store import StudyRecords
from minsharp.study.report import markdown as reporting
from minsharp.study.report.paths import portable_data
from minsharp.training import TrainingConfig

#: The measure the paper's claim is about, and the other invariant ones reported with it.
CLAIM_MEASURE = "quotient_flatness"
INVARIANT_MEASURES = ("quotient_flatness", "minimum_sharpness", "normalized_sharpness")

HELD, NOT_HELD = reporting.HELD, reporting.NOT_HELD
ON_AVERAGE = "held on average only"
UNDECIDED = "undecided (no complete pair)"


@dataclass(frozen=True)
class Comparison:
    """SB against LB for one model and one measure (or accuracy), paired by seed.

    Attributes:
        model: the model's name.
        quantity: a measure name, ``"test_accuracy"``, ``"train_accuracy"`` or ``"gap"``.
        small: the SB values by seed.
        large: the LB values by seed.
    """

    model: str
    quantity: str
    small: dict[int, float]
    large: dict[int, float]

    @functools.cached_property
    def differences(self) -> dict[int, float]:
        """LB − SB per seed with both values finite."""
        return {
            seed: self.large[seed] - value
            for seed, value in self.small.items()
            if seed in self.large and math.isfinite(value) and math.isfinite(self.large[seed])
        }

    @functools.cached_property
    def ratios(self) -> dict[int, float]:
        """LB/SB per seed with both values positive and finite."""
        return {
            seed: self.large[seed] / self.small[seed]
            for seed in self.differences
            if self.small[seed] > 0 and self.large[seed] > 0
        }

    @property
    def geometric_ratio(self) -> float:
        """Geometric mean of the ratios LB/SB (``nan`` without pairs)."""
        return reporting.geometric_mean(list(self.ratios.values()))

    @property
    def larger(self) -> int:
        """Seeds on which LB exceeds SB."""
        return sum(value > 0 for value in self.differences.values())

    @property
    def verdict(self) -> str:
        """On "LB is sharper": :data:`HELD`, :data:`ON_AVERAGE`, :data:`NOT_HELD` or undecided."""
        if not self.differences:
            return UNDECIDED
        if self.larger == len(self.differences):
            return HELD
        if self.geometric_ratio > 1:
            return ON_AVERAGE
        return NOT_HELD


@dataclass
class Report(reporting.Report):
    """What :func:`write_report` wrote, with the comparisons; the summary holds the verdicts."""

    comparisons: list[Comparison]


def run_rows(records: StudyRecords) -> list[dict[str, Any]]:
    """One flat row per finished run: axes, accuracies, timings and the measures.

    Each measure appears on the network (``<measure>``), on its rescaled copy
    (``<measure>_rescaled``) and as the relative change (``<measure>_change`` =
    rescaled/original − 1); ``nan`` where a measure failed.
    """
    rows = []
    for run, result in records.results.items():
        timings = result.get("timings", {}) or {}
        row = reporting.run_row(run, result, "batch_size")
        row.update(
            steps=result.get("steps"),
            reached_target=result.get("reached_target"),
            function_deviation=reporting.as_float(
                (result.get("rescaling") or {}).get("function_deviation")
            ),
            measure_seconds=reporting.as_float(timings.get("measures"))
            + reporting.as_float(timings.get("rescaled_measures")),
        )
        errors = []
        for name in records.config.measures:
            original = reporting.measure_value(result["measures"].get(name))
            rescaled = reporting.measure_value(result["rescaled_measures"].get(name))
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


def compare(
    rows: Sequence[Mapping[str, Any]], config: BatchSizeConfig, quantity: str
) -> list[Comparison]:
    """SB (smallest batch) against LB (largest) for ``quantity``, one per model with runs."""
    found = []
    for model in config.models:
        small, large = (
            {
                r["seed"]: r[quantity]
                for r in reporting.select(rows, model=model.name, batch_size=size)
            }
            for size in (min(config.batch_sizes), max(config.batch_sizes))
        )
        if small or large:
            found.append(Comparison(model.name, quantity, small, large))
    return found


def write_report(directory: str | Path) -> Report:
    """Write ``report.md``, the figures and ``runs.csv`` of the batch-size study in ``directory``.

    Raises:
        StudyError: not a batch-size study directory.
    """
    records = store.read_records(directory, BATCH_SIZE)
    config: BatchSizeConfig = records.config
    rows = run_rows(records)
    comparisons = [
        comparison
        for quantity in [*config.measures, "test_accuracy", "train_accuracy", "gap"]
        for comparison in compare(rows, config, quantity)
    ]
    verdicts = _verdict_lines(comparisons, config)
    measures = [f"{m}{suffix}" for m in config.measures for suffix in ("", "_rescaled", "_change")]
    path, csv_path, figures = reporting.write_files(
        records.directory,
        rows=rows,
        columns=reporting.csv_columns(
            "batch_size",
            measures,
            during=["steps", "reached_target", "function_deviation"],
            seconds=["measure_seconds"],
        ),
        markdown=_markdown(records, rows, comparisons, verdicts),
        figures={
            "batch_size.png": lambda: values_figure(rows, config),
            "rescaling.png": lambda: rescaling_figure(rows, config),
        },
    )
    summary = "Large vs small batch (paired by seed):\n\n" + (
        "\n".join(verdicts) if verdicts else "No complete SB/LB pair yet."
    )
    return Report(path, csv_path, figures, records, summary, comparisons)


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
            f"SB {reporting.spread(list(comparison.small.values())).text(3)}, "
            f"LB {reporting.spread(list(comparison.large.values())).text(3)}."
        )
    return lines


def _markdown(
    records: StudyRecords,
    rows: list[dict[str, Any]],
    comparisons: list[Comparison],
    verdicts: list[str],
) -> str:
    config: BatchSizeConfig = records.config
    small, large = min(config.batch_sizes), max(config.batch_sizes)
    out: list[str] = []
    add = out.append
    add(f"# Large- vs small-batch minima — preset `{config.preset}`\n")
    add(
        "Are large-batch SGD minima sharper than small-batch ones once sharpness is measured "
        "invariantly? Rangamani et al. (2019) answer yes with their quotient-manifold measure "
        "λ_max(D H D), D = blockdiag(‖P‖_F I) (theory §4). Here matched networks (same "
        f"initial weights per seed) are trained with batch size {small} (SB) and {large} (LB) "
        "and measured; a randomly α-rescaled copy of each network (the same function) is "
        "measured too, to show which measures are invariant.\n"
    )
    add(reporting.written_markdown(records))
    out += _verdict_markdown(rows, comparisons, verdicts, small, large)
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
    out += reporting.closing_markdown(
        records,
        groups=MEASURE_GROUPS,
        left_out="the comparisons for these runs",
        setup=_setup_markdown(records),
        paper=_paper_markdown(config, portable_data(records)),
        files=reporting.files_markdown(
            records,
            csv="accuracies, epochs, steps, timings, each measure on the network, on its "
            "rescaled copy and the relative change",
            result="training history, the rescaling's α per layer and the function check, "
            "every measure's value, options, certificate and time",
        ),
    )
    return "\n".join(out)


def _verdict_markdown(
    rows: list[dict[str, Any]],
    comparisons: list[Comparison],
    verdicts: list[str],
    small: int,
    large: int,
) -> list[str]:
    """The verdict section: the paper's claim per model, unmatched minima, the accuracies."""
    out: list[str] = ["## Verdict\n"]
    add = out.append
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
    return out


def _accuracy_lead(comparisons: Sequence[Comparison], small: int, large: int) -> str:
    lines = []
    for comparison in comparisons:
        if comparison.quantity != "test_accuracy" or not comparison.differences:
            continue
        gaps = [0.0 - value for value in comparison.differences.values()]  # SB − LB
        lines.append(
            f"{comparison.model}: test accuracy SB − LB = {reporting.spread(gaps).text(3)} "
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
    lines = reporting.table_head(
        "model", "measure", "invariant to", f"SB ({small})", f"LB ({large})", "LB/SB", "LB > SB"
    )
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
            f"{reporting.invariances_text(comparison.quantity)} | "
            f"{reporting.spread(list(comparison.small.values())).text(3)} | "
            f"{reporting.spread(list(comparison.large.values())).text(3)} | {ratio} | "
            f"{comparison.larger}/{len(comparison.differences)} |"
        )
    return "\n".join(lines)


def _accuracy_table(rows: Sequence[Mapping[str, Any]], config: BatchSizeConfig) -> str:
    lines = reporting.table_head(
        "model",
        "batch",
        "runs",
        "train acc",
        "test acc",
        "gap (train − test)",
        "epochs",
        "steps",
        "reached target",
    )
    sizes = sorted(config.batch_sizes)
    for model, size, chosen in reporting.setting_groups(rows, config.models, "batch_size", sizes):
        spreads = [
            reporting.spread([r[key] for r in chosen]).text(3)
            for key in ("train_accuracy", "test_accuracy", "gap", "epochs_run", "steps")
        ]
        reached = sum(bool(r["reached_target"]) for r in chosen)
        cells = [model.name, size, len(chosen), *spreads, f"{reached}/{len(chosen)}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
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
        *reporting.table_head(
            "measure", "declared invariant to", "largest relative change", "median", "moves?"
        ),
    ]
    for name in config.measures:
        changes = relative_changes(rows, name)
        if not changes:
            lines.append(f"| `{name}` | {reporting.invariances_text(name)} | — | — | — |")
            continue
        largest = max(changes)
        lines.append(
            f"| `{name}` | {reporting.invariances_text(name)} | {largest:.2g} | "
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
    lines = [
        *reporting.data_lines(records),
        f"* **Seeds**: {', '.join(map(str, config.seeds))}; a seed initialises a network "
        "(the same weights for every batch size) and orders its minibatches.",
        "* **Models and training** (SGD with momentum; learning rate lr/(1 + decay·t); "
        "training stops at the target training accuracy or after the epochs):",
        "",
        *reporting.models_table(
            records,
            ["batch", "epochs (at most)", *reporting.SGD_COLUMNS, "target train accuracy"],
            (
                (model, _training_cells(config.training_config(model, 0, size)))
                for model in config.models
                for size in sorted(config.batch_sizes)
            ),
        ),
        "",
        "* **Measures**, after training, on "
        f"{reporting.examples_text(config.measure_examples, 'training examples')} "
        "with their labels:",
        *reporting.measure_lines(records, per="network"),
        f"* **Time**: {reporting.timing_total(records, 'training') / 60:.1f} min training, "
        f"{reporting.timing_total(records, 'measures', 'rescaled_measures') / 60:.1f} "
        "min measuring "
        f"(networks and copies) over the {len(records.results)} finished runs; "
        f"{reporting.per_run_text(records)} s per run.",
    ]
    return "\n".join(lines)


def _training_cells(training: TrainingConfig) -> list[Any]:
    """Batch size, epochs, SGD settings and target accuracy of a run's training."""
    target = reporting.setting_text(training.target_train_accuracy)
    return [training.batch_size, training.epochs, *reporting.sgd_cells(training), target]


#: The training settings compared with the ``paper`` preset's.
_TRAINING_KEYS = ("epochs", "lr", "momentum", "weight_decay", "lr_decay", "target_train_accuracy")


def _paper_markdown(config: BatchSizeConfig, data: Mapping[str, Any]) -> str:
    """The comparison with the paper: what theory §4 states, and what the preset assumes."""
    paper = paper_preset()
    rows = _paper_rows(config, data, paper)
    differing = sum(row[3] == reporting.DIFFERS for row in rows)
    lead = (
        "theory §4 states the data, the networks and the measure; everything marked *assumed* "
        "is our choice for `--preset paper`, not the paper's statement. "
        + (
            "This study uses the `paper` preset's settings throughout."
            if not differing
            else f"{differing} of {len(rows)} settings differ from the `paper` preset:"
        )
    )
    lines = [lead, "", *reporting.paper_table(rows, data, paper="paper preset")]
    lines += [
        "",
        "Rangamani et al. also report CIFAR-10 networks (AlexNet-like and VGG16 without "
        "batch-norm), which the zoo does not hold; this study covers the MNIST part.",
    ]
    return "\n".join(lines)


def _paper_rows(
    config: BatchSizeConfig, data: Mapping[str, Any], paper: BatchSizeConfig
) -> list[tuple[str, str, str, str]]:
    """``(setting, paper preset, this study, verdict)`` rows of :func:`_paper_markdown`."""
    official = data.get("split_kind") == "official" and not data.get("subsampled", True)
    sizes = data.get("sizes") or {}
    networks = sorted((m.zoo, sorted(m.options.items())) for m in config.models)
    rows = [
        (
            "data (theory §4)",
            "MNIST, 60 000 train / 10 000 test",
            f"{data.get('title', config.dataset)}, {sizes.get('train', '?')} train / "
            f"{sizes.get('test', '?')} test ({data.get('split_kind', '?')})",
            reporting.verdict(config.dataset == "mnist" and official),
        ),
        (
            "networks (theory §4)",
            "MLP 784-512×5-10 and LeNet, without biases",
            ", ".join(f"`{m.zoo}`{reporting.options_text(m.options)}" for m in config.models),
            reporting.verdict(
                networks == sorted((m.zoo, sorted(m.options.items())) for m in paper.models)
            ),
        ),
        (
            "measure (theory §4)",
            "λ_max(D H D) on the full training set",
            "`quotient_flatness` on "
            + (
                "all training examples"
                if config.measure_examples is None
                else f"the first {config.measure_examples}"
            ),
            reporting.verdict(
                "quotient_flatness" in config.measures and config.measure_examples is None
            ),
        ),
        (
            "batch sizes (assumed: Keskar et al.)",
            " vs ".join(map(str, paper.batch_sizes)),
            " vs ".join(map(str, sorted(config.batch_sizes))),
            reporting.verdict(sorted(config.batch_sizes) == sorted(paper.batch_sizes)),
        ),
        (
            "seeds (assumed)",
            str(len(paper.seeds)),
            str(len(config.seeds)),
            reporting.verdict(len(config.seeds) == len(paper.seeds)),
        ),
    ]
    by_zoo = {model.zoo: model for model in paper.models}
    for model in config.models:
        if model.zoo in by_zoo:
            ours = config.training_config(model, 0)
            theirs = paper.training_config(by_zoo[model.zoo], 0)
            rows += [
                (f"{model.name}: {setting} (assumed)", *rest)
                for setting, *rest in reporting.training_rows(ours, theirs, _TRAINING_KEYS)
            ]
    return rows

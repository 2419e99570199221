"""The rescaling stress test of the randomized-label study, and the report's evidence checks.

The twins are function-equivalent (checked on a probe), so a measure invariant to layer- and
neuron-wise rescalings gives the original values on them, and a non-invariant one moves; the
command with ``--stress rescale`` reports both twins, our neuron-wise Minimum Sharpness and
a small-n warning, and resumes. Also: the paired bootstrap of a τ difference, the small-n
warning, and data paths written relative to the study directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.studies import TINY_FLAGS

from minsharp.cli import main
from minsharp.models import build_model
from minsharp.study.core.steps import measure_all
from minsharp.study.core.store import StudyRecords
from minsharp.study.randomized_labels import stress
from minsharp.study.randomized_labels.config import STUDY_MEASURES, StudyConfig, preset
from minsharp.study.randomized_labels.study import RANDOMIZED_LABELS
from minsharp.study.report.evidence import weak_evidence_warning
from minsharp.study.report.paths import portable_data
from minsharp.study.report.statistics import paired_tau_difference
from minsharp.symmetry.graph import discover

INVARIANT = ("neuron_minimum_sharpness", "normalized_sharpness", "fisher_rao")
MOVING = ("hessian_trace", "top_eigenvalue", "minimum_sharpness")


@pytest.fixture(scope="module")
def twins():
    torch.manual_seed(0)
    model = build_model("mlp", (8,), 3, hidden=[6, 5]).double().eval()
    inputs = (torch.randn(40, 8, dtype=torch.float64), torch.randint(0, 3, (40,)))
    names = INVARIANT + MOVING
    original, _ = measure_all(model, inputs, names, {})
    return original, stress.measure_twins(model, inputs, names, {}, "mlp_r0.5_s0")


def value(entry) -> float:
    assert "value" in entry, entry
    return entry["value"]


def test_invariant_measures_give_the_originals_on_every_twin(twins):
    original, record = twins
    for twin in stress.TWINS:
        entry = record["twins"][twin]
        assert entry["function_deviation"] <= 1e-10, twin
        for name in INVARIANT:
            before, after = value(original[name]), value(entry["measures"][name])
            assert after == pytest.approx(before, rel=1e-6), (twin, name)


def test_non_invariant_measures_move_the_way_each_twin_pushes_them(twins):
    original, record = twins
    measured = {twin: record["twins"][twin]["measures"] for twin in stress.TWINS}
    trace = value(original["hessian_trace"])
    for name in MOVING:
        before = value(original[name])
        assert abs(value(measured["random"][name]) / before - 1) > 1e-3, name
        assert value(measured["raised"][name]) > before * 1.5, name
    # The minimised twin's trace is the neuron-wise optimum, below the original's.
    lowest = value(original["neuron_minimum_sharpness"])
    assert value(measured["minimised"]["hessian_trace"]) == pytest.approx(lowest, rel=1e-9)
    assert lowest < trace


def test_the_raised_twin_stays_within_the_bound_and_the_spread_varies_by_run(twins):
    _, record = twins
    raised = record["twins"]["raised"]
    assert raised["max_abs_log_scale"] == pytest.approx(stress.RAISE_BOUND)
    optimum = np.array([0.0, 0.5, -0.25])
    scales, stretch = stress.raised_scales(optimum, bound=1.0)
    assert np.allclose(scales, [0.0, -1.0, 0.5]) and stretch == 2.0
    assert stress.raised_scales(np.zeros(3))[1] == 0.0
    torch.manual_seed(1)
    group = discover(build_model("mlp", (4,), 2, hidden=[3]).eval(), torch.randn(5, 4))
    spreads = {
        stress.random_twin_scales(group, stress.twin_seed(f"mlp_r{r}_s0"))[1]["spread"]
        for r in range(8)
    }
    low, high = stress.SPREAD_RANGE
    assert len(spreads) == 8 and all(low <= s <= high for s in spreads)
    first = stress.random_twin_scales(group, 7)[0]
    assert np.array_equal(first, stress.random_twin_scales(group, 7)[0]) and first[0] == 0


def test_the_stress_command_reports_both_twins_neuron_ms_and_a_small_n_warning(tmp_path, capsys):
    directory = tmp_path / "stress"
    flags = [f for f in TINY_FLAGS if f not in ("--seeds", "0")]
    command = [
        "study",
        "randomized-labels",
        "--preset",
        "demo",
        "--ratios",
        "0,0.5,1",
        "--seeds",
        "0",
        "--epochs",
        "5",
        "--stress",
        "rescale",
        "--output",
        str(directory),
        *flags,
    ]
    assert main(command) == 0
    assert "3 runs trained" in capsys.readouterr().out
    text = (directory / "report.md").read_text()
    for expected in (
        "`neuron_minimum_sharpness` (ours)",
        "## Rescaling stress test",
        "**Random twins**",
        "**Adversarial twins**",
        "τ-b adversarial twins",
        "**Weak evidence**",
        "they rest on 3 runs (fewer than 20)",
        "### Does one measure beat another?",
    ):
        assert expected in text, expected
    result = json.loads(next((directory / "runs").glob("*/result.json")).read_text())
    assert set(result["stress"]["twins"]) == set(stress.TWINS)
    assert "neuron_minimum_sharpness" in result["stress"]["twins"]["random"]["measures"]
    assert main(command) == 0  # resumed: the twins are stored with the runs
    assert "0 runs trained, 3 reused" in capsys.readouterr().out


def test_a_study_made_before_the_stress_test_still_reads():
    config = preset("demo")
    stored = config.to_dict()
    del stored["stress"]  # as in a study.json written before the stress test
    assert RANDOMIZED_LABELS.stored_config(stored) == config
    stressed = StudyConfig(**{**vars(config), "stress": "rescale"})
    assert RANDOMIZED_LABELS.stored_config(stressed.to_dict()).stress == "rescale"
    assert RANDOMIZED_LABELS.fingerprint(
        stressed, RANDOMIZED_LABELS.plan_runs(stressed)[0]
    ) != RANDOMIZED_LABELS.fingerprint(config, RANDOMIZED_LABELS.plan_runs(config)[0])
    with pytest.raises(Exception, match="stress must be null or one of rescale"):
        StudyConfig(**{**vars(config), "stress": "shuffle"})


def test_neuron_minimum_sharpness_is_in_the_presets_and_cpu_lenet_trains_lenet():
    assert "neuron_minimum_sharpness" in preset("demo").measures
    assert "neuron_minimum_sharpness" in preset("cpu").measures == STUDY_MEASURES
    lenet = preset("cpu-lenet")
    assert [model.zoo for model in lenet.models] == ["lenet"]
    assert lenet.train_size < preset("cpu").train_size and lenet.runs == 10
    assert set(lenet.measures) == set(STUDY_MEASURES)


def test_the_paired_bootstrap_says_which_measure_ranks_the_runs_better():
    generator = np.random.default_rng(0)
    gap = np.arange(30.0)
    good = gap + generator.normal(0, 1, 30)
    poor = gap + generator.normal(0, 20, 30)
    ahead = paired_tau_difference(good, poor, gap, resamples=500)
    assert ahead.verdict == "A" and ahead.interval[0] > 0 and ahead.above > 0.95
    behind = paired_tau_difference(poor, good, gap, resamples=500)
    assert behind.verdict == "B" and behind.difference == pytest.approx(-ahead.difference)
    same = paired_tau_difference(good, good * 3, gap, resamples=200)
    assert same.difference == 0 and same.interval == (0.0, 0.0) and same.verdict == "neither"
    with_nan = paired_tau_difference([1.0, math.nan, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert with_nan.n == 2
    assert math.isnan(paired_tau_difference([1.0], [1.0], [1.0]).difference)


def table_row(name: str, n: int, interval: tuple[float, float]) -> dict:
    return {"measure": name, "n": n, "kendall_tau_b_ci": interval}


def test_the_small_n_warning_speaks_for_few_runs_or_wide_intervals():
    assert "they rest on 3 runs" in weak_evidence_warning([table_row("a", 3, (-1.0, 1.0))])
    wide = weak_evidence_warning([table_row("a", 40, (0.1, 0.7)), table_row("b", 40, (0.5, 0.8))])
    assert "`a`" in wide and "`b`" not in wide and "rest on" not in wide
    assert weak_evidence_warning([table_row("a", 40, (0.5, 0.8))]) == ""


def test_report_data_paths_are_relative_to_the_study_directory(tmp_path):
    source = str(tmp_path / "data" / "mnist")
    data = {
        "source": source,
        "summary": f"MNIST from {source}: the training files are not in {source}",
        "files": [{"path": f"{source}/t10k-images-idx3-ubyte.gz"}],
    }
    records = StudyRecords(tmp_path / "studies" / "one", {"data": data}, config=None)
    portable = portable_data(records)
    relative = "../../data/mnist"
    assert portable["summary"] == f"MNIST from {relative}: the training files are not in {relative}"
    assert str(tmp_path) not in json.dumps(portable)
    assert portable["files"][0]["path"] == "../../data/mnist/t10k-images-idx3-ubyte.gz"
    assert portable_data(StudyRecords(Path("x"), {"data": {"source": "rel"}}, None))["source"] == (
        "rel"
    )

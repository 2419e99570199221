"""The batch-size study: matched runs, the rescaled copies, resume, report and command."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import minsharp.study.batch_size as batch_study
from minsharp.cli import main
from minsharp.errors import StudyError
from minsharp.models import build_model
from minsharp.study import base
from minsharp.study.batch_size import (
    BATCH_SIZE,
    MEASURES,
    BatchSizeConfig,
    from_mapping,
    paper_preset,
    plan_runs,
    preset,
    random_alphas,
    rescaled_twin,
    stored,
)
from minsharp.study.batch_size_report import HELD, MOVES, write_report
from minsharp.study.presets import ModelPlan
from minsharp.train import load_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny(**changes) -> BatchSizeConfig:
    """Digits, a bias-free MLP 64-8-10 in float64, batches 8 vs 64, 2 seeds, 3 epochs."""
    config = BatchSizeConfig(
        preset="demo",
        dataset="digits",
        train_size=120,
        test_size=60,
        data_seed=0,
        batch_sizes=(8, 64),
        seeds=(0, 1),
        models=(ModelPlan("mlp", "mlp", {"hidden": [8], "bias": False}),),
        training={"epochs": 3, "lr": 0.05, "target_train_accuracy": None},
        measures=MEASURES,
        measure_options={
            "quotient_flatness": {"tolerance": 1e-7},
            "top_eigenvalue": {"tolerance": 1e-7},
        },
        dtype="float64",
    )
    if "measures" in changes:  # keep the options of the measures that remain
        changes.setdefault(
            "measure_options",
            {k: v for k, v in config.measure_options.items() if k in changes["measures"]},
        )
    return dataclasses.replace(config, **changes) if changes else config


def quiet(line: str) -> None:
    """Swallow the runner's progress lines."""


class Recorder:
    """Replaces the study's ``train_classifier``, keeping each network's initial weights."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.original = batch_study.train_classifier
        monkeypatch.setattr(batch_study, "train_classifier", self)

    def __call__(self, model, inputs, labels, config, **options):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        self.calls.append((config.batch_size, state))
        return self.original(model, inputs, labels, config, **options)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("batch")
    base.run_study(BATCH_SIZE, tiny(), directory, echo=quiet)
    return directory


def test_each_run_is_trained_measured_and_rescaled(finished):
    records = base.read_records(finished, BATCH_SIZE)
    assert list(records.results) == ["mlp_b8_s0", "mlp_b64_s0", "mlp_b8_s1", "mlp_b64_s1"]
    for run, result in records.results.items():
        assert result["status"] == "complete"
        assert result["training"]["batch_size"] == result["batch_size"]
        assert result["steps"] == 3 * math.ceil(120 / result["batch_size"])
        rescaling = result["rescaling"]
        assert rescaling["layers"] == ["1", "3"]
        assert math.prod(rescaling["alphas"].values()) == pytest.approx(1.0, rel=1e-12)
        assert rescaling["function_deviation"] < 1e-12
        for name in MEASURES:
            original = result["measures"][name]["value"]
            rescaled = result["rescaled_measures"][name]["value"]
            change = abs(rescaled / original - 1)
            if name in ("hessian_trace", "top_eigenvalue"):
                assert change > MOVES, (run, name)
            else:
                assert change < 1e-6, (run, name)
        model, record = load_checkpoint(finished / "runs" / run / "checkpoint")
        assert record["rescaling"]["alphas"] == rescaling["alphas"]
        assert not any(m.bias is not None for m in model if hasattr(m, "bias"))


def test_the_batch_sizes_of_a_seed_start_from_the_same_weights(tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    base.run_study(BATCH_SIZE, tiny(measures=("hessian_trace",)), tmp_path, echo=quiet)
    (b0, s0), (b1, s1), (_, s2), _ = recorder.calls
    assert (b0, b1) == (8, 64)
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert not torch.equal(s0["1.weight"], s2["1.weight"])


def test_resume_redoes_only_missing_and_truncated_runs(tmp_path, monkeypatch):
    config = tiny(measures=("minimum_sharpness",), seeds=(0,))
    base.run_study(BATCH_SIZE, config, tmp_path, echo=quiet)
    kept = (tmp_path / "runs" / "mlp_b8_s0" / "result.json").read_bytes()
    damaged = tmp_path / "runs" / "mlp_b64_s0" / "result.json"
    damaged.write_text(damaged.read_text()[:150])
    recorder = Recorder(monkeypatch)
    outcome = base.run_study(BATCH_SIZE, config, tmp_path, echo=quiet)
    assert [size for size, _ in recorder.calls] == [64]
    assert outcome.reused == ["mlp_b8_s0"] and "truncated" in outcome.redone["mlp_b64_s0"]
    assert (tmp_path / "runs" / "mlp_b8_s0" / "result.json").read_bytes() == kept
    with pytest.raises(StudyError, match="another study configuration"):
        base.run_study(BATCH_SIZE, tiny(measures=("minimum_sharpness",)), tmp_path, echo=quiet)


def test_the_report_states_the_verdict_and_the_measures_that_move(finished):
    report = write_report(finished)
    text = report.path.read_text()
    for heading in (
        "## Verdict",
        "## Measures, small vs large batch",
        "## Which measures move under a layer rescaling",
        "## How this run differs from the paper",
        "## Machine and versions",
    ):
        assert heading in text
    assert "| `hessian_trace` | none |" in text and "**yes** |" in text
    assert "| `minimum_sharpness` | layer |" in text
    claim = [c for c in report.comparisons if c.quantity == "quotient_flatness"]
    assert len(claim) == 1 and set(claim[0].differences) == {0, 1}
    assert claim[0].verdict in (HELD, "held on average only", "did not hold")
    assert "quotient_flatness" in report.summary
    assert [p.name for p in report.figures] == ["batch_size.png", "rescaling.png"]
    for path in report.figures:
        assert path.read_bytes().startswith(PNG_MAGIC)
    rows = list(csv.DictReader(report.csv.open()))
    assert len(rows) == 4 and float(rows[0]["hessian_trace_rescaled"]) > 0


def test_random_alphas_have_product_one_and_stay_in_the_spread():
    alphas = random_alphas(5, 4.0, seed=7)
    assert math.prod(alphas) == pytest.approx(1.0, rel=1e-12)
    assert all(1 / 16 <= a <= 16 for a in alphas) and alphas == random_alphas(5, 4.0, seed=7)


def test_a_network_that_is_no_chain_gets_an_explained_rescaling_error():
    net = build_model("mlp", (4,), 3, hidden=[5], batchnorm=True).eval()
    with torch.no_grad():
        net[2].running_mean.uniform_(-1, 1)  # a batch-norm in eval mode with a shift
    plan = plan_runs(tiny())[0]
    twin, record = rescaled_twin(net, torch.randn(6, 4), 10.0, plan)
    assert twin is None and record["error"] == "NotAChainError"
    assert "not a chain" in record["message"]


def test_the_command_runs_resumes_and_dispatches_the_report(tmp_path, capsys):
    output = str(tmp_path / "batch")
    command = [
        "study",
        "batch-size",
        "--output",
        output,
        "--train-size",
        "120",
        "--test-size",
        "60",
        "--seeds",
        "0",
        "--hidden",
        "8",
        "--epochs",
        "2",
        "--batch-sizes",
        "16,64",
        "--measures",
        "minimum_sharpness,hessian_trace",
        "--threads",
        "1",
        "--no-progress",
    ]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "2 runs trained, 0 reused" in out and "minimum_sharpness" in out
    assert main(command) == 0
    assert "0 runs trained, 2 reused" in capsys.readouterr().out
    assert main(["report", output]) == 0
    assert "Large vs small batch" in capsys.readouterr().out
    assert json.loads((Path(output) / "study.json").read_text())["kind"] == "batch-size"
    command[command.index("--batch-sizes") + 1] = "16"
    assert main(command) == 2
    assert "batch_sizes must be at least two integers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_sizes": [64]}, "batch_sizes must be at least two integers"),
        ({"batch_sizes": [64, 64]}, "distinct positive integers"),
        ({"training": {"batch_size": 32}}, "set batch_size"),
        ({"rescale_spread": 1.0}, "rescale_spread must be a number above 1"),
        ({"measures": ["quotient_flatnes"]}, "Did you mean quotient_flatness"),
    ],
)
def test_invalid_configurations_are_explained(changes, message):
    with pytest.raises(StudyError, match=message):
        from_mapping(changes, base=preset("demo"))


def test_the_presets_are_valid_and_the_paper_preset_is_math_section_4():
    for name in batch_study.PRESETS:
        assert stored(preset(name).to_dict()) == preset(name)
    paper = paper_preset()
    assert paper.dataset == "mnist" and paper.train_size is None
    mlp, lenet = paper.models
    assert mlp.options == {"hidden": [512] * 5, "bias": False}
    assert (lenet.zoo, lenet.options) == ("lenet", {"bias": False})
    assert "quotient_flatness" in paper.measures and paper.measure_examples is None
    assert min(paper.batch_sizes) < max(paper.batch_sizes)

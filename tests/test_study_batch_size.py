"""The batch-size study: matched runs, the rescaled copies, resume, report and command."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from tests import studies
from tests.studies import PNG_MAGIC, TrainingSpy, command_round_trip, quiet

from minsharp.cli.main import main
from minsharp.errors import StudyError
from minsharp.models import build_model
from minsharp.study.batch_size.report import HELD, MOVES, write_report
from minsharp.study.batch_size.study import (
    BATCH_SIZE,
    MEASURES,
    BatchSizeConfig,
    paper_preset,
    random_alphas,
    rescaled_twin,
)
from minsharp.study.core import runner as base
from minsharp.study.core import store
from minsharp.study.core.config import ModelPlan
from minsharp.training import load_checkpoint

#: Lanczos to a tight tolerance, so that the invariant measures agree on the rescaled copies.
OPTIONS = {"quotient_flatness": {"tolerance": 1e-7}, "top_eigenvalue": {"tolerance": 1e-7}}


def tiny(**changes) -> BatchSizeConfig:
    """Digits, a bias-free MLP 64-8-10 in float64, batches 8 vs 64, 2 seeds, 3 epochs."""
    measures = changes.get("measures", MEASURES)  # keep the options of the measures that remain
    changes.setdefault("measure_options", {k: v for k, v in OPTIONS.items() if k in measures})
    return studies.tiny(
        BatchSizeConfig,
        changes,
        batch_sizes=(8, 64),
        seeds=(0, 1),
        models=(ModelPlan("mlp", "mlp", {"hidden": [8], "bias": False}),),
        training={"epochs": 3, "lr": 0.05, "target_train_accuracy": None},
        measures=MEASURES,
        dtype="float64",
    )


class Recorder(TrainingSpy):
    """Replaces the study's ``train_classifier``, keeping each network's initial weights."""

    def __init__(self, monkeypatch):
        super().__init__(monkeypatch)

    @property
    def calls(self) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """``(batch size, initial weights)`` of each training."""
        return [(c.batch_size, state) for c, state in zip(self.configs, self.states, strict=True)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return studies.finished_study(tmp_path_factory, BATCH_SIZE, tiny())


def test_each_run_is_trained_measured_and_rescaled(finished):
    records = store.read_records(finished, BATCH_SIZE)
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
    studies.assert_sections(
        text,
        "## Verdict",
        "## Measures, small vs large batch",
        "## Which measures move under a layer rescaling",
    )
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
    plan = BATCH_SIZE.plan_runs(tiny())[0]
    twin, record = rescaled_twin(net, torch.randn(6, 4), 10.0, plan)
    assert twin is None and record["error"] == "NotAChainError"
    assert "not a chain" in record["message"]


def test_the_command_runs_resumes_and_dispatches_the_report(tmp_path, capsys):
    output = str(tmp_path / "batch")
    command = ["study", "batch-size", "--output", output, *studies.TINY_FLAGS, "--epochs", "2"]
    command += ["--batch-sizes", "16,64", "--measures", "minimum_sharpness,hessian_trace"]
    out, report = command_round_trip(capsys, command, ["report", output])
    assert "minimum_sharpness" in out
    assert "Large vs small batch" in report
    assert json.loads((Path(output) / "study.json").read_text())["kind"] == "batch-size"
    command[command.index("--batch-sizes") + 1] = "16"
    assert main(command) == 2
    assert "batch_sizes must be at least two integers" in capsys.readouterr().err


def test_the_paper_preset_is_math_section_4():
    paper = paper_preset()
    assert paper.dataset == "mnist" and paper.train_size is None
    mlp, lenet = paper.models
    assert mlp.options == {"hidden": [512] * 5, "bias": False}
    assert (lenet.zoo, lenet.options) == ("lenet", {"bias": False})
    assert "quotient_flatness" in paper.measures and paper.measure_examples is None
    assert min(paper.batch_sizes) < max(paper.batch_sizes)

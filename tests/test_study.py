"""The randomized-label study (runner, resume, report, commands) and every kind's configs."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
from tests import studies
from tests.studies import PNG_MAGIC, TrainingSpy, command_round_trip, quiet

import minsharp.study.randomized_labels.study as runner
from minsharp.cli.main import main
from minsharp.errors import ModelError, StudyError
from minsharp.study.core import claims as claims
from minsharp.study.core.config import (
    ModelPlan,
    config_from_mapping,
    ratio_label,
    read_config_file,
    stored_config,
)
from minsharp.study.core.runner import StudyOutcome
from minsharp.study.kinds import KINDS
from minsharp.study.randomized_labels.config import (
    PRESETS,
    StudyConfig,
    cpu_preset,
    paper_preset,
    preset,
)
from minsharp.study.randomized_labels.report import paper_differences, read_records, write_report
from minsharp.study.randomized_labels.study import RANDOMIZED_LABELS, read_result, run_study
from minsharp.study.report.markdown import DIFFERS, SAME
from minsharp.training import accuracy, load_checkpoint

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"

#: Cheap measures: one exact, one with a solver, and one that fails on every MLP (no batch-norm).
MEASURES = ("hessian_trace", "minimum_sharpness")


def tiny(**changes) -> StudyConfig:
    """Digits, 2 ratios × 2 seeds, an MLP 64-8-10, 2 epochs: a whole study in about a second."""
    return studies.tiny(
        StudyConfig,
        changes,
        ratios=(0.0, 1.0),
        seeds=(0, 1),
        models=(ModelPlan("mlp", "mlp", {"hidden": [8]}),),
        training={"epochs": 2, "batch_size": 32, "lr": 0.05},
        measures=MEASURES,
    )


def study(directory: Path, config: StudyConfig | None = None, **options) -> StudyOutcome:
    return run_study(config or tiny(), directory, echo=quiet, **options)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny study with its report, shared by the read-only tests."""
    directory = studies.finished_study(tmp_path_factory, runner.RANDOMIZED_LABELS, tiny())
    write_report(directory, resamples=50)
    return directory


def counting_training(monkeypatch, **options) -> TrainingSpy:
    """Replaces ``train_classifier`` of the study steps, counting (and optionally failing) calls."""
    return TrainingSpy(monkeypatch, **options)


# --------------------------------------------------------------------------- the runner


def test_a_study_writes_one_complete_result_per_run(finished):
    records = read_records(finished)
    assert list(records.results) == ["mlp_r0_s0", "mlp_r1_s0", "mlp_r0_s1", "mlp_r1_s1"]
    assert not records.unfinished
    for run, result in records.results.items():
        assert result["status"] == "complete"
        assert result["gap"] == pytest.approx(result["train_accuracy"] - result["test_accuracy"])
        assert set(result["measures"]) == set(MEASURES)
        for entry in result["measures"].values():
            assert math.isfinite(entry["value"]) and entry["seconds"] >= 0
        assert result["measures"]["minimum_sharpness"]["certificate"]["method"]
        assert result["measured_on"]["examples"] == 120
        assert "corrupted labels" in result["measured_on"]["description"]
        assert len(result["history"]["loss"]) == result["epochs_run"] == 2
        assert result["corruption"]["ratio"] == result["ratio"]
        assert result["timings"]["total"] >= result["timings"]["training"]
        assert (finished / "runs" / run / "checkpoint" / "model.safetensors").is_file()
    study_file = json.loads((finished / "study.json").read_text())
    assert study_file["config"] == tiny().to_dict()
    assert study_file["data"]["dataset"] == "digits"
    assert study_file["runs"] == list(records.results)
    assert study_file["sessions"][0]["machine"]["cpu_count"] >= 1


def test_the_labels_are_corrupted_as_recorded_and_the_checkpoint_rebuilds_the_network(finished):
    result = read_records(finished).results["mlp_r1_s1"]
    corruption = result["corruption"]
    assert corruption["rule"] == "permute" and corruption["count"] == 120
    assert corruption["seed"] == runner.corruption_seed(1, 1.0)
    model, record = load_checkpoint(finished / "runs" / "mlp_r1_s1" / "checkpoint")
    assert record["run_id"] == "mlp_r1_s1"
    from minsharp.data.corruption import corrupt_labels
    from minsharp.data.datasets import load_dataset

    data = load_dataset("digits", train_size=120, test_size=60, seed=0)
    labels = corrupt_labels(data.train_labels, 1.0, num_classes=10, seed=corruption["seed"]).labels
    assert accuracy(model, data.train_inputs, labels) == pytest.approx(result["train_accuracy"])
    assert accuracy(model, *data.test) == pytest.approx(result["test_accuracy"])


def test_runs_are_deterministic(tmp_path, finished):
    study(tmp_path, tiny(ratios=(1.0,), seeds=(1,)))
    again = json.loads((tmp_path / "runs" / "mlp_r1_s1" / "result.json").read_text())
    first = read_records(finished).results["mlp_r1_s1"]
    assert again["history"]["loss"] == first["history"]["loss"]
    assert (
        again["measures"]["hessian_trace"]["value"] == first["measures"]["hessian_trace"]["value"]
    )


def test_resume_retrains_only_the_missing_and_the_corrupt_runs(tmp_path, monkeypatch):
    study(tmp_path)
    runs = tmp_path / "runs"
    (runs / "mlp_r1_s0" / "result.json").unlink()
    corrupt = runs / "mlp_r0_s1" / "result.json"
    corrupt.write_text(corrupt.read_text()[:200])  # a truncated write
    untouched = (runs / "mlp_r0_s0" / "result.json").read_bytes()
    counter = counting_training(monkeypatch)
    outcome = study(tmp_path)
    assert len(counter.seeds) == 2
    assert sorted(outcome.trained) == ["mlp_r0_s1", "mlp_r1_s0"]
    assert sorted(outcome.reused) == ["mlp_r0_s0", "mlp_r1_s1"]
    assert list(outcome.redone) == ["mlp_r0_s1"]
    assert "unreadable or truncated" in outcome.redone["mlp_r0_s1"]
    assert (runs / "mlp_r0_s0" / "result.json").read_bytes() == untouched
    assert read_result(corrupt)[0] is not None
    assert len(json.loads((tmp_path / "study.json").read_text())["sessions"]) == 2


def test_a_killed_study_continues_where_it_stopped(tmp_path, monkeypatch):
    counter = counting_training(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        study(tmp_path)
    assert len(counter.seeds) == 3
    assert len(list((tmp_path / "runs").glob("*/result.json"))) == 2
    counter = counting_training(monkeypatch)
    outcome = study(tmp_path)
    assert len(counter.seeds) == 2
    assert len(outcome.reused) == 2 and len(outcome.trained) == 2
    assert not read_records(tmp_path).unfinished


def test_a_failed_training_is_recorded_and_retried(tmp_path, monkeypatch):
    counting_training(monkeypatch, fail_at=1, error=ModelError)
    outcome = study(tmp_path)
    assert list(outcome.failed) == ["mlp_r0_s0"] and "stopped here" in outcome.failed["mlp_r0_s0"]
    stored = json.loads((tmp_path / "runs" / "mlp_r0_s0" / "result.json").read_text())
    assert stored["status"] == "failed" and stored["error"] == "ModelError"
    counter = counting_training(monkeypatch)
    outcome = study(tmp_path)
    assert counter.seeds == [0] and outcome.trained == ["mlp_r0_s0"]
    assert "failed" in outcome.redone["mlp_r0_s0"]


def test_failing_measures_and_warnings_are_recorded_with_their_messages(tmp_path):
    config = tiny(
        ratios=(0.0,),
        seeds=(0,),
        measures=("hessian_trace", "bn_sharpness", "top_eigenvalue"),
        measure_options={"top_eigenvalue": {"max_iterations": 2, "tolerance": 1e-12}},
    )
    outcome = study(tmp_path, config)
    assert outcome.trained == ["mlp_r0_s0"]
    [(run, name, message)] = outcome.measure_errors
    assert (run, name) == ("mlp_r0_s0", "bn_sharpness") and "batch-norm" in message
    result = read_records(tmp_path).results["mlp_r0_s0"]
    assert result["measures"]["bn_sharpness"]["error"] == "ModelError"
    assert math.isfinite(result["measures"]["hessian_trace"]["value"])
    eigenvalue = result["measures"]["top_eigenvalue"]
    assert eigenvalue["certificate"]["converged"] is False
    assert "Lanczos stopped" in eigenvalue["warnings"][0]
    report = write_report(tmp_path, resamples=10)
    text = report.path.read_text()
    assert "Failed measures" in text and "batch-norm" in text
    assert "Measure warnings" in text and "Lanczos stopped" in text
    rows = list(csv.DictReader(report.csv.open()))
    assert rows[0]["errors"] == "bn_sharpness" and rows[0]["bn_sharpness"] == ""
    assert float(rows[0]["top_eigenvalue"]) == eigenvalue["value"]


def test_another_configuration_in_the_same_directory_is_refused(tmp_path, monkeypatch):
    study(tmp_path, tiny(seeds=(0,)))
    with pytest.raises(StudyError, match=r"\n  ratios: \[0\.0, 1\.0\] → \[0\.0, 0\.5\]\n"):
        study(tmp_path, tiny(seeds=(0,), ratios=(0.0, 0.5)))
    with pytest.raises(StudyError, match="--force"):
        study(tmp_path, tiny(seeds=(0,), training={"epochs": 3, "batch_size": 32, "lr": 0.05}))
    counter = counting_training(monkeypatch)
    outcome = study(tmp_path, tiny(seeds=(0,), ratios=(0.0, 0.5)), force=True)
    assert outcome.reused == ["mlp_r0_s0"] and outcome.trained == ["mlp_r0.5_s0"]
    assert len(counter.seeds) == 1
    changed = tiny(seeds=(0,), ratios=(0.0, 0.5), measures=("hessian_trace",))
    outcome = study(tmp_path, changed, force=True)
    assert sorted(outcome.redone) == ["mlp_r0.5_s0", "mlp_r0_s0"]
    assert set(outcome.redone.values()) == {"it was made with other settings"}


def test_a_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StudyError, match="not a study directory"):
        study(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(StudyError, match="is a file"):
        study(tmp_path / "file")


def test_what_a_worker_killed_before_study_json_leaves_does_not_block_the_next(tmp_path):
    # SIGKILL between taking the lock and renaming study.json into place leaves these.
    (tmp_path / ".lock").write_text('{"host": "h", "pid": 1}')
    (tmp_path / "runs").mkdir()
    (tmp_path / ".study.json.k2x9.tmp").write_text('{"format": "minsh')
    outcome = study(tmp_path, tiny(seeds=(0,)))
    assert outcome.trained == ["mlp_r0_s0", "mlp_r1_s0"]
    assert not list(tmp_path.glob(".study.json.*.tmp"))
    (tmp_path / "study.json").unlink()
    with pytest.raises(StudyError, match="not a study directory"):
        study(tmp_path, tiny(seeds=(0,)))  # runs/ is no longer empty: a finished run's files


def test_a_model_that_cannot_take_the_data_fails_before_training(tmp_path, monkeypatch):
    counter = counting_training(monkeypatch)
    with pytest.raises(StudyError, match=r"model 'lenet' cannot be built .* shape \(64,\)"):
        study(tmp_path, tiny(models=(ModelPlan("lenet", "lenet"),)))
    assert counter.seeds == []


def test_the_grid_runs_trial_by_trial_with_shared_corruption_per_trial():
    config = tiny(models=(ModelPlan("a", "mlp"), ModelPlan("b", "small_mlp")), ratios=(0.0, 0.3))
    plans = RANDOMIZED_LABELS.plan_runs(config)
    assert [plan.run_id for plan in plans[:4]] == ["a_r0_s0", "a_r0.3_s0", "b_r0_s0", "b_r0.3_s0"]
    assert plans[1].corruption_seed == plans[3].corruption_seed != plans[5].corruption_seed
    assert plans[1].training.seed == 0 and plans[5].training.seed == 1


# --------------------------------------------------------------------------- presets and configs


def test_the_presets_are_valid_and_the_paper_preset_is_math_section_6():
    for name in PRESETS:
        assert stored_config(preset(name).to_dict(), base=preset("demo")) == preset(name)
    paper = paper_preset()
    assert paper.dataset == "mnist" and paper.train_size is None and paper.test_size is None
    assert paper.ratios == tuple(round(0.1 * i, 10) for i in range(11))
    assert paper.seeds == tuple(range(10)) and paper.corruption == "permute"
    mlp, lenet = (paper.training_config(model, 0) for model in paper.models)
    assert [m.zoo for m in paper.models] == ["paper_mlp", "lenet"]
    assert (mlp.lr, mlp.epochs, lenet.lr, lenet.epochs) == (0.1, 3000, 0.01, 1000)
    for training in (mlp, lenet):
        assert (training.batch_size, training.momentum) == (1024, 0.9)
        assert (training.weight_decay, training.lr_decay) == (1e-5, 1e-4)
        assert training.target_train_accuracy is None
    cpu = cpu_preset()
    assert cpu.dataset == "mnist" and cpu.models[0].zoo == "paper_mlp"
    assert {"minimum_sharpness", "normalized_sharpness"} <= set(cpu.measures)
    assert cpu.runs == 22


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_s_presets_are_valid_and_round_trip_through_study_json(kind):
    entry = KINDS[kind]
    assert entry.presets[0] == "demo" and {"cpu", "paper"} <= set(entry.presets)
    for name in entry.presets:
        assert entry.study.stored_config(entry.preset(name).to_dict()) == entry.preset(name)


def test_paper_differences_name_every_changed_setting():
    full = {
        "dataset": "mnist",
        "split_kind": "official",
        "subsampled": False,
        "sizes": {"train": 60000, "test": 10000},
        "normalisation": "x ↦ (x/255 − 0.5)/0.5",
    }
    verdicts = {row[0]: row[3] for row in paper_differences(paper_preset(), full)}
    assert set(verdicts.values()) == {SAME, "includes the paper's"}
    split = {**full, "split_kind": "from-test-files", "subsampled": True}
    verdicts = {row[0]: row[3] for row in paper_differences(cpu_preset(), split)}
    assert verdicts["data"] == DIFFERS and verdicts["ratios"] == SAME
    assert verdicts["trials per ratio"] == verdicts["mlp: epochs"] == DIFFERS
    assert verdicts["models"] == DIFFERS and verdicts["mlp: momentum"] == SAME


def test_a_config_file_modifies_a_preset(tmp_path):
    path = tmp_path / "study.json"
    path.write_text(
        json.dumps(
            {
                "preset": "cpu",
                "ratios": [0, 0.5, 1],
                "training": {"epochs": 7},
                "models": [{"name": "wide", "zoo": "mlp", "options": {"hidden": [32]}}],
                "measure_options": {"hessian_trace": {"batch_size": 64}},
            }
        )
    )
    config = read_config_file(path, base=preset("demo"), presets=preset)
    assert config.dataset == "mnist" and config.ratios == (0.0, 0.5, 1.0)
    assert config.training["epochs"] == 7 and config.training["batch_size"] == 256
    assert config.models == (ModelPlan("wide", "mlp", {"hidden": [32]}),)
    assert config.measure_options == {  # merged into the preset's
        "top_eigenvalue": {"tolerance": 1e-4},
        "hessian_trace": {"batch_size": 64},
    }
    path.write_text('{"ratio": [0.5]}')
    with pytest.raises(StudyError, match=r"unknown study config keys 'ratio'.*ratios"):
        read_config_file(path, base=preset("demo"), presets=preset)


#: Invalid settings of each kind, applied to its demo preset, with what the error says.
INVALID = {
    "randomized-labels": [
        ({"ratios": [1.5]}, r"ratios must be numbers in \[0, 1\]"),
        ({"ratios": [0.1, 0.10001]}, "distinct to four decimals"),
        ({"seeds": [0, 0]}, "seeds must be distinct"),
        ({"measures": ["minimum_sharpnes"]}, "Did you mean minimum_sharpness"),
        ({"training": {"momentum": -1}}, "momentum must be a non-negative number"),
        ({"training": {"epoch": 3}}, "training has no setting 'epoch'"),
        ({"models": [{"name": "a b", "zoo": "mlp"}]}, "must be letters, digits"),
        ({"models": [{"name": "x", "zoo": "mlp", "options": {"width": 3}}]}, "no option 'width'"),
        ({"measure_options": {"hessian_trace": {"sample": 3}}}, "no study option 'sample'"),
        ({"dataset": "imagenet"}, "unknown data set 'imagenet'"),
    ],
    "batch-size": [
        ({"batch_sizes": [64]}, "batch_sizes must be at least two integers"),
        ({"batch_sizes": [64, 64]}, "distinct positive integers"),
        ({"training": {"batch_size": 32}}, "set batch_size"),
        ({"rescale_spread": 1.0}, "rescale_spread must be a number above 1"),
        ({"measures": ["quotient_flatnes"]}, "Did you mean quotient_flatness"),
    ],
    "bn-sharpness": [
        ({"weights": [0.5, 1.0]}, "weights must hold 0"),
        ({"weights": [0, 0]}, "weights must be distinct"),
        ({"delta": 1.5}, r"delta must be a number in \(0, 1\]"),
        ({"training": {"bn_sharpness_weight": 1.0}}, "set the penalty"),
        ({"models": [{"name": "plain", "zoo": "mlp"}]}, "has no batch-norm"),
        ({"measures": ["hessian_trace"]}, "must include bn_sharpness"),
    ],
}


@pytest.mark.parametrize(
    ("kind", "changes", "message"),
    [(kind, changes, message) for kind, cases in INVALID.items() for changes, message in cases],
)
def test_invalid_configurations_are_explained(kind, changes, message):
    kind_preset = KINDS[kind].preset
    with pytest.raises(StudyError, match=message):
        config_from_mapping(changes, base=kind_preset("demo"), presets=kind_preset)


def test_ratio_labels_name_runs_uniquely():
    assert [ratio_label(r) for r in (0.0, 0.1, 0.25, 1.0)] == ["0", "0.1", "0.25", "1"]


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST test split at {MNIST_DIR}")
def test_the_cpu_preset_data_fit_the_mnist_test_split_alone(tmp_path, monkeypatch):
    counter = counting_training(monkeypatch, fail_at=1, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):  # stop at the first training: data and models load
        run_study(cpu_preset(), tmp_path, data_root=MNIST_DIR, echo=quiet)
    assert len(counter.seeds) == 1
    data = json.loads((tmp_path / "study.json").read_text())["data"]
    assert data["split_kind"] == "from-test-files"
    assert data["sizes"] == {"train": 4000, "test": 2000}


# --------------------------------------------------------------------------- the report


def test_the_report_renders_markdown_figures_and_csv(finished):
    text = (finished / "report.md").read_text()
    studies.assert_sections(text, "## Results", "Kendall τ-b", "Spearman ρ", "ψ ratio", "Ψ")
    for name in MEASURES:
        assert f"| `{name}` |" in text
        assert f"figures/gap_{name}.png" in text
    assert "with the corrupted labels" in text
    figures = sorted((finished / "figures").glob("*.png"))
    assert {path.name for path in figures} == {
        "measures_vs_gap.png",
        "measures_vs_ratio.png",
        "kendall_tau.png",
        *(f"gap_{name}.png" for name in MEASURES),
    }
    for path in figures:
        content = path.read_bytes()
        assert content.startswith(PNG_MAGIC) and content[12:16] == b"IHDR"
        assert content.endswith(b"IEND\xaeB`\x82")
    rows = list(csv.DictReader((finished / "runs.csv").open()))
    assert len(rows) == 4
    assert {row["run_id"] for row in rows} == set(read_records(finished).results)
    assert all(float(row["hessian_trace"]) > 0 for row in rows)
    assert not list(finished.glob("**/*.tmp"))


def test_a_partial_study_reports_what_is_missing(tmp_path, monkeypatch):
    counting_training(monkeypatch, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        study(tmp_path)
    report = write_report(tmp_path, resamples=10)
    text = report.path.read_text()
    assert "1 finished of 4 planned runs" in text and "not finished" in text
    assert "| mlp_r1_s0 | not run yet |" in text
    assert len(list(csv.DictReader(report.csv.open()))) == 1


# --------------------------------------------------------------------------- the commands


TINY_FLAGS = [
    *studies.TINY_FLAGS,
    "--ratios",
    "0,1",
    "--epochs",
    "2",
    "--measures",
    "hessian_trace",
    "--resamples",
    "10",
]


def test_the_study_command_runs_resumes_and_reports(tmp_path, capsys):
    output = str(tmp_path / "out")
    command = ["study", "randomized-labels", "--preset", "demo", "--output", output]
    out, report = command_round_trip(
        capsys, [*command, *TINY_FLAGS], ["report", output, "--resamples", "10"]
    )
    assert "Kendall τ-b" in out and f"report: {output}/report.md" in out
    assert "hessian_trace" in report
    flags = [*TINY_FLAGS]
    flags[flags.index("--epochs") + 1] = "3"
    assert main([*command, *flags]) == 2
    assert "another study configuration;" in (err := capsys.readouterr().err)
    assert "training.epochs: 2 → 3" in err


def test_a_run_another_worker_holds_is_left_to_it_and_the_report_waits(tmp_path, capsys):
    output = tmp_path / "out"
    command = ["study", "randomized-labels", "--preset", "demo", "--output", str(output)]
    assert main([*command, *TINY_FLAGS]) == 0
    run = "mlp_r1_s0"
    (output / "runs" / run / "result.json").unlink()
    (output / "report.md").unlink()
    capsys.readouterr()
    with claims.claimed(output / "runs" / run) as held:  # as another worker would
        assert held
        assert main([*command, *TINY_FLAGS]) == 0
        out = capsys.readouterr().out
    assert f"{run}: being run by" in out and "1 left to other workers" in out
    assert "still being run by other workers" in out and not (output / "report.md").exists()
    assert main([*command, *TINY_FLAGS]) == 0  # the holder is gone: the run is redone
    out = capsys.readouterr().out
    assert "1 runs trained, 1 reused" in out and (output / "report.md").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--ratios", "0,x"], "--ratios must be comma-separated numbers"),
        (["--ratios", "0,2"], "ratios must be numbers in [0, 1]"),
        (["--seeds", "a"], "--seeds must be non-negative integers"),
        (["--models", "resnet"], "unknown model 'resnet'"),
        (["--measures", "sharpness"], "unknown measure 'sharpness'"),
        (["--models", "mlp,small_cnn"], "cannot be built for the digits inputs"),
        (["--config", "missing.json"], "config file missing.json does not exist"),
        (["--threads", "0"], "--threads must be positive"),
        (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    ],
)
def test_study_command_errors_exit_2(tmp_path, capsys, arguments, message):
    command = ["study", "randomized-labels", "--output", str(tmp_path / "out"), *TINY_FLAGS]
    assert main([*command, *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minsharp: error: ") and message in err.replace("\n", " ")


def test_report_of_a_directory_that_is_no_study_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a study directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_missing_mnist_files_are_explained(tmp_path, capsys):
    command = [
        "study",
        "randomized-labels",
        "--preset",
        "cpu",
        "--output",
        str(tmp_path / "o"),
        "--data-dir",
        str(tmp_path / "nothing"),
        "--no-report",
    ]
    assert main(command) == 2
    assert "--download" in capsys.readouterr().err


# --------------------------------------------------------------------------- the user's models

USER_NETS = '''
"""A user's networks for the digits (64 features, 10 classes)."""
from torch import nn


def wide(width=32, batchnorm=False):
    layers = [nn.Flatten(), nn.Linear(64, width)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(width))
    return nn.Sequential(*layers, nn.ReLU(), nn.Linear(width, 10))


def wide_bn():
    return wide(batchnorm=True)


def three_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
'''

#: The tiny studies' flags without ``--hidden`` (a user's network is no zoo ``mlp``).
USER_FLAGS = [flag for flag in studies.TINY_FLAGS if flag not in ("--hidden", "8")]


@pytest.fixture
def user_nets(tmp_path, monkeypatch) -> Path:
    """``mynets`` importable from a folder on ``sys.path`` and ``PYTHONPATH``, as a user has it."""
    folder = tmp_path / "nets"
    folder.mkdir()
    (folder / "mynets.py").write_text(USER_NETS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    monkeypatch.delitem(sys.modules, "mynets", raising=False)
    yield folder
    sys.modules.pop("mynets", None)


def test_a_study_over_the_user_s_own_model_runs_resumes_and_keeps_its_weights(
    tmp_path, capsys, user_nets
):
    output = tmp_path / "out"
    command = ["study", "randomized-labels", "--preset", "demo", "--models", "mynets:wide"]
    command += ["--ratios", "0", "--seeds", "0", "--epochs", "1", "--output", str(output)]
    command += [*USER_FLAGS, "--measures", "hessian_trace", "--resamples", "10"]
    assert main(command) == 0
    assert "1 runs trained, 0 reused, 0 failed" in capsys.readouterr().out
    run = output / "runs" / "mynets.wide_r0_s0"
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "complete" and result["zoo"] == "mynets:wide"
    assert result["parameters"] == 64 * 32 + 32 + 32 * 10 + 10
    assert result["measures"]["hessian_trace"]["value"] > 0
    stored = json.loads((output / "study.json").read_text())["config"]["models"]
    assert stored == [{"name": "mynets.wide", "zoo": "mynets:wide", "options": {}, "training": {}}]
    assert main(command) == 0  # resumed from the recorded spec
    assert "0 runs trained, 1 reused" in capsys.readouterr().out
    # The weights alone (a factory is rebuilt only by running the user's code), for measure.
    weights = run / "checkpoint" / "model.safetensors"
    assert not (run / "checkpoint" / "checkpoint.json").exists()
    measured = tmp_path / "measured.json"
    measure = ["measure", "--model", "mynets:wide", "--weights", str(weights), "--data"]
    measure += ["digits", "--examples", "20", "--measures", "hessian_trace"]
    assert main([*measure, "--output", str(measured)]) == 0
    assert json.loads(measured.read_text())["model"]["source"] == "factory"


def test_a_config_file_gives_the_user_s_factory_its_options(tmp_path, capsys, user_nets):
    config = tmp_path / "config.json"
    model = {"name": "wide16", "zoo": "mynets:wide", "options": {"width": 16}}
    config.write_text(
        json.dumps({"models": [model], "ratios": [0.0], "measures": ["hessian_trace"]})
    )
    output = tmp_path / "out"
    command = ["study", "randomized-labels", "--config", str(config), "--output", str(output)]
    assert main([*command, *USER_FLAGS, "--epochs", "1", "--no-report"]) == 0
    result = json.loads((output / "runs" / "wide16_r0_s0" / "result.json").read_text())
    assert result["model_options"] == {"width": 16}
    assert result["parameters"] == 64 * 16 + 16 + 16 * 10 + 10


@pytest.mark.parametrize(
    ("kind", "model", "flags"),
    [
        ("batch-size", "mynets:wide", ["--batch-sizes", "16,64"]),
        ("bn-sharpness", "mynets:wide_bn", []),
    ],
)
def test_every_kind_takes_the_user_s_factory(tmp_path, capsys, user_nets, kind, model, flags):
    output = tmp_path / "out"
    command = ["study", kind, "--models", model, "--output", str(output), *USER_FLAGS, *flags]
    assert main([*command, "--epochs", "1", "--no-report"]) == 0
    results = [json.loads(p.read_text()) for p in output.glob("runs/*/result.json")]
    assert len(results) == 2 and all(r["status"] == "complete" for r in results)
    assert {r["zoo"] for r in results} == {model}
    assert main(["report", str(output)]) == 0
    assert f"`{model}`" in (output / "report.md").read_text()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("no_such_module_zz:build", "cannot import module 'no_such_module_zz'"),
        ("mynets:missing", "module 'mynets' has no 'missing'"),
        ("mynets:three_classes", "give (2, 3); the data need logits (2, 10)"),
    ],
)
def test_a_user_s_model_that_cannot_run_is_refused_before_training(
    tmp_path, capsys, user_nets, model, message
):
    command = ["study", "randomized-labels", "--models", model, "--output", str(tmp_path / "o")]
    assert main([*command, *USER_FLAGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minsharp: error: ") and message in err
    assert not list((tmp_path / "o").glob("runs/*/result.json"))

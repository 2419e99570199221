"""Studies as cluster jobs (``--launcher``): one job per run, the run store the source of truth.

submitit's local executor runs real jobs (subprocesses) here; the Slurm path is followed up
to ``sbatch`` with stand-in ``srun`` and ``sbatch`` programs on ``PATH``, which is as far as
a machine without Slurm can go.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from tests import studies
from tests.studies import quiet

from minsharp.cli.main import main
from minsharp.errors import StudyError
from minsharp.study.core import claims
from minsharp.study.core import runner as base
from minsharp.study.core.config import ModelPlan
from minsharp.study.core.launcher import JobFailure, SubmititLauncher, make_launcher
from minsharp.study.core.store import RESULT_FILE, RUNS_DIR
from minsharp.study.randomized_labels.config import StudyConfig
from minsharp.study.randomized_labels.study import RANDOMIZED_LABELS

#: The tests that submit through submitit itself (the others need none of it).
needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("submitit") is None, reason="submitit is not installed"
)

#: Two runs of the randomized-label demo, as small as a study gets.
TINY_FLAGS = [*studies.TINY_FLAGS, "--ratios", "0,1", "--epochs", "1"]
TINY_FLAGS += ["--measures", "hessian_trace", "--no-report"]


class InProcess:
    """A launcher that runs the jobs here, in turn, as a cluster would run them elsewhere.

    ``lost`` names runs whose job dies without running (a node lost, a time limit).
    """

    device = "cpu"
    threads = None
    launcher_name = "in-process"

    def __init__(self, lost: tuple[str, ...] = ()) -> None:
        self.lost = lost
        self.submitted: list[str] = []

    def run(self, folder, jobs, *, name):
        assert name == "minsharp-randomized-labels" and folder.name == "jobs"
        self.submitted += [job.plan.run_id for job in jobs]
        return [
            JobFailure("42", "DUE TO TIME LIMIT") if job.plan.run_id in self.lost else job()
            for job in jobs
        ]


def two_runs() -> StudyConfig:
    """Digits, ratios 0 and 1, one seed, an MLP 64-8-10, one epoch."""
    return studies.tiny(
        StudyConfig,
        {},
        ratios=(0.0, 1.0),
        seeds=(0,),
        models=(ModelPlan("mlp", "mlp", {"hidden": [8]}),),
        training={"epochs": 1, "batch_size": 32, "lr": 0.05},
        measures=("hessian_trace",),
    )


def results(directory: Path) -> dict[str, dict]:
    return {
        path.parent.name: json.loads(path.read_text())
        for path in sorted((directory / RUNS_DIR).glob(f"*/{RESULT_FILE}"))
    }


def test_one_job_per_run_and_the_store_decides_what_is_done(tmp_path):
    launcher = InProcess()
    outcome = base.run_study(RANDOMIZED_LABELS, two_runs(), tmp_path, echo=quiet, launcher=launcher)
    assert launcher.submitted == ["mlp_r0_s0", "mlp_r1_s0"]
    assert outcome.trained == ["mlp_r0_s0", "mlp_r1_s0"] and not outcome.failed
    assert all(record["status"] == "complete" for record in results(tmp_path).values())
    # Resumed: nothing left to submit.
    again = InProcess()
    outcome = base.run_study(RANDOMIZED_LABELS, two_runs(), tmp_path, echo=quiet, launcher=again)
    assert again.submitted == [] and outcome.reused == ["mlp_r0_s0", "mlp_r1_s0"]


def test_a_lost_job_leaves_its_run_to_the_next_resume(tmp_path):
    lost = InProcess(lost=("mlp_r1_s0",))
    outcome = base.run_study(RANDOMIZED_LABELS, two_runs(), tmp_path, echo=quiet, launcher=lost)
    assert outcome.trained == ["mlp_r0_s0"]
    assert outcome.failed == {"mlp_r1_s0": "job 42 ended without a result: DUE TO TIME LIMIT"}
    assert list(results(tmp_path)) == ["mlp_r0_s0"]
    resumed = InProcess()
    outcome = base.run_study(RANDOMIZED_LABELS, two_runs(), tmp_path, echo=quiet, launcher=resumed)
    assert resumed.submitted == ["mlp_r1_s0"] and outcome.trained == ["mlp_r1_s0"]


def test_a_job_is_idempotent_and_respects_other_workers(tmp_path):
    launcher = InProcess()
    base.run_study(RANDOMIZED_LABELS, two_runs(), tmp_path, echo=quiet, launcher=launcher)
    finished = results(tmp_path)
    config = two_runs()
    plan = RANDOMIZED_LABELS.plan_runs(config)[0]
    job = base.RunJob(
        RANDOMIZED_LABELS,
        config,
        plan,
        RANDOMIZED_LABELS.fingerprint(config, plan),
        tmp_path,
        None,
        "auto",
        1,
    )
    assert job() is None and results(tmp_path) == finished  # done already: left as it is
    (tmp_path / RUNS_DIR / plan.run_id / RESULT_FILE).unlink()
    with claims.claimed(tmp_path / RUNS_DIR / plan.run_id) as held:  # another worker has it
        assert held and job() is None
    record = job()  # free again: run, and the same run as before
    assert record["status"] == "complete" and record["run_id"] == plan.run_id
    before = finished[plan.run_id]
    for key in ("fingerprint", "train_accuracy", "test_accuracy", "parameters"):
        assert record[key] == before[key]
    trace = record["measures"]["hessian_trace"]["value"]
    assert trace == pytest.approx(before["measures"]["hessian_trace"]["value"], rel=1e-12)
    assert results(tmp_path)[plan.run_id]["finished"] == record["finished"]  # and stored


def test_a_job_refuses_data_other_than_the_study_s(tmp_path):
    base.run_study(RANDOMIZED_LABELS, two_runs(), tmp_path, echo=quiet, launcher=InProcess())
    config = dataclasses.replace(two_runs(), train_size=100)  # another split on the "node"
    plan = RANDOMIZED_LABELS.plan_runs(config)[0]
    job = base.RunJob(RANDOMIZED_LABELS, config, plan, "digest", tmp_path, None, "cpu", None)
    with pytest.raises(StudyError, match="the data differ from those"):
        job()


@needs_submitit
@pytest.mark.slow  # two job processes, each importing torch (about 10 s)
def test_the_study_command_runs_its_runs_as_submitit_local_jobs(tmp_path, capsys):
    output = tmp_path / "out"
    command = ["study", "randomized-labels", "--output", str(output), *TINY_FLAGS]
    assert main([*command, "--launcher", "submitit-local", "--time", "5"]) == 0
    out = capsys.readouterr().out
    assert "submitting 2 jobs (--launcher submitit-local" in out
    assert "2 runs trained, 0 reused, 0 failed" in out
    records = results(output)
    assert list(records) == ["mlp_r0_s0", "mlp_r1_s0"]
    workers = {record["worker"]["pid"] for record in records.values()}
    assert len(workers) == 2 and os.getpid() not in workers  # one process per run
    assert len([p for p in (output / "jobs").iterdir() if any(p.glob("*_result.pkl"))]) == 2
    assert main([*command, "--launcher", "submitit-local"]) == 0  # resumed: nothing submitted
    out = capsys.readouterr().out
    assert "0 runs trained, 2 reused" in out and "submitting" not in out


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """``srun`` and an ``sbatch`` that keeps the submission file and refuses it, on ``PATH``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "srun").write_text("#!/bin/sh\nexit 0\n")
    (folder / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {folder}/submitted.sh\n'
        'echo "sbatch: error: invalid account or account/partition combination" >&2\nexit 1\n'
    )
    for program in folder.iterdir():
        program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


@needs_submitit
def test_the_slurm_flags_become_the_job_array_s_directives(tmp_path, capsys, fake_slurm):
    command = ["study", "randomized-labels", "--output", str(tmp_path / "out"), *TINY_FLAGS]
    command += ["--launcher", "slurm", "--partition", "gpu", "--time", "90", "--mem", "16"]
    command += ["--cpus", "4", "--gpus", "1", "--launcher-option", "slurm_account=proj"]
    command += ["--device", "cuda"]  # the jobs' nodes have the GPUs, not this machine
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "--launcher slurm: cannot submit the 2 jobs" in err
    assert "invalid account or account/partition combination" in err
    script = (fake_slurm / "submitted.sh").read_text()
    for directive in (
        "--array=0-1",
        "--partition=gpu",
        "--time=90",
        "--mem=16GB",
        "--cpus-per-task=4",
        "--gpus-per-node=1",
        "--account=proj",
        "--job-name=minsharp-randomized-labels",
    ):
        assert f"#SBATCH {directive}" in script
    assert not results(tmp_path / "out")  # nothing ran


@needs_submitit
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--launcher", "slurm", "--launcher-option", "slurm_colour=red"], "invalid job param"),
        (["--launcher", "local", "--partition", "gpu"], "--launcher local runs here"),
        (["--launcher-option", "qos"], "expected KEY=VALUE"),
        (["--launcher", "slurm", "--device", "tpu"], "--device must be auto, cpu, cuda or"),
    ],
)
def test_bad_launcher_options_are_refused_before_training(
    tmp_path, capsys, fake_slurm, flags, message
):
    command = ["study", "randomized-labels", "--output", str(tmp_path / "out"), *TINY_FLAGS]
    assert main([*command, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not results(tmp_path / "out")


@needs_submitit
def test_slurm_without_srun_says_this_is_no_slurm_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StudyError, match='--launcher slurm: Could not detect "srun"'):
        SubmititLauncher("slurm").executor(tmp_path, name="x")


def test_without_submitit_the_launcher_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now fails
    with pytest.raises(StudyError, match=r"pip install 'minsharp\[cluster\]'"):
        make_launcher("slurm")
    assert make_launcher("local") is None  # today's behaviour needs nothing
    command = ["study", "randomized-labels", "--output", str(tmp_path / "out"), *TINY_FLAGS]
    assert main([*command, "--launcher", "slurm"]) == 2
    assert "needs submitit, which is not installed" in capsys.readouterr().err

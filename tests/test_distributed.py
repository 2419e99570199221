"""Data-parallel measurement on torch.distributed: 2 CPU processes (gloo) against one.

Every registered measure and the exact diagonal are computed by ``torchrun
--nproc_per_node=2`` (``tests/distributed_worker.py``) and in this process; the values must
agree to 1e-12 relative in float64 and 1e-6 in float32, on both ranks. A failure on one rank
must end both (no rank left waiting in a collective), and ``torchrun -m minsharp measure``
must print and write one report equal to the single-process one.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.distributed_worker import cases, evaluate

from minsharp.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {"float64": 1e-12, "float32": 1e-6}
#: Generous: two workers start torch (seconds each) on a 2-core machine.
TIMEOUT = 300


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=2 ARGS`` with the repository importable."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def relative_error(got: float | list[float], expected: float | list[float]) -> float:
    got_array, expected_array = np.atleast_1d(got), np.atleast_1d(expected)
    scale = np.abs(expected_array).max()
    return float(np.abs(got_array - expected_array).max() / scale) if scale else 0.0


def test_two_gloo_processes_agree_with_one(tmp_path: Path) -> None:
    finished = torchrun("tests/distributed_worker.py", str(tmp_path), "measures")
    assert finished.returncode == 0, finished.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    checked = 0
    for case, model, data, name in cases():
        expected = evaluate(model, data, name)
        tolerance = TOLERANCE[case.rsplit("/", 1)[1]]
        for rank, values in enumerate(ranks):
            error = relative_error(values[case], expected)
            assert error <= tolerance, f"{case} on rank {rank}: relative error {error:.2e}"
        checked += 1
    assert checked == len(ranks[0]) == len(ranks[1])


def test_failures_end_every_rank_with_a_clear_error(tmp_path: Path) -> None:
    finished = torchrun("tests/distributed_worker.py", str(tmp_path), "failure")
    assert finished.returncode == 0, finished.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert rank1["injected"] == {"error": "RuntimeError", "message": "injected failure"}
    assert rank0["injected"] == {
        "error": "MinsharpError",
        "message": "rank 1 of 2 failed: RuntimeError: injected failure",
    }
    for record in (rank0, rank1):
        assert record["sampler"]["error"] == "DataError"
        assert "DistributedSampler" in record["sampler"]["message"]


def test_torchrun_measure_command_matches_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = shlex.split(
        "measure --model small_mlp --random-init --data digits --examples 300 --batch-size 64 "
        "--dtype float64 --measures minimum_sharpness,top_eigenvalue,epsilon_sharpness"
    )
    distributed = tmp_path / "two.json"
    finished = torchrun("-m", "minsharp", *arguments, "--output", str(distributed))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("minimum_sharpness") == 1, "only rank 0 prints the report"
    assert "in each of 2 processes" in finished.stdout

    single = tmp_path / "one.json"
    assert main([*arguments, "--output", str(single)]) == 0
    capsys.readouterr()
    two, one = json.loads(distributed.read_text()), json.loads(single.read_text())
    assert (two["processes"], one["processes"]) == (2, 1)
    for got, expected in zip(two["measures"], one["measures"], strict=True):
        assert got["name"] == expected["name"]
        assert got["num_examples"] == expected["num_examples"] == 300
        error = relative_error(got["value"], expected["value"])
        assert error <= TOLERANCE["float64"], f"{got['name']}: relative error {error:.2e}"

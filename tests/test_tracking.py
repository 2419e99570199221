"""Sharpness during training: the plain-loop tracker and the Lightning callback."""

from __future__ import annotations

import csv
import math

import lightning.pytorch as lightning
import pytest
import torch
from torch import nn

import minsharp
from minsharp.errors import MinsharpError
from minsharp.training.tracking import SharpnessTracker


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=generator, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=generator
    )


def _train(model: nn.Module, tracker: SharpnessTracker, steps: int) -> None:
    x, y = _data()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, steps + 1):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
        tracker.after_step(model, step)


def test_the_tracker_measures_every_n_steps_the_values_minsharp_gives(tmp_path):
    model, (x, _) = _net(), _data()
    path = tmp_path / "sharpness.csv"
    tracker = SharpnessTracker(x, every=3, csv_path=path)
    _train(model, tracker, 7)
    assert [row["step"] for row in tracker.rows] == [3, 6]
    # The last row is the model as it was at step 6: retrain a copy to that point and compare.
    twin = _net()
    _train(twin, SharpnessTracker(x, every=100), 6)
    assert tracker.rows[-1]["hessian_trace"] == pytest.approx(
        minsharp.hessian_trace(twin.eval(), x).total, rel=1e-12
    )
    assert tracker.rows[-1]["minimum_sharpness"] == pytest.approx(
        minsharp.minimum_sharpness(twin, x).value, rel=1e-12
    )
    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["step"]) for row in rows] == [3, 6]
    assert float(rows[1]["minimum_sharpness"]) == tracker.rows[1]["minimum_sharpness"]
    assert all(float(row["hessian_trace_seconds"]) > 0 for row in rows)


def test_the_model_is_measured_in_eval_mode_and_handed_back_in_its_mode():
    model, (x, _) = (
        nn.Sequential(nn.Linear(5, 7), nn.Dropout(0.5), nn.ReLU(), nn.Linear(7, 3)),
        _data(),
    )
    model = model.double().train()
    tracker = SharpnessTracker(x.double(), every=1, measures=["hessian_trace"])
    first = tracker.after_step(model, 1)["hessian_trace"]
    assert model.training
    assert tracker.after_step(model, 2)["hessian_trace"] == first  # dropout off: deterministic
    assert tracker.after_step(model.eval(), 3)["hessian_trace"] == first and not model.training


def test_a_resumed_run_appends_to_its_csv_and_other_columns_are_refused(tmp_path):
    path, (x, _) = tmp_path / "s.csv", _data()
    SharpnessTracker(x, every=1, measures=["hessian_trace"], csv_path=path).after_step(_net(), 1)
    SharpnessTracker(x, every=1, measures=["hessian_trace"], csv_path=path).after_step(_net(), 2)
    lines = path.read_text().splitlines()
    assert lines[0] == "step,hessian_trace,hessian_trace_seconds" and len(lines) == 3
    with pytest.raises(MinsharpError, match="not this tracker's"):
        SharpnessTracker(x, measures=["minimum_sharpness"], csv_path=path)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"every": 0}, "every must be"),
        ({"measures": "hessian_trace"}, "non-empty sequence"),
        ({"measures": ["hessian_tracee"]}, "Did you mean hessian_trace"),
        (
            {"options": {"hessian_trace": {"batch_size": 8}}, "measures": ["minimum_sharpness"]},
            "not among the tracked",
        ),
        ({"options": {"hessian_trace": {"batchsize": 8}}}, "has no option"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(arguments, message):
    with pytest.raises(MinsharpError, match=message):
        SharpnessTracker(_data()[0], **arguments)


def test_a_non_finite_value_is_written_as_such(tmp_path):
    from minsharp.training.tracking import _cell

    assert _cell(math.nan) == "nan" and _cell(3) == "3" and float(_cell(0.1)) == 0.1


class _Module(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_lightning_callback_logs_to_the_trainers_loggers(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from minsharp.training.lightning_callback import SharpnessCallback

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    callback = SharpnessCallback(SharpnessTracker(x, every=2, csv_path=tmp_path / "own.csv"))
    trainer = lightning.Trainer(
        max_steps=6,
        logger=CSVLogger(tmp_path),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        log_every_n_steps=1,
    )
    module = _Module()
    trainer.fit(module, loader)
    assert [row["step"] for row in callback.tracker.rows] == [2, 4, 6]
    with open(trainer.logger.log_dir + "/metrics.csv", newline="") as stream:
        logged = [row for row in csv.DictReader(stream) if row.get("sharpness/hessian_trace")]
    assert [int(row["step"]) for row in logged] == [2, 4, 6]
    final = minsharp.hessian_trace(module.net.eval(), x).total
    assert float(logged[-1]["sharpness/hessian_trace"]) == pytest.approx(final, rel=1e-12)


def test_the_overhead_benchmark_runs_in_its_quick_mode(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    output = tmp_path / "tracking.md"
    completed = subprocess.run(
        [sys.executable, "benchmarks/tracking_overhead.py", "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=repo,
    )
    assert completed.returncode == 0, completed.stderr
    text = output.read_text()
    assert "QUICK MODE" in text and "| tracked every |" in text and "- machine: " in text


def test_the_callback_wants_a_tracker():
    from minsharp.training.lightning_callback import SharpnessCallback

    with pytest.raises(MinsharpError, match="takes a SharpnessTracker"):
        SharpnessCallback(_data()[0])

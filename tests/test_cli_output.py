"""What `minsharp measure` writes and prints: --output targets, versions, formats, listings."""

from __future__ import annotations

import importlib.metadata
import json
import os
import stat
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import minsharp
from minsharp.cli.main import main
from minsharp.errors import ModelError
from minsharp.io import load_weights, package_version, write_output
from minsharp.models import build_model
from minsharp.training.checkpoint import WEIGHTS_FILE, save_checkpoint

#: A quick measure of a freshly initialised zoo network on ten digits.
QUICK = ["--model", "small_mlp", "--random-init", "--data", "digits", "--examples", "10"]


def measure(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["measure", "--threads", "1", *QUICK, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_report(report: dict, names: list[str]) -> None:
    assert report["format"] == "minsharp-measure"
    assert report["version"] == 1
    assert [entry["name"] for entry in report["measures"]] == names
    assert all(entry["value"] > 0 for entry in report["measures"])


# --- --output ------------------------------------------------------------------------------


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_symlink_is_followed_and_stays_a_symlink(capsys, tmp_path, target_exists):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    target = folder / "report.json"
    if target_exists:
        target.write_text("old content\n")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    code, out, _ = measure(capsys, "--measures", "hessian_trace", "--output", str(link))
    assert code == 0
    assert link.is_symlink() and link.resolve() == target.resolve()
    check_report(json.loads(target.read_text()), ["hessian_trace"])
    assert sorted(p.name for p in folder.iterdir()) == ["report.json"]  # no temporary left
    assert f"wrote {link}" in out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_written_into_and_stays_a_fifo(capsys, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []

    def read() -> None:
        with open(fifo, encoding="utf-8") as stream:  # blocks until the command opens it
            received.append(stream.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code, _, err = measure(capsys, "--measures", "hessian_trace", "--output", str(fifo))
    reader.join(timeout=30)
    assert code == 0, err
    assert not reader.is_alive()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    check_report(json.loads(received[0]), ["hessian_trace"])


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")
def test_a_character_device_is_written_in_place():
    controller, terminal = os.openpty()
    path = os.ttyname(terminal)
    try:
        write_output(path, "{}\n")
        assert stat.S_ISCHR(os.stat(path).st_mode)
        assert os.read(controller, 100).strip() == b"{}"
    finally:
        os.close(terminal)
        os.close(controller)


def test_output_dash_prints_the_json_alone_on_stdout(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = measure(capsys, "--measures", "hessian_trace", "--output", "-")
    assert code == 0
    check_report(json.loads(out), ["hessian_trace"])  # nothing else on stdout
    assert "hessian_trace" in err and "wrote" not in err  # the table went to stderr
    assert not (tmp_path / "-").exists()


def test_an_output_in_a_missing_directory_is_refused_before_computing(capsys, tmp_path):
    code, out, err = measure(capsys, "--output", str(tmp_path / "missing" / "out.json"))
    assert code == 2
    assert "does not exist" in err and out == ""


# --- versions and formats ------------------------------------------------------------------


def test_version_flag_and_attribute_come_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    installed = importlib.metadata.version("minsharp")
    assert capsys.readouterr().out.strip() == f"minsharp {installed}"
    assert minsharp.__version__ == installed


def test_version_of_an_uninstalled_checkout_is_read_from_pyproject(monkeypatch):
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    version = package_version()
    pyproject = (Path(minsharp.__file__).parents[2] / "pyproject.toml").read_text()
    assert version.endswith("+source")
    assert f'version = "{version.removesuffix("+source")}"' in pyproject


def test_measures_json_lists_every_measure_with_options_and_requirements(capsys):
    assert main(["measures", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["format"] == "minsharp-measures" and listing["version"] == 1
    entries = {entry["name"]: entry for entry in listing["measures"]}
    assert sorted(entries) == minsharp.available()
    for name, entry in entries.items():
        chosen = minsharp.measures.spec(name)
        assert entry["options"] == json.loads(json.dumps(chosen.defaults, default=str))
        assert entry["requires"] == sorted(chosen.requires)
    assert "batchnorm" in entries["bn_sharpness"]["requires"]
    assert entries["minimum_sharpness"]["options"]["symmetry"] == "layer"


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["measure", "--bogus"], "usage: minsharp measure "),
        (["measures", "--bogus"], "usage: minsharp measures "),
        (["study", "randomized-labels", "--bogus"], "usage: minsharp study randomized-labels "),
        (["report", "dir", "--bogus"], "usage: minsharp report "),
    ],
)
def test_an_unknown_flag_prints_the_subcommand_usage(capsys, argv, usage):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage)
    assert "unrecognized arguments: --bogus" in err


# --- measures that do not apply ------------------------------------------------------------

RESIDUAL = """
import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(64, 64)
        self.last = nn.Linear(64, 10)

    def forward(self, x):
        return self.last(x + torch.relu(self.first(x)))
"""


def test_a_measure_that_does_not_apply_is_recorded_and_costs_the_others_nothing(capsys, tmp_path):
    output = tmp_path / "out.json"
    code, out, err = measure(
        capsys, "--measures", "bn_sharpness,hessian_trace", "--output", str(output)
    )
    assert code == 0, err
    report = json.loads(output.read_text())
    check_report(report, ["hessian_trace"])
    assert report["failures"] == []
    [skipped] = report["not_applicable"]
    assert skipped["name"] == "bn_sharpness" and "batch-norm" in skipped["reason"]
    assert "n/a" in out and "bn_sharpness does not apply to this model" in out


def test_minimum_sharpness_applies_to_a_residual_net(capsys, tmp_path, monkeypatch):
    (tmp_path / "residual_nets.py").write_text(textwrap.dedent(RESIDUAL))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "residual_nets", raising=False)
    output = tmp_path / "out.json"
    code = main(
        [
            "measure",
            *("--model", "residual_nets:Residual", "--random-init", "--data", "digits"),
            *("--examples", "10", "--measures", "minimum_sharpness,hessian_trace"),
            *("--output", str(output)),
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads(output.read_text())
    check_report(report, ["minimum_sharpness", "hessian_trace"])
    assert report["not_applicable"] == []


def test_when_no_measure_applies_the_command_fails(capsys):
    code, _, err = measure(capsys, "--measures", "bn_sharpness")
    assert code == 2
    assert "none of the measures applies to this model (bn_sharpness)" in err


# --- weights -------------------------------------------------------------------------------


def batchnorm_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("mlp", (64,), 10, hidden=[8], batchnorm=True)
    model.train()
    model(torch.randn(16, 64))  # running statistics and counters away from their defaults
    return model.eval()


def test_state_dicts_without_num_batches_tracked_load(capsys, tmp_path):
    trained = batchnorm_mlp()
    state = {k: v for k, v in trained.state_dict().items() if "num_batches_tracked" not in k}
    assert len(state) < len(trained.state_dict())
    path = tmp_path / "old.safetensors"
    save_file(state, path)
    fresh = build_model("mlp", (64,), 10, hidden=[8], batchnorm=True)
    load_weights(fresh, path, model_name="mlp")
    for key, value in fresh.state_dict().items():
        expected = torch.tensor(0) if key.endswith("num_batches_tracked") else state[key]
        assert torch.equal(value, expected), key
    code = main(
        [
            "measure",
            *("--model", "mlp", "--model-option", "hidden=[8]", "--model-option", "batchnorm=True"),
            *("--weights", str(path), "--data", "digits", "--examples", "10"),
            *("--measures", "hessian_trace"),
        ]
    )
    assert code == 0, capsys.readouterr().err


def test_a_bit_flipped_checkpoint_payload_is_refused(capsys, tmp_path):
    model = build_model("small_mlp", (64,), 10)
    spec = {"name": "small_mlp", "input_shape": [64], "num_classes": 10}
    save_checkpoint(tmp_path / "ck", model, model_spec=spec, record={})
    weights = tmp_path / "ck" / WEIGHTS_FILE
    args = ["measure", "--model", "small_mlp", "--weights", str(weights), "--data", "digits"]
    args += ["--examples", "10", "--measures", "hessian_trace"]
    assert main(args) == 0
    payload = bytearray(weights.read_bytes())
    payload[-3] ^= 0x01  # inside the last tensor's data: still a readable file
    weights.write_bytes(bytes(payload))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "does not match checkpoint" in err and "SHA-256" in err
    with pytest.raises(ModelError, match="does not match checkpoint"):
        minsharp.training.load_checkpoint(tmp_path / "ck")


# --- progress bars -------------------------------------------------------------------------


def test_every_progress_bar_has_a_total(capsys):
    names = "hessian_trace,fisher_rao,relative_flatness,pac_bayes_flatness"
    quick = ["--option", "pac_bayes_flatness.samples=2"]
    code, _, err = measure(capsys, "--measures", names, *quick, "--progress", "--batch-size", "4")
    assert code == 0, err
    bars = {}
    for line in err.replace("\r", "\n").splitlines():
        description, colon, rest = line.partition(":")
        if colon and "|" in rest:
            bars[description.strip()] = rest.split("|")[2].split()[0]  # "done/total"
    assert bars.keys() >= {"curvature", "fisher-rao", "relative flatness", "PAC-Bayes σ"}
    for description, counts in bars.items():
        done, _, total = counts.partition("/")
        assert total.isdigit() and done == total, (description, counts)
    assert bars["curvature"] == bars["fisher-rao"] == "3/3"  # 10 examples in batches of 4

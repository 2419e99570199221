"""`minsharp measure` end to end: models, weights, data, JSON, table, and every refusal."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tests.idx import write_idx

import minsharp
from minsharp.cli.main import main
from minsharp.cli.measure import parse_value
from minsharp.data import load_digits, load_mnist_split
from minsharp.io import write_json_atomic
from minsharp.models import build_model

EXAMPLES = 40
BOTH = "hessian_trace,minimum_sharpness"

FACTORY_MODULE = "minsharp_cli_test_factories"
FACTORY_SOURCE = '''
import torch
from torch import nn


def build(width=8, num_classes=10):
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))


def with_dropout():
    """A model left in training mode with dropout: measurable only once put in eval mode."""
    return nn.Sequential(nn.Linear(64, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 10))


class Branchy(nn.Module):
    """Untraceable (it branches on a value): Minimum Sharpness refuses it, the trace does not."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(64, 64)
        self.last = nn.Linear(64, 10)

    def forward(self, x):
        hidden = torch.relu(self.first(x))
        return self.last(hidden if hidden.sum() > 0 else -hidden)


def smooth():
    """Not piecewise linear: the exact Hessian trace refuses it, the top eigenvalue does not."""
    return nn.Sequential(nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))


def not_a_module():
    return "a string"


def broken():
    raise RuntimeError("factory exploded")
'''


class Payload:
    """Pickles to a call of ``open(marker, "w")``: harmless, but it leaves a trace."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["measure", "--threads", "1", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fails(capsys, *args: str) -> str:
    """Run, expect exit 2 and one `minsharp: error:` line; return the message."""
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert err.startswith("minsharp: error: ")
    return err


def digits_subset(count: int = EXAMPLES, split: str = "train"):
    train, test = load_digits()
    inputs, labels = train if split == "train" else test
    return inputs[:count], labels[:count]


@pytest.fixture
def small_mlp():
    torch.manual_seed(1)
    return build_model("small_mlp", (64,), 10)


@pytest.fixture
def weights(tmp_path, small_mlp) -> Path:
    path = tmp_path / "net.safetensors"
    save_file(small_mlp.state_dict(), path)
    return path


@pytest.fixture
def factories(tmp_path, monkeypatch):
    folder = tmp_path / "factories"
    folder.mkdir()
    (folder / f"{FACTORY_MODULE}.py").write_text(textwrap.dedent(FACTORY_SOURCE))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, FACTORY_MODULE, raising=False)
    yield FACTORY_MODULE
    sys.modules.pop(FACTORY_MODULE, None)


def direct(name: str, model: torch.nn.Module, data, **options) -> float:
    model.eval()
    return minsharp.measure(name, model, data, **options).value


def assert_report_matches_api(report: dict, model: torch.nn.Module, data, rel: float) -> None:
    """Every measure in the command's JSON equals calling ``minsharp.measure`` directly."""
    for entry in report["measures"]:
        assert entry["value"] == pytest.approx(direct(entry["name"], model, data), rel=rel)


# --- the happy paths -----------------------------------------------------------------------


def test_zoo_model_with_safetensors_weights_writes_json_equal_to_the_api(
    capsys, tmp_path, small_mlp, weights
):
    output = tmp_path / "results.json"
    code, out, err = run(
        capsys,
        *("--model", "small_mlp", "--weights", str(weights), "--data", "digits"),
        *("--examples", str(EXAMPLES), "--measures", BOTH, "--output", str(output)),
    )
    assert code == 0, err
    report = json.loads(output.read_text())
    data = digits_subset()
    results = {entry["name"]: entry for entry in report["measures"]}
    assert list(results) == ["hessian_trace", "minimum_sharpness"]
    for name, entry in results.items():
        expected = minsharp.measure(name, small_mlp.eval(), data)
        assert entry["value"] == pytest.approx(expected.value, rel=1e-10)
        assert entry["num_examples"] == EXAMPLES
        assert entry["invariances"] == list(expected.invariances)
        assert entry["options"] == expected.options
    assert results["minimum_sharpness"]["certificate"]["method"] == "osborne+newton"
    assert report["model"] == {
        "spec": "small_mlp",
        "source": "zoo",
        "options": {"bias": True},
        "parameters": minsharp.models.count_parameters(small_mlp),
        "num_classes": 10,
    }
    assert report["weights"] == {
        "path": str(weights.resolve()),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    assert report["data"]["spec"] == "digits"
    assert report["data"]["split"] == "train"
    assert report["data"]["num_examples"] == EXAMPLES
    assert (report["dtype"], report["device"]) == ("float32", "cpu")
    assert report["torch_version"] == torch.__version__
    assert report["minsharp_version"]
    assert report["date"][:4].isdigit()
    assert report["failures"] == []
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # the table
    assert "measure" in out and "invariances" in out and "certificate" in out
    ms_row = next(line for line in out.splitlines() if line.startswith("minimum_sharpness"))
    assert "layer" in ms_row and "newton" in ms_row
    assert f"{results['minimum_sharpness']['value']:.6g}" in ms_row
    assert f"wrote {output}" in out


@pytest.mark.parametrize("layout", ["state_dict", "checkpoint", "model_key"])
def test_pt_weights_as_state_dict_or_checkpoint(capsys, tmp_path, small_mlp, layout):
    state = small_mlp.state_dict()
    content = {
        "state_dict": state,
        "checkpoint": {"state_dict": state, "epoch": 3},
        "model_key": {"model": state, "optimizer": {"lr": 0.1}},
    }[layout]
    path = tmp_path / "net.pt"
    torch.save(content, path)
    output = tmp_path / "out.json"
    code, _, err = run(
        capsys,
        *("--model", "small_mlp", "--weights", str(path), "--data", "digits"),
        *("--examples", "20", "--measures", "hessian_trace", "--output", str(output)),
    )
    assert code == 0, err
    value = json.loads(output.read_text())["measures"][0]["value"]
    assert value == pytest.approx(direct("hessian_trace", small_mlp, digits_subset(20)), rel=1e-10)


def test_factory_model_with_options_float64_and_test_split(capsys, tmp_path, factories):
    module = __import__(factories)
    torch.manual_seed(3)
    model = module.build(width=7)
    path = tmp_path / "factory.safetensors"
    save_file(model.state_dict(), path)
    output = tmp_path / "out.json"
    code, out, err = run(
        capsys,
        *("--model", f"{factories}:build", "--model-option", "width=7"),
        *("--weights", str(path), "--data", "digits", "--split", "test", "--examples", "30"),
        *("--measures", BOTH, "--dtype", "float64", "--output", str(output)),
    )
    assert code == 0, err
    report = json.loads(output.read_text())
    assert report["model"]["source"] == "factory"
    assert report["model"]["options"] == {"width": 7}
    assert report["dtype"] == "float64"
    assert report["data"]["split"] == "test"
    data = digits_subset(30, "test")
    data = (data[0].double(), data[1])
    assert_report_matches_api(report, model.double(), data, rel=1e-12)
    assert "float64 on cpu" in out


def test_the_model_is_measured_in_eval_mode(capsys, factories):
    code, _, err = run(
        capsys,
        *("--model", f"{factories}:with_dropout", "--random-init", "--data", "digits"),
        *("--examples", "10", "--measures", "hessian_trace"),
    )
    assert code == 0, err


def test_random_init_is_seeded(capsys, tmp_path):
    values = []
    for seed in ("0", "0", "1"):
        output = tmp_path / f"seed{len(values)}.json"
        code, _, err = run(
            capsys,
            *("--model", "mlp", "--model-option", "hidden=[12]", "--random-init"),
            *("--seed", seed, "--data", "digits", "--examples", "10"),
            *("--measures", "hessian_trace", "--output", str(output)),
        )
        assert code == 0, err
        report = json.loads(output.read_text())
        assert report["weights"] is None and report["random_init_seed"] == int(seed)
        values.append(report["measures"][0]["value"])
    assert values[0] == values[1] != values[2]


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt"])
def test_file_data(capsys, tmp_path, small_mlp, weights, suffix):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(12, 64, generator=generator)
    labels = torch.randint(0, 10, (12,), generator=generator)
    path = tmp_path / f"batch{suffix}"
    if suffix == ".safetensors":
        save_file({"inputs": inputs, "labels": labels}, path)
    elif suffix == ".npz":
        np.savez(path, inputs=inputs.numpy(), labels=labels.numpy())
    else:
        torch.save({"inputs": inputs, "labels": labels}, path)
    output = tmp_path / "out.json"
    code, _, err = run(
        capsys,
        *("--model", "small_mlp", "--weights", str(weights), "--data", f"file:{path}"),
        *("--num-classes", "10", "--measures", BOTH, "--output", str(output)),
    )
    assert code == 0, err
    report = json.loads(output.read_text())
    assert report["data"]["num_examples"] == 12
    assert report["data"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert_report_matches_api(report, small_mlp, (inputs, labels), rel=1e-10)


def test_mnist_directory_with_lenet(capsys, tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (6, 16, 16)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, (6,)))
    output = tmp_path / "out.json"
    code, _, err = run(
        capsys,
        *("--model", "lenet", "--random-init", "--seed", "2", "--data", f"mnist:{folder}"),
        *("--measures", "hessian_trace", "--output", str(output)),
    )
    assert code == 0, err
    report = json.loads(output.read_text())
    assert report["data"]["split"] == "test"
    assert report["data"]["input_shape"] == [1, 16, 16]
    torch.manual_seed(2)
    model = build_model("lenet", (1, 16, 16), 10)
    expected = direct("hessian_trace", model, load_mnist_split(folder, "test"))
    assert report["measures"][0]["value"] == pytest.approx(expected, rel=1e-10)


SMOOTH_PAIR = "hessian_trace,top_eigenvalue"


def test_keep_going_records_the_failure_and_exits_2(capsys, tmp_path, factories):
    output = tmp_path / "out.json"
    code, out, err = run(
        capsys,
        *("--model", f"{factories}:smooth", "--random-init", "--data", "digits"),
        *("--examples", "10", "--measures", SMOOTH_PAIR, "--keep-going", "--output", str(output)),
    )
    assert code == 2
    assert "1 of 2 measures failed: hessian_trace" in err
    report = json.loads(output.read_text())
    assert [entry["name"] for entry in report["measures"]] == ["top_eigenvalue"]
    assert report["failures"][0]["name"] == "hessian_trace"
    assert report["failures"][0]["error"] == "NotPiecewiseLinearError"
    assert "FAILED" in out


def test_a_failing_measure_stops_the_command_and_writes_nothing(capsys, tmp_path, factories):
    output = tmp_path / "out.json"
    err = fails(
        capsys,
        *("--model", f"{factories}:smooth", "--random-init", "--data", "digits"),
        *("--examples", "10", "--measures", SMOOTH_PAIR, "--output", str(output)),
    )
    assert "measure 'hessian_trace' failed" in err
    assert not output.exists()


@pytest.mark.parametrize("how", [["measures"], ["measure", "--list"]])
def test_listing_the_measures(capsys, how):
    assert main(how) == 0
    out = capsys.readouterr().out
    for name in minsharp.available():
        assert f"\n{name}" in f"\n{out}"
        defaults = minsharp.measures.spec(name).defaults
        assert " ".join(f"{k}={v!r}" for k, v in defaults.items()) in out
    assert "invariant to: layer" in out
    assert "requires:" in out


# --- refusals ------------------------------------------------------------------------------


def test_unknown_measure(capsys, weights):
    err = fails(
        capsys,
        "--model",
        "small_mlp",
        "--weights",
        str(weights),
        "--data",
        "digits",
        "--measures",
        "hessian_trac",
    )
    assert "unknown measure 'hessian_trac'" in err
    assert "Did you mean hessian_trace" in err


def test_unknown_measure_option(capsys, weights):
    base = ("--model", "small_mlp", "--weights", str(weights), "--data", "digits")
    err = fails(capsys, *base, "--measures", "hessian_trace", "--option", "hessian_trace.rho=1")
    assert "measure 'hessian_trace' has no option 'rho'" in err
    assert "curvature='hessian', batch_size=None" in err
    err = fails(
        capsys, *base, "--measures", "hessian_trace", "--option", "minimum_sharpness.seed=1"
    )
    assert "not among the measures to compute" in err
    err = fails(capsys, *base, "--option", "batch_size=3")
    assert "expected MEASURE.KEY=VALUE" in err


@pytest.mark.parametrize(
    ("saved", "expected"),
    [
        (lambda: minsharp.models.mlp(64, [20, 20], 10, bias=False), "missing keys [1.bias, "),
        (lambda: minsharp.models.mlp(64, [20, 20, 20], 10), "unexpected keys [7.weight, 7.bias]"),
        (
            lambda: minsharp.models.mlp(64, [16, 20], 10),
            "1.weight: file (16, 64) vs model (20, 64)",
        ),
    ],
    ids=["missing", "unexpected", "shapes"],
)
def test_weights_that_do_not_fit(capsys, tmp_path, saved, expected):
    path = tmp_path / "other.pt"
    torch.save(saved().state_dict(), path)
    err = fails(capsys, "--model", "small_mlp", "--weights", str(path), "--data", "digits")
    assert expected in err
    assert f"weights file {path} does not fit model small_mlp" in err


def test_weights_missing_keys_and_prefix_hint(capsys, tmp_path, small_mlp):
    path = tmp_path / "partial.safetensors"
    state = small_mlp.state_dict()
    save_file({k: v for k, v in state.items() if k != "3.bias"}, path)
    err = fails(capsys, "--model", "small_mlp", "--weights", str(path), "--data", "digits")
    assert "missing keys [3.bias]" in err
    wrapped = tmp_path / "wrapped.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, wrapped)
    err = fails(capsys, "--model", "small_mlp", "--weights", str(wrapped), "--data", "digits")
    assert "prefix 'module.'" in err


def test_weights_file_that_is_not_a_state_dict(capsys, tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    err = fails(capsys, "--model", "small_mlp", "--weights", str(path), "--data", "digits")
    assert "holds a list; expected a state dict" in err
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    err = fails(capsys, "--model", "small_mlp", "--weights", str(garbage), "--data", "digits")
    assert "not a readable .safetensors file" in err
    err = fails(
        capsys, "--model", "small_mlp", "--weights", str(tmp_path / "absent.pt"), "--data", "digits"
    )
    assert "absent.pt does not exist" in err


@pytest.mark.parametrize("container", ["torch.save", "pickle"])
def test_a_malicious_pickle_is_refused_and_not_executed(capsys, tmp_path, container):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    content = {"0.weight": torch.zeros(2), "payload": Payload(marker)}
    if container == "torch.save":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=2))
    err = fails(capsys, "--model", "small_mlp", "--weights", str(path), "--data", "digits")
    assert f"refused to load weights file {path}" in err
    assert "arbitrary code" in err
    assert not marker.exists()
    err = fails(capsys, "--model", "small_mlp", "--random-init", "--data", f"file:{path}")
    assert f"refused to load data file {path}" in err
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    if container == "torch.save":
        torch.load(path, weights_only=False)["payload"].close()
        assert marker.exists()


def test_cifar10_directory_with_small_cnn(capsys, tmp_path):
    """cifar10:DIR reads test_batch.bin (the default split) through the one data-spec parser."""
    from minsharp.data import cifar, load_examples

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    folder = tmp_path / "cifar" / cifar.FOLDER
    folder.mkdir(parents=True)
    records = np.concatenate([labels[:, None], images.reshape(5, -1)], axis=1)
    (folder / cifar.TEST_BATCH).write_bytes(records.tobytes())
    output = tmp_path / "out.json"
    code, out, err = run(
        capsys,
        *("--model", "small_cnn", "--random-init", "--seed", "1"),
        *("--data", f"cifar10:{tmp_path / 'cifar'}", "--examples", "4"),
        *("--measures", "hessian_trace", "--output", str(output)),
    )
    assert code == 0, err
    assert "(test split): 4 examples of shape (3, 32, 32)" in out
    report = json.loads(output.read_text())
    assert report["data"]["source"] == "cifar10"
    assert report["data"]["split"] == "test"
    data = load_examples(f"cifar10:{tmp_path / 'cifar'}", None, 4)
    expected_first = cifar.to_tensor(images[:1])
    assert torch.equal(data.inputs[:1], expected_first)
    assert data.labels.tolist() == labels[:4].astype(np.int64).tolist()
    torch.manual_seed(1)
    model = build_model("small_cnn", (3, 32, 32), 10)
    expected = direct("hessian_trace", model, (data.inputs, data.labels))
    assert report["measures"][0]["value"] == pytest.approx(expected, rel=1e-10)
    err = fails(
        capsys,
        "--model",
        "small_cnn",
        "--random-init",
        "--data",
        f"cifar10:{tmp_path / 'cifar'}",
        "--split",
        "train",
    )
    assert "CIFAR-10 train batch files data_batch_1.bin" in err


def test_bad_data(capsys, tmp_path):
    base = ("--model", "small_mlp", "--random-init")
    err = fails(capsys, *base, "--data", f"file:{tmp_path / 'absent.npz'}")
    assert "absent.npz does not exist" in err
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((3, 64), np.float32), labels=np.zeros(3, np.int64))
    err = fails(capsys, *base, "--data", f"file:{wrong}")
    assert "has no 'inputs'" in err and "'x'" in err
    objects = tmp_path / "objects.npz"
    np.savez(objects, inputs=np.array([{"a": 1}], dtype=object), labels=np.zeros(1))
    err = fails(capsys, *base, "--data", f"file:{objects}")
    assert "refused to load data file" in err
    pixels = tmp_path / "pixels.safetensors"
    save_file({"inputs": torch.zeros(3, 64, dtype=torch.uint8), "labels": torch.zeros(3)}, pixels)
    err = fails(capsys, *base, "--data", f"file:{pixels}")
    assert "'inputs' must be floating point" in err
    err = fails(capsys, *base, "--data", f"mnist:{tmp_path / 'nowhere'}")
    assert "does not exist" in err
    err = fails(capsys, *base, "--data", "cifar")
    assert "unknown data set 'cifar'; known: digits, mnist, fashion-mnist, cifar10" in err
    assert "digits, mnist:DIR, fashion-mnist:DIR, cifar10:DIR or file:PATH" in err
    err = fails(capsys, *base, "--data", "digits", "--examples", "100000")
    assert "has only 1348 examples" in err


def test_labels_beyond_the_model_outputs(capsys, tmp_path, factories):
    path = tmp_path / "many.safetensors"
    save_file({"inputs": torch.rand(4, 64), "labels": torch.tensor([0, 1, 12, 3])}, path)
    err = fails(capsys, "--model", f"{factories}:build", "--random-init", "--data", f"file:{path}")
    assert "has 10 outputs" in err and "labels up to 12" in err


def test_cuda_requested_without_cuda(capsys, weights, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = fails(
        capsys,
        "--model",
        "small_mlp",
        "--weights",
        str(weights),
        "--data",
        "digits",
        "--device",
        "cuda",
    )
    assert "--device cuda: CUDA is not available" in err
    err = fails(
        capsys,
        "--model",
        "small_mlp",
        "--weights",
        str(weights),
        "--data",
        "digits",
        "--device",
        "gpu",
    )
    assert "--device must be cpu, cuda or cuda:N" in err


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("a:b:c", "expected a model name"),
        ("my-nets:build", "expected a model name"),
        ("mod:", "expected a model name"),
        ("smal_mlp", "unknown model 'smal_mlp'. Did you mean small_mlp?"),
        ("no_such_module_here:build", "cannot import module 'no_such_module_here'"),
    ],
)
def test_bad_model_syntax(capsys, spec, expected):
    err = fails(capsys, "--model", spec, "--random-init", "--data", "digits")
    assert expected in err


def test_bad_factories_and_model_options(capsys, factories):
    base = ("--random-init", "--data", "digits")
    err = fails(capsys, "--model", f"{factories}:missing", *base)
    assert "has no 'missing'" in err
    err = fails(capsys, "--model", f"{factories}:not_a_module", *base)
    assert "returned a str; it must return a torch.nn.Module" in err
    err = fails(capsys, "--model", f"{factories}:broken", *base)
    assert "RuntimeError: factory exploded" in err
    err = fails(capsys, "--model", f"{factories}:build", "--model-option", "depth=3", *base)
    assert "unexpected keyword argument 'depth'" in err
    err = fails(capsys, "--model", "small_mlp", "--model-option", "hidden=[3]", *base)
    assert "model 'small_mlp' has no option 'hidden'; its options are: bias=True" in err
    err = fails(capsys, "--model", "mlp", "--model-option", "hidden=[3, x", *base)
    assert "cannot read the value '[3, x'" in err
    err = fails(capsys, "--model", "lenet", *base)
    assert "takes images of shape (channels, height, width)" in err


def test_usage_errors(capsys, tmp_path, weights):
    err = fails(capsys, "--model", "small_mlp", "--data", "digits")
    assert "--weights FILE" in err and "--random-init" in err
    err = fails(
        capsys,
        "--model",
        "small_mlp",
        "--weights",
        str(weights),
        "--random-init",
        "--data",
        "digits",
    )
    assert "exclude each other" in err
    err = fails(capsys, "--random-init", "--data", "digits")
    assert "needs --model and --data" in err
    err = fails(
        capsys,
        "--model",
        "small_mlp",
        "--random-init",
        "--data",
        "digits",
        "--output",
        str(tmp_path / "no" / "dir.json"),
    )
    assert "does not exist" in err
    with pytest.raises(SystemExit) as stop:
        main(["measure", "--dtype", "float16"])
    assert stop.value.code == 2


# --- pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("1e-3", 1e-3),
        ("[64, 32]", [64, 32]),
        ("'inf'", "inf"),
        ("True", True),
        ("false", False),
        ("None", None),
        ("adaptive", "adaptive"),
        ("runs/a.pt", "runs/a.pt"),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text, flag="--option") == value


def test_json_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"value": float("inf"), "tensor": torch.tensor([1.0, 2.0])})
    assert json.loads(path.read_text()) == {"value": "inf", "tensor": [1.0, 2.0]}

    def interrupted(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(minsharp.MinsharpError, match="disk full"):
        write_json_atomic(path, {"value": 2})
    assert json.loads(path.read_text())["value"] == "inf"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_an_internal_error_in_a_measure_is_reported_per_measure(
    tmp_path, monkeypatch, capsys
) -> None:
    from minsharp.measures import registry

    def broken(model, data, *, batch_size: int = 256, progress: bool = False):
        """Stands in for a measure with a bug."""
        raise RuntimeError("boom")

    fake = dataclasses.replace(registry.spec("hessian_trace"), name="broken", compute=broken)
    monkeypatch.setitem(registry._REGISTRY, "broken", fake)
    output = tmp_path / "out.json"
    argv = [
        "measure",
        "--model",
        "small_mlp",
        "--random-init",
        "--data",
        "digits",
        "--examples",
        "20",
        "--measures",
        "hessian_trace,broken",
        "--output",
        str(output),
    ]
    assert main([*argv, "--keep-going"]) == 2
    content = json.loads(output.read_text())
    assert [r["name"] for r in content["measures"]] == ["hessian_trace"]
    assert "internal error (RuntimeError: boom)" in content["failures"][0]["message"]
    assert main(argv) == 2
    assert "measure 'broken' failed: internal error" in capsys.readouterr().err

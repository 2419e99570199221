"""Bad input wherever users reach minsharp: every public function and every CLI subcommand.

Three parts, each a table of cases with one test id per case:

* **Public functions** — the functions in ``__all__`` of ``minsharp``, ``minsharp.data``,
  ``minsharp.measures``, ``minsharp.curvature``, ``minsharp.models``, ``minsharp.training``,
  ``minsharp.symmetry`` and ``minsharp.io``, and every registered measure through
  ``minsharp.measure``, fed wrong shapes, wrong dtypes, NaN/inf in data or weights, empty
  data, labels out of range, unknown names, bad option values, missing paths, directories
  where files belong, and garbage or truncated files. Each case must raise a
  :class:`~minsharp.MinsharpError` (of the expected subclass) whose message names the
  offending argument or file: never a raw error from torch or Python, never a value.
* **The command line** — every subcommand the argument parser defines, run in-process
  through ``minsharp.cli.main.main``: exit status 2, a ``minsharp: error:`` line on stderr, no
  traceback, no "internal error". Study commands must refuse before any training.
* **Loading weights never runs code from the file** — a pickle whose unpickling would
  create a marker file goes through every weights and data loader and through the CLI; each
  refuses it, and the marker never appears.

Coverage is asserted, not hoped for: the public functions, the measures, their options and
the CLI subcommands are read from the package and its parser, and each must have a case.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import pickle
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from tests.idx import write_idx
from tests.symmetries import labelled_data, network
from torch import Tensor, nn

import minsharp
import minsharp.curvature
import minsharp.data
import minsharp.io
import minsharp.measures
import minsharp.models
import minsharp.symmetry
import minsharp.training
from minsharp import (
    DataError,
    MinsharpError,
    ModelError,
    NotAChainError,
    NotPiecewiseLinearError,
    brute_force_ggn_diagonal,
    brute_force_hessian_diagonal,
    chain_layers,
    hessian_diagonal,
    hessian_trace,
    measure,
    minimum_sharpness,
    rescale,
)
from minsharp.cli.main import build_parser, main
from minsharp.data import (
    corrupt_labels,
    default_data_root,
    download_dataset,
    input_batches,
    load_dataset,
    load_digits,
    load_examples,
    load_mnist_split,
    parse_data_spec,
)
from minsharp.io import (
    check_output,
    jsonable,
    load_weights,
    package_version,
    read_labelled_file,
    read_state_dict,
    read_tensors,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
    write_output,
    write_text_atomic,
)
from minsharp.measures import (
    available,
    check_model_requirements,
    has_batchnorm,
    measure_function,
    register,
    registry,
    solve_scales,
    spec,
)
from minsharp.models import (
    build_model,
    count_parameters,
    import_factory,
    is_factory_spec,
    lenet,
    make_model,
    mlp,
    paper_mlp,
    resnet20,
    small_cnn,
    small_mlp,
    vgg11,
)
from minsharp.study.core import runner as base
from minsharp.study.core import store
from minsharp.study.randomized_labels.config import demo_preset
from minsharp.symmetry.layerwise import rescaled_copy, verify_same_function
from minsharp.training import (
    TrainingConfig,
    accuracy,
    learning_rate,
    load_checkpoint,
    save_checkpoint,
    train_classifier,
)


def qualified(function: Callable[..., Any]) -> str:
    return f"{function.__module__}.{function.__qualname__}"


#: The modules whose ``__all__`` names the public API.
PUBLIC_MODULES = (
    minsharp,
    minsharp.data,
    minsharp.measures,
    minsharp.curvature,
    minsharp.models,
    minsharp.training,
    minsharp.symmetry,
    minsharp.io,
)

#: Public functions without bad-input cases, and why there is nothing to fuzz.
EXEMPT = {
    qualified(available): "takes no arguments",
    qualified(jsonable): "total by design: every value has a JSON form (its str() at worst)",
    qualified(package_version): "takes no arguments",
    qualified(is_factory_spec): "a predicate: every value is or is not package.module:function",
    **{
        qualified(getattr(minsharp.measures, name)): f"measure({name!r}) bound to its name: the "
        f"cases of 'measure {name}' are its cases"
        for name in minsharp.measures.__all__
        if name in available() or name == "exact_hessian_trace"
        if name != "minimum_sharpness"
    },
}


def public_functions() -> set[str]:
    """The qualified names of the functions the public modules list in ``__all__``."""
    return {
        qualified(getattr(module, name))
        for module in PUBLIC_MODULES
        for name in module.__all__
        if inspect.isfunction(getattr(module, name))
    }


# --------------------------------------------------------------------------- inputs

X, Y = labelled_data("mlp", 0)  # 12 float64 examples of 5 features, labels 0..2
CLASSES = 3
CPU = torch.device("cpu")


def plain() -> nn.Sequential:
    """A float64 eval-mode ReLU chain 5-6-5-3."""
    return network("mlp", batchnorm=False, seed=0)


def normed() -> nn.Sequential:
    """The same with a batch-norm, for the measures that need one."""
    return network("mlp", batchnorm=True, seed=0)


class Residual(nn.Module):
    """Not a chain: its skip connection mixes scales, so a layer rescaling changes it."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(5, 5)
        self.last = nn.Linear(5, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.last(x + torch.relu(self.first(x)))


def residual() -> nn.Module:
    torch.manual_seed(0)
    return Residual().double().eval()


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc(x)
        return y if y.sum() > 0 else -y


def branchy() -> nn.Module:
    torch.manual_seed(0)
    return Branchy().double().eval()


def tanh_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, CLASSES)).double().eval()


def spoiled(inputs: Tensor, value: float) -> Tensor:
    """A copy of ``inputs`` with one entry replaced by ``value``."""
    copy_ = inputs.clone()
    copy_.view(-1)[1] = value
    return copy_


def with_weight(model: nn.Module, value: float) -> nn.Module:
    """``model`` with one entry of its first weight replaced by ``value``."""
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = value
    return model


def with_nan_statistics(model: nn.Module) -> nn.Module:
    """``model`` with the running variance of its batch-norm spoiled."""
    norm = next(m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    norm.running_var.fill_(math.nan)
    return model


def negative_labels() -> Tensor:
    labels = Y.clone()
    labels[0] = -1
    return labels


def offline(url: str, timeout: float) -> Any:
    """An opener that never reaches the network."""
    raise OSError(f"offline test: no network ({url})")


# --------------------------------------------------------------------------- files


class Payload:
    """Pickles to a call of ``open(marker, "w")``: harmless, but it leaves a trace."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


MARKER = "executed"


def digits_mlp() -> nn.Module:
    torch.manual_seed(1)
    return small_mlp(64, 10)


def small_net() -> nn.Module:
    torch.manual_seed(2)
    return build_model("mlp", (5,), CLASSES, hidden=[4])


SMALL_SPEC = {"name": "mlp", "input_shape": [5], "num_classes": CLASSES, "options": {"hidden": [4]}}


def write_bytes(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def write_torch(content: Callable[[], Any]) -> Callable[[Path], None]:
    return lambda path: torch.save(content(), path)


def write_tensors(content: Callable[[], dict[str, Tensor]]) -> Callable[[Path], None]:
    """Save tensors as safetensors, npz or torch.save, by the file's suffix."""

    def write(path: Path) -> None:
        tensors = content()
        if path.suffix == ".safetensors":
            save_file({name: t.contiguous() for name, t in tensors.items()}, path)
        elif path.suffix == ".npz":
            np.savez(path, **{name: t.numpy() for name, t in tensors.items()})
        else:
            torch.save(tensors, path)

    return write


def data_of(inputs: Tensor, labels: Tensor) -> Callable[[], dict[str, Tensor]]:
    return lambda: {"inputs": inputs, "labels": labels}


DIGITS = torch.rand(6, 64, generator=torch.Generator().manual_seed(0))
DIGIT_LABELS = torch.tensor([0, 1, 2, 3, 4, 5])


def truncated_weights(path: Path) -> None:
    whole = path.with_name("whole.safetensors")
    save_file(digits_mlp().state_dict(), whole)
    path.write_bytes(whole.read_bytes()[:-40])


def evil_weights(marker: Path) -> dict[str, Any]:
    return {"0.weight": torch.zeros(2), "payload": Payload(marker)}


def evil_npz(path: Path) -> None:
    objects = np.empty(1, dtype=object)
    objects[0] = Payload(path.parent / MARKER)
    np.savez(path, inputs=objects, labels=np.zeros(1, np.int64))


def mnist(change: str) -> Callable[[Path], None]:
    """A folder of tiny MNIST test files, spoiled as ``change`` says."""

    def write(folder: Path) -> None:
        folder.mkdir()
        rng = np.random.default_rng(0)
        images, labels = rng.integers(0, 256, (6, 16, 16)), rng.integers(0, 10, (6,))
        images_file = folder / "t10k-images-idx3-ubyte"
        labels_file = folder / "t10k-labels-idx1-ubyte"
        if change == "garbage-gz":
            (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
        else:
            magic = 0x0801 if change == "magic" else None
            write_idx(images_file, images, magic=magic, cut=10 if change == "truncated" else 0)
        if change == "labels-12":
            labels[2] = 12
        if change == "counts":
            labels = labels[:5]
        if change != "no-labels":
            write_idx(labels_file, labels)

    return write


def checkpoint(change: str) -> Callable[[Path], None]:
    """A checkpoint of :func:`small_net`, spoiled as ``change`` says."""

    def write(folder: Path) -> None:
        save_checkpoint(folder, small_net(), model_spec=SMALL_SPEC, record={"epochs": 1})
        meta_path = folder / "checkpoint.json"
        meta = json.loads(meta_path.read_text())
        weights = folder / "model.safetensors"
        if change == "garbage-json":
            meta_path.write_text("{not json")
            return
        if change == "no-weights":
            weights.unlink()
        elif change == "corrupt-weights":
            content = bytearray(weights.read_bytes())
            content[-1] ^= 0xFF
            weights.write_bytes(bytes(content))
        elif change == "traversal":
            meta["weights"]["file"] = "../model.safetensors"
        elif change == "dtype":
            meta["weights"]["dtype"] = "int64"
        elif change == "spec":
            meta["model"]["name"] = "resnet"
        elif change == "format":
            meta["format"] = "something-else"
        elif change == "evil":
            evil = folder / "model.pt"
            torch.save(evil_weights(folder.parent / MARKER), evil)
            meta["weights"]["file"] = evil.name
            meta["weights"]["sha256"] = hashlib.sha256(evil.read_bytes()).hexdigest()
        meta_path.write_text(json.dumps(meta))

    return write


def study(change: str) -> Callable[[Path], None]:
    """A study directory without runs whose ``study.json`` is spoiled as ``change`` says."""

    def write(folder: Path) -> None:
        folder.mkdir()
        content: Any = {
            "format": store.STUDY_FORMAT,
            "version": store.FORMAT_VERSION,
            "kind": "randomized-labels",
            "config": demo_preset().to_dict(),
            "runs": [],
        }
        if change == "empty":
            return
        if change == "garbage":
            (folder / store.STUDY_FILE).write_text('{"format": "minsharp-st')
            return
        if change == "list":
            content = [content]
        elif change == "format":
            content["format"] = "minsharp-something"
        elif change == "version":
            content["version"] = 99
        elif change == "kind":
            content["kind"] = "double-descent"
        elif change == "config-keys":
            content["config"] = {"dataset": "digits"}
        elif change == "config-values":
            content["config"]["dataset"] = "imagenet"
        elif change == "runs":
            content["runs"] = 5
        (folder / store.STUDY_FILE).write_text(json.dumps(content))

    return write


def config_file(content: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(content)


def non_empty(folder: Path) -> None:
    folder.mkdir()
    (folder / "notes.txt").write_text("not a study")


#: Every file a case may use, by name; :class:`Files` writes them on first use.
WRITERS: dict[str, Callable[[Path], None]] = {
    "absent.pt": lambda path: None,
    "absent": lambda path: None,
    "folder": lambda path: path.mkdir(),
    "non-empty": non_empty,
    "file.txt": lambda path: path.write_text("a file, not a folder"),
    "garbage.pt": write_bytes(b"\x80\x02not a torch file at all"),
    "garbage.safetensors": write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"),
    "garbage.npz": write_bytes(b"PK not really a zip"),
    "empty.pt": write_bytes(b""),
    "weights.safetensors": write_tensors(lambda: digits_mlp().state_dict()),
    "truncated.safetensors": truncated_weights,
    "list.pt": write_torch(lambda: [torch.zeros(2)]),
    "not-tensors.pt": write_torch(lambda: {"0.weight": [1.0, 2.0]}),
    "no-tensors.pt": write_torch(dict),
    "wrong-keys.safetensors": write_tensors(lambda: mlp(64, [20, 20], 10, bias=False).state_dict()),
    "wrong-shapes.pt": write_tensors(lambda: mlp(64, [16, 20], 10).state_dict()),
    "integer-weights.safetensors": write_tensors(
        lambda: {k: v.long() for k, v in digits_mlp().state_dict().items()}
    ),
    "nan-weights.safetensors": write_tensors(
        lambda: with_weight(digits_mlp(), math.nan).state_dict()
    ),
    "data-nan.safetensors": write_tensors(data_of(spoiled(DIGITS, math.nan), DIGIT_LABELS)),
    "data-inf.npz": write_tensors(data_of(spoiled(DIGITS, -math.inf), DIGIT_LABELS)),
    "data-empty.safetensors": write_tensors(data_of(DIGITS[:0], DIGIT_LABELS[:0])),
    "data-negative.safetensors": write_tensors(data_of(DIGITS, DIGIT_LABELS - 1)),
    "data-float-labels.safetensors": write_tensors(data_of(DIGITS, DIGIT_LABELS.double())),
    "data-2d-labels.npz": write_tensors(data_of(DIGITS, DIGIT_LABELS[:, None])),
    "data-int-inputs.safetensors": write_tensors(data_of(DIGITS.long(), DIGIT_LABELS)),
    "data-1d-inputs.pt": write_tensors(data_of(DIGITS[:, 0], DIGIT_LABELS)),
    "data-mismatch.safetensors": write_tensors(data_of(DIGITS, DIGIT_LABELS[:4])),
    "data-labels-12.safetensors": write_tensors(data_of(DIGITS, torch.tensor([0, 1, 12, 3, 4, 5]))),
    "data-label-id.safetensors": write_tensors(
        data_of(DIGITS, torch.tensor([0, 1, 2, 3, 4, 987_654_321]))
    ),
    "data-no-inputs.npz": write_tensors(lambda: {"x": DIGITS, "labels": DIGIT_LABELS}),
    "data-list.pt": write_torch(lambda: [DIGITS, DIGIT_LABELS]),
    "data-small-images.safetensors": write_tensors(
        data_of(torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), Y[:3])
    ),
    "data-objects.npz": evil_npz,
    "evil.pt": lambda path: torch.save(evil_weights(path.parent / MARKER), path),
    "evil-legacy.pt": lambda path: path.write_bytes(
        pickle.dumps(evil_weights(path.parent / MARKER), protocol=2)
    ),
    "evil.safetensors": lambda path: path.write_bytes(
        pickle.dumps(evil_weights(path.parent / MARKER))
    ),
    "evil-torch.npz": lambda path: torch.save(evil_weights(path.parent / MARKER), path),
    "evil-data.pt": lambda path: torch.save(
        {"inputs": DIGITS, "labels": Payload(path.parent / MARKER)}, path
    ),
    **{
        f"mnist-{change}": mnist(change)
        for change in ("magic", "truncated", "labels-12", "counts", "no-labels", "garbage-gz")
    },
    **{
        f"checkpoint-{change}": checkpoint(change)
        for change in (
            "garbage-json",
            "no-weights",
            "corrupt-weights",
            "traversal",
            "dtype",
            "spec",
            "format",
            "evil",
        )
    },
    **{
        f"study-{change}": study(change)
        for change in (
            "empty",
            "garbage",
            "list",
            "format",
            "version",
            "kind",
            "config-keys",
            "config-values",
            "runs",
        )
    },
    "config-garbage.json": config_file("{'single': quotes}"),
    "config-list.json": config_file("[1, 2]"),
    "config-keys.json": config_file('{"learning_rate": 0.1}'),
    "config-values.json": config_file('{"training": {"epochs": -3}}'),
    "config-preset.json": config_file('{"preset": "huge"}'),
}


class Files:
    """The files of :data:`WRITERS` in one folder, each written when first asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __getitem__(self, name: str) -> str:
        path = self.folder / name
        if not path.exists():
            WRITERS[name](path)
        return str(path)

    @property
    def marker(self) -> Path:
        return self.folder / MARKER


def expand(argv: tuple[str, ...], files: Files) -> list[str]:
    """``argv`` with each ``{name}`` replaced by the path of that file of :data:`WRITERS`."""
    return [re.sub(r"\{([^{}]+)\}", lambda name: files[name[1]], token) for token in argv]


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


# --------------------------------------------------------------------------- function cases


@dataclass(frozen=True)
class Case:
    """One bad call: ``call(files)`` must raise ``error`` with ``names`` in its message."""

    target: str
    """The qualified name of the public function, or ``measure NAME``."""
    label: str
    call: Callable[[Files], Any]
    names: str
    error: type[MinsharpError] = MinsharpError

    @property
    def param(self) -> Any:
        short = self.target.rpartition(".")[2].replace(" ", ":")
        return pytest.param(self, id=f"{short}-{self.label}")


CASES: list[Case] = []


def cases(target: Callable[..., Any] | str, *table: tuple[Any, ...]) -> None:
    """Add ``(label, call, names[, error])`` rows for ``target`` to :data:`CASES`."""
    name = target if isinstance(target, str) else qualified(target)
    for row in table:
        label, call, names, *error = row
        CASES.append(Case(name, label, call, names, *error))


def later_batch_nan() -> list[tuple[Tensor, Tensor]]:
    """Two batches, NaN only in the second: every batch is checked, not just the first."""
    return [(X[:6], Y[:6]), (spoiled(X[6:], math.nan), Y[6:])]


def engine_cases(engine: Callable[..., Any]) -> None:
    cases(
        engine,
        ("wrong-input-shape", lambda f: engine(plain(), X[:, :3]), "input batch", ModelError),
        ("nan-inputs", lambda f: engine(plain(), spoiled(X, math.nan)), "NaN", DataError),
        ("inf-inputs", lambda f: engine(plain(), spoiled(X, math.inf)), "infinite", DataError),
        ("nan-in-a-later-batch", lambda f: engine(plain(), later_batch_nan()), "batch 1"),
        ("integer-inputs", lambda f: engine(plain(), X.long()), "input batch", ModelError),
        ("bool-inputs", lambda f: engine(plain(), X > 0), "dtype", DataError),
        ("complex-inputs", lambda f: engine(plain(), X.cfloat()), "dtype", DataError),
        ("nan-weights", lambda f: engine(with_weight(plain(), math.nan), X), "0.weight"),
        ("inf-weights", lambda f: engine(with_weight(plain(), -math.inf), X), "0.weight"),
        (
            "nan-running-statistics",
            lambda f: engine(with_nan_statistics(normed()), X),
            "non-finite logits",
            ModelError,
        ),
        ("no-examples", lambda f: engine(plain(), (X[:0], Y[:0])), "no examples", DataError),
        ("batch-size-0", lambda f: engine(plain(), X, batch_size=0), "batch_size", DataError),
        ("batch-size-float", lambda f: engine(plain(), X, batch_size=2.5), "batch_size"),
        ("unknown-curvature", lambda f: engine(plain(), X, curvature="exact"), "curvature"),
        ("data-a-string", lambda f: engine(plain(), "inputs.pt"), "data", DataError),
        ("data-a-dict", lambda f: engine(plain(), {"x": X}), "data", DataError),
        ("model-a-string", lambda f: engine("small_mlp", X), "torch.nn.Module", ModelError),
        ("training-mode", lambda f: engine(normed().train(), X), "training mode", ModelError),
    )


engine_cases(hessian_trace)
engine_cases(hessian_diagonal)


def brute_force_cases(reference: Callable[..., Any], *labels: Any) -> None:
    cases(
        reference,
        ("wrong-input-shape", lambda f: reference(plain(), X[:, :3], *labels), "input batch"),
        ("nan-inputs", lambda f: reference(plain(), spoiled(X, math.nan), *labels), "NaN"),
        ("inf-inputs", lambda f: reference(plain(), spoiled(X, math.inf), *labels), "infinite"),
        ("no-examples", lambda f: reference(plain(), X[:0], *labels), "N ≥ 1", DataError),
        ("inputs-a-list", lambda f: reference(plain(), X.tolist(), *labels), "inputs"),
        (
            "nan-weights",
            lambda f: reference(with_weight(plain(), math.nan), X, *labels),
            "0.weight",
        ),
        ("model-a-string", lambda f: reference("mlp", X, *labels), "torch.nn.Module", ModelError),
    )


brute_force_cases(brute_force_hessian_diagonal, Y)
brute_force_cases(brute_force_ggn_diagonal)
cases(
    brute_force_hessian_diagonal,
    (
        "labels-out-of-range",
        lambda f: brute_force_hessian_diagonal(plain(), X, Y + 3),
        "out of range",
        DataError,
    ),
    (
        "negative-labels",
        lambda f: brute_force_hessian_diagonal(plain(), X, negative_labels()),
        "negatives",
        DataError,
    ),
    ("float-labels", lambda f: brute_force_hessian_diagonal(plain(), X, Y.double()), "labels"),
    ("2d-labels", lambda f: brute_force_hessian_diagonal(plain(), X, Y[:, None]), "shape (12,)"),
    (
        "labels-of-another-length",
        lambda f: brute_force_hessian_diagonal(plain(), X, Y[:5]),
        "shape (12,)",
        DataError,
    ),
)

ALPHAS = [2.0, 0.5, 1.0]  # one per Linear layer of plain(), product 1
cases(
    chain_layers,
    ("model-a-string", lambda f: chain_layers("mlp", X), "torch.nn.Module", ModelError),
    ("wrong-input-shape", lambda f: chain_layers(plain(), X[:, :2]), "input batch", ModelError),
    ("nan-inputs", lambda f: chain_layers(plain(), spoiled(X, math.nan)), "NaN", DataError),
    ("no-examples", lambda f: chain_layers(plain(), X[:0]), "N ≥ 1", DataError),
    ("inputs-a-list", lambda f: chain_layers(plain(), X.tolist()), "inputs", DataError),
    ("nan-weights", lambda f: chain_layers(with_weight(plain(), math.nan), X), "non-finite"),
)
cases(
    rescale,
    ("alphas-too-few", lambda f: rescale(plain(), [2.0, 0.5], X), "alphas has 2 entries"),
    ("alphas-negative", lambda f: rescale(plain(), [-2.0, -0.5, 1.0], X), "positive"),
    ("alphas-nan", lambda f: rescale(plain(), [math.nan, 1.0, 1.0], X), "finite"),
    ("alphas-product-not-1", lambda f: rescale(plain(), [2.0, 2.0, 2.0], X), "product"),
    ("alphas-not-numbers", lambda f: rescale(plain(), ["a", "b", "c"], X), "alphas"),
    ("model-a-string", lambda f: rescale("mlp", ALPHAS, X), "torch.nn.Module", ModelError),
    ("nan-inputs", lambda f: rescale(plain(), ALPHAS, spoiled(X, math.nan)), "NaN", DataError),
    ("no-examples", lambda f: rescale(plain(), ALPHAS, X[:0]), "N ≥ 1", DataError),
    ("inputs-a-list", lambda f: rescale(plain(), ALPHAS, X.tolist()), "inputs", DataError),
    ("nan-weights", lambda f: rescale(with_weight(plain(), math.nan), ALPHAS, X), "non-finite"),
    ("not-a-chain", lambda f: rescale(residual(), [2.0, 0.5], X), "not a chain", NotAChainError),
)
cases(
    rescaled_copy,
    ("unknown-layer", lambda f: rescaled_copy(plain(), ["0", "9", "4"], ALPHAS), "'9'"),
    (
        "order-names-an-activation",
        lambda f: rescaled_copy(plain(), ["0", "1", "4"], ALPHAS),
        "'1'",
        ModelError,
    ),
    ("order-a-string", lambda f: rescaled_copy(plain(), "024", ALPHAS), "order", ModelError),
    (
        "alphas-too-many",
        lambda f: rescaled_copy(plain(), ["0", "2", "4"], [*ALPHAS, 1.0]),
        "alphas has 4 entries",
    ),
    ("model-a-string", lambda f: rescaled_copy("mlp", ["0"], [1.0]), "torch.nn.Module"),
)
cases(
    verify_same_function,
    ("no-examples", lambda f: verify_same_function(plain(), plain(), X[:0], ["0"]), "N ≥ 1"),
    (
        "nan-inputs",
        lambda f: verify_same_function(plain(), plain(), spoiled(X, math.nan), ["0"]),
        "NaN",
        DataError,
    ),
    (
        "other-outputs",
        lambda f: verify_same_function(
            plain(), network("mlp", batchnorm=False, seed=0, classes=4), X, ["0"]
        ),
        "shape",
        NotAChainError,
    ),
    (
        "another-function",
        lambda f: verify_same_function(plain(), network("mlp", batchnorm=False, seed=1), X, ["0"]),
        "changed the model's logits",
        NotAChainError,
    ),
    (
        "rescaled-a-string",
        lambda f: verify_same_function(plain(), "mlp", X, ["0"]),
        "rescaled must be a torch.nn.Module",
        ModelError,
    ),
)

cases(
    check_model_requirements,
    ("unknown-measure", lambda f: check_model_requirements("nope", plain()), "unknown measure"),
    (
        "no-batchnorm",
        lambda f: check_model_requirements("bn_sharpness", plain()),
        "needs a network with batch-norm",
        ModelError,
    ),
)
cases(
    has_batchnorm, ("model-a-string", lambda f: has_batchnorm("mlp"), "torch.nn.Module", ModelError)
)
cases(measure_function, ("unknown-measure", lambda f: measure_function("nope"), "unknown measure"))

cases(
    minimum_sharpness,
    ("model-a-string", lambda f: minimum_sharpness("mlp", X), "torch.nn.Module", ModelError),
    ("seed-a-string", lambda f: minimum_sharpness(plain(), X, seed="x"), "seed"),
    ("nan-inputs", lambda f: minimum_sharpness(plain(), spoiled(X, math.nan)), "NaN", DataError),
    ("no-examples", lambda f: minimum_sharpness(plain(), X[:0]), "no examples", DataError),
    ("batch-size-negative", lambda f: minimum_sharpness(plain(), X, batch_size=-1), "batch_size"),
    ("nan-weights", lambda f: minimum_sharpness(with_weight(plain(), math.nan), X), "0.weight"),
    ("untraceable", lambda f: minimum_sharpness(branchy(), X), "cannot trace", ModelError),
    (
        "tanh-without-ggn",
        lambda f: minimum_sharpness(tanh_net(), X),
        "curvature='ggn'",
        NotPiecewiseLinearError,
    ),
)
cases(
    solve_scales,
    ("lengths-differ", lambda f: solve_scales([1.0], [0.0, 0.0]), "one trace per layer"),
    ("no-layers", lambda f: solve_scales([], []), "at least one layer"),
    ("negative-trace", lambda f: solve_scales([1.0, -1.0], [0.0, 0.0]), "non-negative"),
    ("nan-trace", lambda f: solve_scales([1.0, math.nan], [0.0, 0.0]), "finite"),
    ("not-numbers", lambda f: solve_scales(["a"], [0.0]), "traces"),
    ("not-sequences", lambda f: solve_scales(1.0, 0.0), "sequences of traces"),
)


cases(
    register,
    (
        "unknown-symmetry",
        lambda f: register("x", invariances={"scale"}, summary="", reference=""),
        "unknown symmetries",
    ),
    (
        "unknown-requirement",
        lambda f: register("x", invariances=set(), requires={"gpu"}, summary="", reference=""),
        "unknown requirements",
    ),
    (
        "name-taken",
        lambda f: register("hessian_trace", invariances=set(), summary="", reference="")(
            hessian_trace
        ),
        "already registered",
    ),
    (
        "name-not-a-string",
        lambda f: register(3, invariances=set(), summary="", reference=""),
        "name",
    ),
    (
        "compute-not-callable",
        lambda f: register("never_registered", invariances=set(), summary="", reference="")(
            "not a function"
        ),
        "never_registered",
    ),
)
cases(
    spec,
    ("unknown-name", lambda f: spec("hessian_trac"), "Did you mean hessian_trace"),
    ("name-not-a-string", lambda f: spec(3), "must be a string"),
)
cases(
    measure,
    ("unknown-name", lambda f: measure("minimum_sharpnes", plain(), X), "minimum_sharpnes"),
    ("name-not-a-string", lambda f: measure(None, plain(), X), "must be a string"),
    ("unknown-option", lambda f: measure("hessian_trace", plain(), X, epochs=3), "epochs"),
    (
        "model-a-string",
        lambda f: measure("bn_sharpness", "mlp", (X, Y)),
        "torch.nn.Module",
        ModelError,
    ),
    (
        "model-without-batchnorm",
        lambda f: measure("bn_sharpness", plain(), (X, Y)),
        "batch-norm",
        ModelError,
    ),
)

# --- every registered measure, through minsharp.measure ----------------------------------

#: A value each measure option refuses (``batch_size`` has cases of its own). ``progress``
#: is absent on purpose: it is read for its truth value, so every value is a valid answer.
BAD_OPTIONS: dict[str, Any] = {
    "seed": "x",
    "tolerance": 0,
    "max_iterations": -1,
    "samples": 0,
    "rho": -1.0,
    "epsilon": 0.0,
    "steps": 0,
    "step_size": 0.0,
    "norm": "1",
    "labels": "none",
    "layer": "nope",
    "curvature": "exact",
    "symmetry": "unit",
    "delta": 2.0,
    "nodes": 0,
    "metric": "accuracy",
    "target": 0.0,
    "magnitude_aware": 1,
    "offset": -1.0,
}
UNCHECKED_OPTIONS = {"batch_size", "progress"}


def measure_cases(name: str) -> None:
    needs = spec(name).requires
    build = normed if "batchnorm" in needs else plain

    def run(model: Callable[[], Any] = build, data: Any = (X, Y), **options: Any) -> Any:
        return lambda f: measure(name, model(), data, **options)

    table: list[Any] = [
        ("wrong-input-shape", run(data=(X[:, :3], Y)), "input batch", ModelError),
        ("nan-inputs", run(data=(spoiled(X, math.nan), Y)), "NaN", DataError),
        ("inf-inputs", run(data=(spoiled(X, -math.inf), Y)), "infinite", DataError),
        ("integer-inputs", run(data=(X.long(), Y)), "input batch", ModelError),
        ("bool-inputs", run(data=(X > 0, Y)), "dtype", DataError),
        ("complex-inputs", run(data=(X.cdouble(), Y)), "dtype", DataError),
        ("nan-weights", run(model=lambda: with_weight(build(), math.nan)), "0.weight"),
        ("inf-weights", run(model=lambda: with_weight(build(), math.inf)), "0.weight"),
        ("no-examples", run(data=(X[:0], Y[:0])), "no examples", DataError),
        ("batch-size-negative", run(batch_size=-4), "batch_size", DataError),
        ("batch-size-a-string", run(batch_size="8"), "batch_size", DataError),
        ("unknown-option", run(learning_rate=0.1), "learning_rate"),
        ("data-a-string", run(data="digits"), "data", DataError),
        ("model-a-string", run(model=lambda: "small_mlp"), "torch.nn.Module", ModelError),
    ]
    if "batchnorm" in needs:
        table += [
            ("training-mode", run(model=lambda: build().train()), "training mode", ModelError),
            (
                "nan-running-statistics",
                run(model=lambda: with_nan_statistics(build())),
                "non-finite logits",
                ModelError,
            ),
        ]
    if "labels" in needs:
        table += [
            ("labels-out-of-range", run(data=(X, Y + 3)), "out of range", DataError),
            ("negative-labels", run(data=(X, negative_labels())), "negative", DataError),
            ("float-labels", run(data=(X, Y.double())), "integer", DataError),
            ("2d-labels", run(data=(X, Y[:, None])), "1-D", DataError),
            ("labels-of-another-length", run(data=(X, Y[:5])), "labels of shape (5,)", DataError),
            ("labels-missing", run(data=X), "labels", DataError),
        ]
    if name in ("minimum_sharpness", "neuron_minimum_sharpness"):
        table.append(("untraceable", run(model=branchy), "cannot trace", ModelError))
    for option in spec(name).defaults.keys() - UNCHECKED_OPTIONS:
        if option in BAD_OPTIONS:
            value = BAD_OPTIONS[option]
            table.append((f"option-{option}={value!r}", run(**{option: value}), option))
    cases(f"measure {name}", *table)


for _name in available():
    measure_cases(_name)

# --- models ------------------------------------------------------------------------------

cases(
    build_model,
    ("unknown-model", lambda f: build_model("resnet", (64,), 10), "'resnet'", ModelError),
    ("unknown-option", lambda f: build_model("lenet", (1, 28, 28), 10, width=3), "'width'"),
    ("no-classes", lambda f: build_model("mlp", (64,), 0), "num_classes", ModelError),
    ("classes-a-bool", lambda f: build_model("mlp", (64,), True), "num_classes", ModelError),
    ("shape-a-string", lambda f: build_model("mlp", "64", 10), "input_shape", ModelError),
    ("shape-of-floats", lambda f: build_model("mlp", (64.0,), 10), "input_shape", ModelError),
    ("shape-not-a-sequence", lambda f: build_model("mlp", None, 10), "input_shape"),
    ("no-features", lambda f: build_model("mlp", (0,), 10), "no features", ModelError),
    ("flat-inputs-for-a-cnn", lambda f: build_model("small_cnn", (784,), 10), "images"),
    ("images-too-small", lambda f: build_model("lenet", (1, 8, 8), 10), "15×15", ModelError),
    ("negative-width", lambda f: build_model("mlp", (64,), 10, hidden=-1), "hidden"),
    ("bias-a-string", lambda f: build_model("small_mlp", (64,), 10, bias="no"), "bias"),
)
cases(
    mlp,
    ("negative-inputs", lambda f: mlp(-1, [5], 10), "in_features", ModelError),
    ("hidden-a-string", lambda f: mlp(64, "32", 10), "hidden", ModelError),
    ("zero-width", lambda f: mlp(64, [8, 0], 10), "hidden width", ModelError),
    ("no-classes", lambda f: mlp(64, [8], 0), "num_classes", ModelError),
    ("batchnorm-a-string", lambda f: mlp(64, [8], 10, batchnorm="yes"), "batchnorm"),
)
for _factory in (small_mlp, paper_mlp):
    cases(
        _factory,
        ("no-inputs", lambda f, g=_factory: g(0), "in_features", ModelError),
        ("float-classes", lambda f, g=_factory: g(64, 2.5), "num_classes", ModelError),
        ("bias-an-int", lambda f, g=_factory: g(64, 10, bias=1), "bias", ModelError),
    )
for _factory in (small_cnn, lenet):
    cases(
        _factory,
        ("no-channels", lambda f, g=_factory: g(0), "in_channels", ModelError),
        ("images-too-small", lambda f, g=_factory: g(1, (8, 8)), "pixels", ModelError),
        ("size-a-string", lambda f, g=_factory: g(1, "28"), "image_size", ModelError),
        ("size-of-three", lambda f, g=_factory: g(1, (28, 28, 28)), "image_size"),
        ("negative-side", lambda f, g=_factory: g(1, (28, -28)), "image_size", ModelError),
        ("no-classes", lambda f, g=_factory: g(1, 28, 0), "num_classes", ModelError),
        ("bias-a-string", lambda f, g=_factory: g(1, 28, 10, bias="no"), "bias", ModelError),
    )
cases(
    resnet20,
    ("no-channels", lambda f: resnet20(0), "in_channels", ModelError),
    ("float-classes", lambda f: resnet20(3, 2.5), "num_classes", ModelError),
    ("bias-a-string", lambda f: resnet20(3, 10, bias="no"), "bias", ModelError),
    ("batchnorm-an-int", lambda f: resnet20(3, 10, batchnorm=1), "batchnorm", ModelError),
)
cases(
    vgg11,
    ("no-channels", lambda f: vgg11(0), "in_channels", ModelError),
    ("size-a-string", lambda f: vgg11(3, "32"), "image_size", ModelError),
    ("negative-side", lambda f: vgg11(3, (32, -1)), "image_size", ModelError),
    ("float-classes", lambda f: vgg11(3, 32, 2.5), "num_classes", ModelError),
    ("bias-a-string", lambda f: vgg11(3, 32, 10, bias="no"), "bias", ModelError),
    ("batchnorm-an-int", lambda f: vgg11(3, 32, 10, batchnorm=1), "batchnorm", ModelError),
    ("width-zero", lambda f: vgg11(3, 32, 10, width=0), "width", ModelError),
    ("width-a-float", lambda f: build_model("vgg11", (3, 32, 32), 10, width=8.5), "width"),
    ("flat-inputs", lambda f: build_model("vgg11", (3072,), 10), "images", ModelError),
)
cases(
    make_model,
    ("bad-syntax", lambda f: make_model("a:b:c", {}, (64,), 10), "package.module:function"),
    ("unknown-zoo-name", lambda f: make_model("vgg", {}, (3, 32, 32), 10), "Did you mean vgg11"),
    ("unknown-module", lambda f: make_model("no_such_mod_q:f", {}, (64,), 10), "cannot import"),
    ("missing-function", lambda f: make_model("json:nothing", {}, (64,), 10), "no 'nothing'"),
    ("not-a-module", lambda f: make_model("json:dumps", {"obj": 1}, (64,), 10), "returned a str"),
    ("factory-raises", lambda f: make_model("json:dumps", {}, (64,), 10), "raised TypeError"),
    ("zoo-option", lambda f: make_model("lenet", {"width": 3}, (1, 28, 28), 10), "'width'"),
)
cases(
    import_factory,
    ("not-callable", lambda f: import_factory("json:__doc__"), "not callable", ModelError),
    ("unknown-module", lambda f: import_factory("no_such_mod_q:f"), "PYTHONPATH", ModelError),
)
cases(
    count_parameters,
    ("model-a-dict", lambda f: count_parameters({"w": X}), "torch.nn.Module", ModelError),
)

# --- training and checkpoints ------------------------------------------------------------

QUICK = TrainingConfig(epochs=1, batch_size=4)


def train(model: Callable[[], Any] = plain, inputs: Any = X, labels: Any = Y, **kw: Any) -> Any:
    config = kw.pop("config", QUICK)
    return lambda f: train_classifier(model(), inputs, labels, config, **kw)


cases(
    train_classifier,
    ("labels-out-of-range", train(labels=Y + 3), "out of range", DataError),
    ("negative-labels", train(labels=negative_labels()), "negatives", DataError),
    ("float-labels", train(labels=Y.double()), "integer class indices", DataError),
    ("2d-labels", train(labels=Y[:, None]), "labels of shape (12, 1)", DataError),
    ("labels-of-another-length", train(labels=Y[:7]), "labels must have shape", DataError),
    ("no-examples", train(inputs=X[:0], labels=Y[:0]), "empty", DataError),
    ("nan-inputs", train(inputs=spoiled(X, math.nan)), "NaN", DataError),
    ("inf-inputs", train(inputs=spoiled(X, math.inf)), "infinite", DataError),
    ("wrong-input-shape", train(inputs=X[:, :4]), "input batch", ModelError),
    ("integer-inputs", train(inputs=X.long()), "input batch", ModelError),
    ("nan-weights", train(model=lambda: with_weight(plain(), math.nan)), "non-finite logits"),
    ("config-a-dict", train(config={"epochs": 1}), "TrainingConfig"),
    ("negative-batch-size", lambda f: train(config=TrainingConfig(batch_size=-1))(f), "batch_size"),
    ("negative-epochs", lambda f: train(config=TrainingConfig(epochs=-2))(f), "epochs"),
    ("nan-learning-rate", lambda f: train(config=TrainingConfig(lr=math.nan))(f), "lr"),
    ("seed-beyond-torch", lambda f: train(config=TrainingConfig(seed=2**70))(f), "seed"),
    ("test-labels-out-of-range", train(test=(X, Y + 5)), "test data: label", DataError),
    ("test-not-a-pair", train(test=X), "test must be a pair", DataError),
    ("model-a-string", train(model=lambda: "mlp"), "torch.nn.Module", ModelError),
)
cases(
    accuracy,
    ("labels-of-another-length", lambda f: accuracy(plain(), X, Y[:5]), "labels must have shape"),
    ("labels-out-of-range", lambda f: accuracy(plain(), X, Y + 3), "out of range", DataError),
    ("float-labels", lambda f: accuracy(plain(), X, Y.float()), "integer", DataError),
    ("nan-inputs", lambda f: accuracy(plain(), spoiled(X, math.nan), Y), "NaN", DataError),
    ("wrong-input-shape", lambda f: accuracy(plain(), X[:, :2], Y), "input batch", ModelError),
    ("batch-size-0", lambda f: accuracy(plain(), X, Y, batch_size=0), "batch_size", DataError),
    ("model-a-string", lambda f: accuracy("mlp", X, Y), "torch.nn.Module", ModelError),
)
cases(
    learning_rate,
    ("negative-step", lambda f: learning_rate(QUICK, -10_000), "step"),
    ("fractional-step", lambda f: learning_rate(QUICK, 1.5), "step"),
    ("config-a-dict", lambda f: learning_rate({"lr": 0.1}, 0), "TrainingConfig"),
)


def save(folder: str, model: Any = None, model_spec: Any = None, record: Any = None) -> Any:
    return save_checkpoint(
        folder,
        small_net() if model is None else model,
        model_spec=SMALL_SPEC if model_spec is None else model_spec,
        record={} if record is None else record,
    )


cases(
    save_checkpoint,
    (
        "unknown-model",
        lambda f: save(f["absent"], model_spec={**SMALL_SPEC, "name": "resnet"}),
        "resnet",
        ModelError,
    ),
    (
        "spec-of-another-network",
        lambda f: save(f["absent"], model_spec={**SMALL_SPEC, "options": {}}),
        "does not rebuild",
        ModelError,
    ),
    (
        "spec-without-classes",
        lambda f: save(f["absent"], model_spec={"name": "mlp", "input_shape": [5]}),
        "num_classes",
        ModelError,
    ),
    ("directory-a-file", lambda f: save(f["file.txt"]), "file.txt"),
    ("record-not-a-mapping", lambda f: save(f["absent"], record=[1, 2]), "record"),
    ("model-a-string", lambda f: save(f["absent"], model="mlp"), "torch.nn.Module", ModelError),
)
cases(
    load_checkpoint,
    ("missing-directory", lambda f: load_checkpoint(f["absent"]), "does not exist", ModelError),
    ("a-file", lambda f: load_checkpoint(f["file.txt"]), "file.txt", ModelError),
    ("garbage-json", lambda f: load_checkpoint(f["checkpoint-garbage-json"]), "unreadable"),
    ("no-weights", lambda f: load_checkpoint(f["checkpoint-no-weights"]), "model.safetensors"),
    ("corrupt-weights", lambda f: load_checkpoint(f["checkpoint-corrupt-weights"]), "SHA-256"),
    ("weights-outside", lambda f: load_checkpoint(f["checkpoint-traversal"]), "not a file name"),
    ("integer-dtype", lambda f: load_checkpoint(f["checkpoint-dtype"]), "int64", ModelError),
    ("unknown-model", lambda f: load_checkpoint(f["checkpoint-spec"]), "resnet", ModelError),
    ("other-format", lambda f: load_checkpoint(f["checkpoint-format"]), "minsharp-checkpoint"),
)

# --- files -------------------------------------------------------------------------------


def read_weights(name: str) -> Callable[[Files], Any]:
    return lambda f: read_tensors(f[name], what="weights file", error=ModelError)


cases(
    read_tensors,
    ("missing", read_weights("absent.pt"), "absent.pt does not exist", ModelError),
    ("a-directory", read_weights("folder"), "is a directory", ModelError),
    ("garbage-pt", read_weights("garbage.pt"), "garbage.pt", ModelError),
    ("garbage-safetensors", read_weights("garbage.safetensors"), "garbage.safetensors"),
    ("garbage-npz", read_weights("garbage.npz"), "garbage.npz", ModelError),
    ("empty-file", read_weights("empty.pt"), "empty.pt", ModelError),
    ("truncated", read_weights("truncated.safetensors"), "truncated.safetensors", ModelError),
    ("object-arrays", read_weights("data-objects.npz"), "object arrays", ModelError),
)
cases(
    read_state_dict,
    ("a-list", lambda f: read_state_dict(f["list.pt"]), "holds a list", ModelError),
    ("not-tensors", lambda f: read_state_dict(f["not-tensors.pt"]), "not tensors", ModelError),
    ("no-tensors", lambda f: read_state_dict(f["no-tensors.pt"]), "no tensors", ModelError),
    ("garbage", lambda f: read_state_dict(f["garbage.safetensors"]), "garbage.safetensors"),
    ("missing", lambda f: read_state_dict(f["absent.pt"]), "absent.pt", ModelError),
)
cases(
    load_weights,
    (
        "wrong-keys",
        lambda f: load_weights(digits_mlp(), f["wrong-keys.safetensors"], model_name="small_mlp"),
        "missing keys",
        ModelError,
    ),
    (
        "wrong-shapes",
        lambda f: load_weights(digits_mlp(), f["wrong-shapes.pt"], model_name="small_mlp"),
        "shape mismatches",
    ),
    (
        "integer-tensors",
        lambda f: load_weights(
            digits_mlp(), f["integer-weights.safetensors"], model_name="small_mlp"
        ),
        "not floating-point",
        ModelError,
    ),
    (
        "a-directory",
        lambda f: load_weights(digits_mlp(), f["folder"], model_name="small_mlp"),
        "is a directory",
        ModelError,
    ),
    (
        "model-a-string",
        lambda f: load_weights("mlp", f["weights.safetensors"], model_name="m"),
        "torch.nn.Module",
        ModelError,
    ),
)


def read_data(name: str) -> Callable[[Files], Any]:
    return lambda f: read_labelled_file(f[name])


cases(
    read_labelled_file,
    ("nan-inputs", read_data("data-nan.safetensors"), "NaN", DataError),
    ("inf-inputs", read_data("data-inf.npz"), "infinite", DataError),
    ("no-examples", read_data("data-empty.safetensors"), "no examples", DataError),
    ("negative-labels", read_data("data-negative.safetensors"), "negatives", DataError),
    ("float-labels", read_data("data-float-labels.safetensors"), "integer", DataError),
    ("2d-labels", read_data("data-2d-labels.npz"), "labels must have shape", DataError),
    ("integer-inputs", read_data("data-int-inputs.safetensors"), "'inputs'", DataError),
    ("1d-inputs", read_data("data-1d-inputs.pt"), "'inputs'", DataError),
    ("labels-of-another-length", read_data("data-mismatch.safetensors"), "labels must have shape"),
    ("no-inputs", read_data("data-no-inputs.npz"), "no 'inputs'", DataError),
    ("a-list", read_data("data-list.pt"), "holds a list", DataError),
    ("garbage", read_data("garbage.npz"), "garbage.npz", DataError),
    ("a-directory", read_data("folder"), "is a directory", DataError),
)
cases(
    sha256_file,
    ("missing", lambda f: sha256_file(f["absent.pt"]), "absent.pt does not exist"),
    ("a-directory", lambda f: sha256_file(f["folder"]), "is a directory"),
)
for _writer, _payload in (
    (write_json_atomic, {"value": 1.0}),
    (write_text_atomic, "text"),
    (write_bytes_atomic, b"bytes"),
    (write_output, "text"),
):
    cases(
        _writer,
        (
            "missing-directory",
            lambda f, w=_writer, p=_payload: w(Path(f["absent"]) / "out", p),
            "absent",
        ),
        ("a-directory", lambda f, w=_writer, p=_payload: w(f["folder"], p), "folder"),
    )

cases(
    check_output,
    ("missing-directory", lambda f: check_output(Path(f["absent"]) / "out"), "absent"),
    ("a-directory", lambda f: check_output(f["folder"]), "is a directory"),
)

# --- data --------------------------------------------------------------------------------


def batches(data: Any, batch_size: Any = 4) -> Callable[[Files], Any]:
    return lambda f: list(input_batches(data, batch_size, CPU, torch.float64))


cases(
    input_batches,
    ("no-examples", batches(X[:0]), "no examples", DataError),
    ("nan-inputs", batches(spoiled(X, math.nan)), "NaN", DataError),
    ("inf-inputs", batches(spoiled(X, math.inf)), "infinite", DataError),
    ("nan-in-a-later-batch", batches(later_batch_nan()), "batch 1", DataError),
    ("batch-size-0", batches(X, 0), "batch_size", DataError),
    ("batch-size-a-string", batches(X, "4"), "batch_size", DataError),
    ("data-a-string", batches("data.pt"), "str", DataError),
    ("data-a-dict", batches({"inputs": X}), "dict", DataError),
    ("batch-of-strings", batches([("a", "b")]), "batch 0", DataError),
    ("0-d-tensor", batches(torch.tensor(1.0)), "0-d", DataError),
)
CASES += [
    Case(
        qualified(input_batches),
        label,
        batches(inputs),
        "dtype",
        DataError,
    )
    for label, inputs in (("complex-inputs", X.cdouble()), ("bool-inputs", X > 0))
]
cases(
    corrupt_labels,
    ("ratio-above-1", lambda f: corrupt_labels(Y, 1.5, num_classes=3, seed=0), "ratio"),
    ("ratio-nan", lambda f: corrupt_labels(Y, math.nan, num_classes=3, seed=0), "ratio"),
    (
        "unknown-rule",
        lambda f: corrupt_labels(Y, 0.5, rule="shuffle", num_classes=3, seed=0),
        "rule",
    ),
    ("float-labels", lambda f: corrupt_labels(Y.float(), 0.5, num_classes=3, seed=0), "integer"),
    ("2d-labels", lambda f: corrupt_labels(Y[:, None], 0.5, num_classes=3, seed=0), "1-D"),
    (
        "labels-out-of-range",
        lambda f: corrupt_labels(Y + 3, 0.5, num_classes=3, seed=0),
        "0..2",
        DataError,
    ),
    (
        "negative-labels",
        lambda f: corrupt_labels(negative_labels(), 0.5, num_classes=3, seed=0),
        "negative labels",
        DataError,
    ),
    ("no-classes", lambda f: corrupt_labels(Y, 0.5, num_classes=0, seed=0), "num_classes"),
    ("seed-a-string", lambda f: corrupt_labels(Y, 0.5, num_classes=3, seed="0"), "seed"),
    ("labels-a-list", lambda f: corrupt_labels(Y.tolist(), 0.5, num_classes=3, seed=0), "list"),
)
cases(
    default_data_root,
    ("unknown-data-set", lambda f: default_data_root("imagenet"), "imagenet", DataError),
)
cases(
    download_dataset,
    (
        "unknown-data-set",
        lambda f: download_dataset("imagenet", f["absent"], opener=offline),
        "imagenet",
        DataError,
    ),
    (
        "directory-a-file",
        lambda f: download_dataset("mnist", f["file.txt"], progress=False, opener=offline),
        "file.txt",
        DataError,
    ),
    (
        "network-down",
        lambda f: download_dataset("mnist", f["absent"], progress=False, opener=offline),
        "train-images-idx3-ubyte.gz",
        DataError,
    ),
)
cases(
    load_dataset,
    ("unknown-data-set", lambda f: load_dataset("imagenet"), "imagenet", DataError),
    ("train-size-0", lambda f: load_dataset("digits", train_size=0), "train_size", DataError),
    ("test-size-a-string", lambda f: load_dataset("digits", test_size="9"), "test_size"),
    ("train-size-too-large", lambda f: load_dataset("digits", train_size=10**6), "exceeds"),
    ("seed-a-float", lambda f: load_dataset("digits", seed=1.5), "seed", DataError),
    ("integer-dtype", lambda f: load_dataset("digits", dtype=torch.int64), "dtype", DataError),
    ("dtype-a-string", lambda f: load_dataset("digits", dtype="float32"), "dtype", DataError),
    ("missing-root", lambda f: load_dataset("mnist", root=f["absent"]), "absent", DataError),
    ("damaged-files", lambda f: load_dataset("mnist", root=f["mnist-magic"]), "magic number"),
)
cases(
    parse_data_spec,
    ("unknown-data-set", lambda f: parse_data_spec("svhn"), "unknown data set 'svhn'", DataError),
    ("empty-folder", lambda f: parse_data_spec("mnist:"), "the folder is empty", DataError),
    ("file-without-path", lambda f: parse_data_spec("file:"), "file:PATH", DataError),
    ("folder-for-digits", lambda f: parse_data_spec("digits:/tmp"), "digits is bundled"),
)
cases(
    load_examples,
    ("unknown-form", lambda f: load_examples("cifar", None, None), "cifar10:DIR", DataError),
    ("examples-0", lambda f: load_examples("digits", None, 0), "--examples must be positive"),
    ("missing-file", lambda f: load_examples(f"file:{f['absent']}", None, None), "absent"),
    ("split-of-a-file", lambda f: load_examples(f"file:{f['absent']}", "test", 1), "--split"),
    ("missing-cifar", lambda f: load_examples(f"cifar10:{f['absent']}", None, None), "absent"),
    ("damaged-mnist", lambda f: load_examples(f"mnist:{f['mnist-magic']}", None, 1), "magic"),
)
cases(
    load_digits,
    ("test-fraction-0", lambda f: load_digits(test_fraction=0.0), "test_fraction", DataError),
    ("test-fraction-above-1", lambda f: load_digits(test_fraction=1.5), "test_fraction"),
    ("seed-a-string", lambda f: load_digits(seed="0"), "seed", DataError),
    ("integer-dtype", lambda f: load_digits(dtype=torch.int32), "dtype", DataError),
)


def mnist_split(name: str, split: str = "test") -> Callable[[Files], Any]:
    return lambda f: load_mnist_split(f[name], split)


cases(
    load_mnist_split,
    ("missing-directory", mnist_split("absent"), "does not exist", DataError),
    ("a-file", mnist_split("file.txt"), "file.txt", DataError),
    ("unknown-split", mnist_split("mnist-magic", "validation"), "split", DataError),
    ("wrong-magic", mnist_split("mnist-magic"), "magic number", DataError),
    ("truncated", mnist_split("mnist-truncated"), "truncated", DataError),
    ("labels-out-of-range", mnist_split("mnist-labels-12"), "outside 0..9", DataError),
    ("counts-differ", mnist_split("mnist-counts"), "6 images but", DataError),
    ("labels-missing", mnist_split("mnist-no-labels"), "t10k-labels-idx1-ubyte", DataError),
    ("garbage-gzip", mnist_split("mnist-garbage-gz"), "gzip", DataError),
)


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("case", [case.param for case in CASES])
def test_bad_input_raises_a_clear_minsharp_error(
    case: Case, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A registration that wrongly succeeds must not leak into the other tests.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(MinsharpError) as raised:
        case.call(files)
    error = raised.value
    assert isinstance(error, case.error), f"{type(error).__name__}: {error}"
    message = str(error).strip()
    assert message, f"{type(error).__name__} without a message"
    assert case.names in message, message


def test_every_public_function_and_measure_has_a_case() -> None:
    public = public_functions() | {f"measure {name}" for name in available()}
    covered = {case.target for case in CASES}
    assert set(EXEMPT) <= public, "an exemption names no public function"
    assert not set(EXEMPT) & covered, "an exempt function has cases: drop the exemption"
    assert sorted(public - covered - set(EXEMPT)) == []


def test_every_measure_option_has_a_bad_value() -> None:
    options = {option for name in available() for option in spec(name).defaults}
    assert sorted(options - UNCHECKED_OPTIONS - set(BAD_OPTIONS)) == []


SUFFIXES = (".safetensors", ".pt", ".npz")


@cache
def whole_file(suffix: str) -> bytes:
    """A valid data file of each format, as bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        write_tensors(data_of(DIGITS, DIGIT_LABELS))(path)
        return path.read_bytes()


@settings(max_examples=30, deadline=None)
@given(suffix=st.sampled_from(SUFFIXES), data=st.data())
def test_a_truncated_file_is_refused(
    tmp_path_factory: pytest.TempPathFactory, suffix: str, data: st.DataObject
) -> None:
    whole = whole_file(suffix)
    cut = data.draw(st.integers(0, len(whole) - 1), label="bytes kept")
    path = tmp_path_factory.mktemp("truncated") / f"cut{suffix}"
    path.write_bytes(whole[:cut])
    with pytest.raises(DataError, match=re.escape(path.name)):
        read_labelled_file(path)


# --------------------------------------------------------------------------- the CLI


@dataclass(frozen=True)
class CliCase:
    """``minsharp ARGV`` (``{name}`` stands for a file of :data:`WRITERS`) must fail cleanly."""

    label: str
    argv: tuple[str, ...]
    names: str

    @property
    def param(self) -> Any:
        return pytest.param(self, id=f"{'-'.join(command_of(self.argv))}-{self.label}")


def command_of(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The subcommand words at the start of ``argv``, as the parser reads them."""
    parser, words = build_parser(), []
    for token in argv:
        commands = _subcommands(parser)
        if token not in commands:
            break
        words.append(token)
        parser = commands[token]
    return tuple(words)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_commands(
    parser: argparse.ArgumentParser | None = None, prefix: tuple[str, ...] = ()
) -> set[tuple[str, ...]]:
    """Every runnable subcommand of the parser, e.g. ``("study", "batch-size")``."""
    commands = _subcommands(parser or build_parser())
    if not commands:
        return {prefix}
    return set().union(*(cli_commands(sub, (*prefix, name)) for name, sub in commands.items()))


MEASURE = ("measure", "--threads", "1", "--model", "small_mlp")
WEIGHTS = (*MEASURE, "--data", "digits", "--examples", "20", "--weights")
RANDOM = (*MEASURE, "--random-init", "--examples", "4")
FILE_DATA = (*MEASURE, "--random-init", "--data")
TRACE = ("--measures", "hessian_trace")
HUGE_SEED = "99999999999999999999999"


def on_digits(*argv: str) -> tuple[str, ...]:
    return (*RANDOM, "--data", "digits", *argv)


CLI_CASES: list[CliCase] = [
    CliCase(label, tuple(argv), names)
    for label, argv, names in [
        ("no-arguments", ("measure",), "needs --model and --data"),
        ("unknown-measure", on_digits("--measures", "hessian_trac"), "unknown measure"),
        ("empty-measures", on_digits("--measures", ","), "--measures is empty"),
        (
            "unknown-model",
            ("measure", "--model", "resnet", "--random-init", "--data", "digits"),
            "unknown model 'resnet'",
        ),
        (
            "bad-model-syntax",
            ("measure", "--model", "a:b:c", "--random-init", "--data", "digits"),
            "expected a model name",
        ),
        (
            "unimportable-factory",
            ("measure", "--model", "no_such_module_xyz:build", "--random-init", "--data", "digits"),
            "cannot import module",
        ),
        (
            "bad-data-spec",
            (*RANDOM, "--data", "cifar"),
            "digits, mnist:DIR, fashion-mnist:DIR, cifar10:DIR or file:PATH",
        ),
        ("mnist-without-directory", (*RANDOM, "--data", "mnist:"), "expected digits"),
        ("missing-mnist-directory", (*RANDOM, "--data", "mnist:{absent}"), "does not exist"),
        ("damaged-mnist", (*RANDOM, "--data", "mnist:{mnist-truncated}"), "truncated"),
        (
            "mnist-labels-out-of-range",
            (*RANDOM, "--data", "mnist:{mnist-labels-12}"),
            "outside 0..9",
        ),
        ("missing-data-file", (*FILE_DATA, "file:{absent.pt}"), "absent.pt does not exist"),
        ("data-a-directory", (*FILE_DATA, "file:{folder}"), "is a directory"),
        ("garbage-data-file", (*FILE_DATA, "file:{garbage.pt}"), "garbage.pt"),
        ("nan-data", (*FILE_DATA, "file:{data-nan.safetensors}"), "NaN"),
        ("inf-data", (*FILE_DATA, "file:{data-inf.npz}"), "infinite"),
        ("empty-data", (*FILE_DATA, "file:{data-empty.safetensors}"), "no examples"),
        ("negative-labels", (*FILE_DATA, "file:{data-negative.safetensors}"), "negatives"),
        ("float-labels", (*FILE_DATA, "file:{data-float-labels.safetensors}"), "integer"),
        ("2d-labels", (*FILE_DATA, "file:{data-2d-labels.npz}"), "labels must have shape"),
        ("integer-inputs", (*FILE_DATA, "file:{data-int-inputs.safetensors}"), "floating point"),
        (
            "labels-out-of-range",
            (*FILE_DATA, "file:{data-labels-12.safetensors}", "--num-classes", "10"),
            "labels up to 12",
        ),
        (
            "a-label-implying-a-huge-model",
            (*FILE_DATA, "file:{data-label-id.safetensors}"),
            "987654322 outputs",
        ),
        (
            "images-too-small",
            (
                "measure",
                "--model",
                "small_cnn",
                "--random-init",
                "--data",
                "file:{data-small-images.safetensors}",
            ),
            "16×16",
        ),
        (
            "split-for-a-file",
            (*FILE_DATA, "file:{data-nan.safetensors}", "--split", "train"),
            "--split applies",
        ),
        ("examples-0", on_digits("--examples", "0"), "--examples must be positive"),
        ("examples-negative", on_digits("--examples", "-3"), "--examples must be positive"),
        ("examples-too-many", on_digits("--examples", "100000"), "has only"),
        ("examples-not-a-number", on_digits("--examples", "many"), "invalid int value"),
        ("unknown-split", on_digits("--split", "validation"), "invalid choice"),
        ("missing-weights", (*WEIGHTS, "{absent.pt}"), "absent.pt does not exist"),
        ("weights-a-directory", (*WEIGHTS, "{folder}"), "is a directory"),
        ("garbage-weights", (*WEIGHTS, "{garbage.pt}"), "garbage.pt"),
        ("garbage-safetensors", (*WEIGHTS, "{garbage.safetensors}"), "not a readable"),
        ("truncated-weights", (*WEIGHTS, "{truncated.safetensors}"), "truncated.safetensors"),
        ("weights-wrong-keys", (*WEIGHTS, "{wrong-keys.safetensors}"), "missing keys"),
        ("weights-wrong-shapes", (*WEIGHTS, "{wrong-shapes.pt}"), "shape mismatches"),
        ("integer-weights", (*WEIGHTS, "{integer-weights.safetensors}"), "not floating-point"),
        ("weights-a-list", (*WEIGHTS, "{list.pt}"), "holds a list"),
        ("nan-weights", (*WEIGHTS, "{nan-weights.safetensors}", *TRACE), "non-finite"),
        (
            "weights-and-random-init",
            (*WEIGHTS, "{weights.safetensors}", "--random-init"),
            "exclude each other",
        ),
        ("no-weights", (*MEASURE, "--data", "digits"), "--weights FILE"),
        ("option-syntax", on_digits("--option", "batch_size=3"), "expected MEASURE.KEY=VALUE"),
        ("option-unknown", on_digits(*TRACE, "--option", "hessian_trace.rho=1"), "no option 'rho'"),
        (
            "option-other-measure",
            on_digits(*TRACE, "--option", "minimum_sharpness.seed=1"),
            "not among the measures",
        ),
        (
            "option-unreadable",
            on_digits(*TRACE, "--option", "hessian_trace.batch_size=[3"),
            "cannot read the value",
        ),
        (
            "option-negative-batch",
            on_digits(*TRACE, "--option", "hessian_trace.batch_size=-1"),
            "batch_size must be a positive integer",
        ),
        (
            "option-bool-batch",
            on_digits(*TRACE, "--option", "hessian_trace.batch_size=True"),
            "batch_size",
        ),
        (
            "option-seed-word",
            on_digits("--measures", "minimum_sharpness", "--option", "minimum_sharpness.seed=x"),
            "seed must be an integer",
        ),
        (
            "option-twice",
            on_digits(
                *TRACE,
                "--option",
                "hessian_trace.batch_size=2",
                "--option",
                "hessian_trace.batch_size=3",
            ),
            "given twice",
        ),
        ("model-option-syntax", on_digits("--model-option", "bias"), "expected KEY=VALUE"),
        ("model-option-unknown", on_digits("--model-option", "depth=3"), "no option 'depth'"),
        (
            "model-option-bias",
            on_digits("--model-option", "bias=maybe"),
            "bias must be True or False",
        ),
        (
            "model-option-hidden",
            (
                "measure",
                "--model",
                "mlp",
                "--model-option",
                "hidden=-1",
                "--random-init",
                "--data",
                "digits",
            ),
            "hidden must be",
        ),
        (
            "images-model-on-flat-data",
            ("measure", "--model", "lenet", "--random-init", "--data", "digits"),
            "takes images",
        ),
        ("batch-size-0", on_digits("--batch-size", "0"), "--batch-size must be positive"),
        ("threads-0", on_digits("--threads", "0"), "--threads must be positive"),
        ("num-classes-0", on_digits("--num-classes", "0"), "--num-classes must be positive"),
        ("unknown-device", on_digits("--device", "gpu"), "--device must be cpu, cuda or cuda:N"),
        ("unknown-dtype", on_digits("--dtype", "float16"), "invalid choice"),
        ("output-a-directory", on_digits("--output", "{folder}"), "is a directory"),
        (
            "output-in-missing-directory",
            on_digits("--output", "{absent}/out.json"),
            "does not exist",
        ),
        (
            "seed-beyond-torch",
            on_digits("--seed", HUGE_SEED),
            "seed",
        ),
        ("unknown-flag", ("measures", "--verbose"), "unrecognized arguments"),
    ]
]


def study_cases(kind: tuple[str, ...], table: list[tuple[str, tuple[str, ...], str]]) -> None:
    """Cases of a study command, each with its own output directory and a tiny data set."""
    for label, argv, names in table:
        CLI_CASES.append(CliCase(label, (*kind, "--output", "{absent}", *argv), names))


SHARED_STUDY = [
    ("seeds-not-numbers", ("--seeds", "a,b"), "--seeds must be"),
    ("seeds-empty", ("--seeds", ","), "--seeds is empty"),
    ("seeds-beyond-torch", ("--seeds", HUGE_SEED), "seed"),
    ("unknown-model", ("--models", "resnet"), "unknown model 'resnet'"),
    ("unimportable-factory", ("--models", "no_such_mod_q:build"), "cannot import module"),
    ("unknown-launcher", ("--launcher", "pbs"), "invalid choice"),
    ("local-with-job-options", ("--launcher", "local", "--gpus", "1"), "takes no job options"),
    ("launcher-option-no-value", ("--launcher-option", "qos"), "expected KEY=VALUE"),
    ("unknown-measure", ("--measures", "bn_sharpness,sharpness"), "unknown measure 'sharpness'"),
    ("negative-epochs", ("--epochs", "-1"), "epochs must be"),
    ("negative-lr", ("--lr", "-0.1"), "lr must be"),
    ("train-size-0", ("--train-size", "0"), "train_size must be"),
    ("measure-examples-0", ("--measure-examples", "0"), "measure_examples must be"),
    ("unknown-dataset", ("--dataset", "imagenet"), "imagenet"),
    ("train-size-too-large", ("--train-size", "100000"), "exceeds"),
    ("missing-data-dir", ("--dataset", "mnist", "--data-dir", "{absent.pt}"), "does not exist"),
    ("damaged-data", ("--dataset", "mnist", "--data-dir", "{mnist-counts}"), "6 images but"),
    ("threads-0", ("--threads", "0"), "--threads must be positive"),
    ("unknown-device", ("--device", "tpu"), "--device must be"),
    ("target-accuracy-word", ("--target-accuracy", "high"), "expected a number or none"),
    ("unknown-dtype", ("--dtype", "float16"), "invalid choice"),
]
OUTPUT_CASES = [
    ("output-a-file", ("--output", "{file.txt}"), "is a file"),
    ("output-not-a-study", ("--output", "{non-empty}"), "not a study directory"),
]
CONFIG_CASES = [
    ("config-missing", ("--config", "{absent.pt}"), "does not exist"),
    ("config-garbage", ("--config", "{config-garbage.json}"), "not valid JSON"),
    ("config-a-list", ("--config", "{config-list.json}"), "JSON object"),
    ("config-unknown-key", ("--config", "{config-keys.json}"), "'learning_rate'"),
    ("config-bad-value", ("--config", "{config-values.json}"), "epochs must be"),
    ("config-unknown-preset", ("--config", "{config-preset.json}"), "unknown preset 'huge'"),
    ("config-a-directory", ("--config", "{folder}"), "cannot be read"),
    ("unknown-preset", ("--preset", "huge"), "invalid choice"),
]
RANDOMIZED = [
    ("ratios-not-numbers", ("--ratios", "low,high"), "--ratios must be"),
    ("ratio-above-1", ("--ratios", "0,2"), "ratios must be numbers in [0, 1]"),
    ("resamples-0", ("--resamples", "0"), "--resamples must be positive"),
    ("hidden-0", ("--hidden", "0"), "hidden"),
    ("unknown-corruption", ("--corruption", "flip"), "invalid choice"),
]
study_cases(("demo",), [*SHARED_STUDY, *RANDOMIZED])
study_cases(("study", "randomized-labels"), [*SHARED_STUDY, *RANDOMIZED, *CONFIG_CASES])
study_cases(
    ("study", "batch-size"),
    [
        *SHARED_STUDY,
        *CONFIG_CASES,
        ("batch-sizes-not-numbers", ("--batch-sizes", "small,large"), "--batch-sizes must be"),
        ("one-batch-size", ("--batch-sizes", "64"), "at least two"),
        ("batch-size-0", ("--batch-sizes", "0,64"), "positive"),
        ("rescale-spread-below-1", ("--rescale-spread", "0.5"), "rescale_spread"),
    ],
)
study_cases(
    ("study", "bn-sharpness"),
    [
        *SHARED_STUDY,
        *CONFIG_CASES,
        ("weights-not-numbers", ("--weights", "zero,half"), "--weights must be"),
        ("weights-without-0", ("--weights", "0.5,1"), "weights must hold 0"),
        ("delta-above-1", ("--delta", "2"), "delta must be"),
        ("without-bn-sharpness", ("--measures", "hessian_trace"), "must include bn_sharpness"),
        ("model-without-batchnorm", ("--models", "small_mlp"), "has no batch-norm"),
    ],
)
for _kind in (
    ("demo",),
    ("study", "randomized-labels"),
    ("study", "batch-size"),
    ("study", "bn-sharpness"),
):
    CLI_CASES += [CliCase(label, (*_kind, *argv), names) for label, argv, names in OUTPUT_CASES]
CLI_CASES += [
    CliCase(label, ("report", *argv), names)
    for label, argv, names in [
        ("missing-directory", ("{absent}",), "does not exist"),
        ("a-file", ("{file.txt}",), "file.txt"),
        ("not-a-study", ("{study-empty}",), "no study.json"),
        ("garbage-study-json", ("{study-garbage}",), "unreadable"),
        ("study-json-a-list", ("{study-list}",), "not a minsharp-study file"),
        ("other-format", ("{study-format}",), "not a minsharp-study file"),
        ("other-version", ("{study-version}",), "version 99"),
        ("unknown-kind", ("{study-kind}",), "double-descent"),
        ("config-missing-keys", ("{study-config-keys}",), "lacks"),
        ("config-bad-values", ("{study-config-values}",), "imagenet"),
        (
            "runs-not-a-list",
            ("{study-runs}",),
            "runs",
        ),
        ("resamples-0", ("{study-empty}", "--resamples", "0"), "--resamples must be positive"),
        ("resamples-not-a-number", ("{study-empty}", "--resamples", "many"), "invalid int"),
    ]
]

#: A line argparse prints for a usage error (``minsharp measure: error: …``).
USAGE_ERROR = re.compile(r"^minsharp( [\w-]+)*: error: \S", re.MULTILINE)


def refuse_training(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the study started a run: bad input must be refused before training")


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[[list[str]], tuple[int, str, str, bool]]:
    """``minsharp ARGV`` in-process: exit status, stdout, stderr, and whether argparse exited."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(base, "execute_run", refuse_training)

    def run(argv: list[str]) -> tuple[int, str, str, bool]:
        try:
            code, usage = main(argv), False
        except SystemExit as stop:
            code, usage = stop.code, True
        out, err = capsys.readouterr()
        return code, out, err, usage

    return run


@pytest.mark.parametrize("case", [case.param for case in CLI_CASES])
def test_the_cli_refuses_bad_input_with_one_error_line(
    case: CliCase, files: Files, cli: Callable[[list[str]], tuple[int, str, str, bool]]
) -> None:
    code, out, err, usage = cli(expand(case.argv, files))
    assert code == 2, f"exit status {code}\n{out}\n{err}"
    assert "Traceback" not in out + err
    assert "internal error" not in err, err
    if usage:
        assert USAGE_ERROR.search(err), err
    else:
        assert err.startswith("minsharp: error: "), err
    assert case.names in err, err


def test_every_cli_subcommand_has_cases() -> None:
    covered = {command_of(case.argv) for case in CLI_CASES}
    assert sorted(cli_commands() - covered) == []


# --------------------------------------------------------------------------- no code runs

#: Every way a weights or data file reaches the unpickler: loader and file.
EVIL_LOADS: list[tuple[str, Callable[[Files], Any]]] = [
    *[
        (
            f"read_tensors-{name}",
            lambda f, name=name: read_tensors(f[name], what="weights file", error=ModelError),
        )
        for name in ("evil.pt", "evil-legacy.pt", "evil.safetensors", "evil-torch.npz")
    ],
    *[
        (f"read_state_dict-{name}", lambda f, name=name: read_state_dict(f[name]))
        for name in ("evil.pt", "evil-legacy.pt")
    ],
    *[
        (
            f"load_weights-{name}",
            lambda f, name=name: load_weights(digits_mlp(), f[name], model_name="small_mlp"),
        )
        for name in ("evil.pt", "evil-legacy.pt")
    ],
    *[
        (f"read_labelled_file-{name}", lambda f, name=name: read_labelled_file(f[name]))
        for name in ("evil-data.pt", "evil-legacy.pt", "data-objects.npz", "evil-torch.npz")
    ],
    ("load_checkpoint", lambda f: load_checkpoint(f["checkpoint-evil"])),
]
EVIL_COMMANDS = [
    ("weights-pt", (*WEIGHTS, "{evil.pt}")),
    ("weights-legacy", (*WEIGHTS, "{evil-legacy.pt}")),
    ("data-pt", (*FILE_DATA, "file:{evil-data.pt}")),
    ("data-legacy", (*FILE_DATA, "file:{evil-legacy.pt}")),
    ("data-npz", (*FILE_DATA, "file:{data-objects.npz}")),
]


@pytest.mark.parametrize("load", [pytest.param(load, id=name) for name, load in EVIL_LOADS])
def test_loading_a_malicious_pickle_runs_none_of_it(
    load: Callable[[Files], Any], files: Files
) -> None:
    with pytest.raises(MinsharpError, match=re.escape(str(files.folder))):
        load(files)
    assert not files.marker.exists()


@pytest.mark.parametrize("argv", [pytest.param(argv, id=name) for name, argv in EVIL_COMMANDS])
def test_the_cli_runs_no_code_from_a_malicious_file(
    argv: tuple[str, ...], files: Files, cli: Callable[[list[str]], tuple[int, str, str, bool]]
) -> None:
    code, _, err, _ = cli(expand(argv, files))
    assert code == 2 and err.startswith("minsharp: error: ") and "Traceback" not in err, err
    assert not files.marker.exists()


def unpickled_object_array(path: str) -> Any:
    with np.load(path, allow_pickle=True) as archive:
        return archive["inputs"][0]


def test_the_malicious_payloads_are_live(files: Files) -> None:
    """Loaded unsafely, the files above do run their payload: the refusals are not vacuous."""
    unsafe_loads: list[Callable[[], Any]] = [
        lambda: torch.load(files["evil.pt"], weights_only=False)["payload"],
        lambda: pickle.loads(Path(files["evil-legacy.pt"]).read_bytes())["payload"],
        lambda: unpickled_object_array(files["data-objects.npz"]),
    ]
    for unsafe in unsafe_loads:
        files.marker.unlink(missing_ok=True)
        unsafe().close()  # the payload's return value: the file it opened
        assert files.marker.exists()

"""Checkpoints that rebuild a trained network.

A checkpoint is a directory holding ``model.safetensors`` (the state dict) and
``checkpoint.json`` (how to rebuild the network through :func:`minsharp.models.build_model`,
the weights' SHA-256 and dtype, and a free-form JSON record such as the training config and
history). Both files are written atomically, the weights first, so a ``checkpoint.json``
that exists describes weights that were completely written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from minsharp.errors import MinsharpError, ModelError
from minsharp.io import (
    difference_phrases,
    load_weights,
    read_tagged_json,
    sha256_file,
    state_differences,
    write_bytes_atomic,
    write_json_atomic,
)
from minsharp.models import build_model
from minsharp.options import nn_module

#: File names inside a checkpoint directory.
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.json"
#: The ``format`` tag and version written into ``checkpoint.json``.
CHECKPOINT_FORMAT = "minsharp-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    *,
    model_spec: Mapping[str, Any],
    record: Mapping[str, Any],
) -> None:
    """Write ``model`` to ``directory`` as ``model.safetensors`` plus ``checkpoint.json``.

    ``checkpoint.json`` holds ``{"format", "version", "model": model_spec, "weights": {"file",
    "sha256", "dtype"}, "record": record}``. Before anything is written, ``model_spec`` is
    checked to rebuild (on the meta device, without touching any random generator) a network
    with exactly the model's state-dict keys and shapes. Both files are written atomically
    (temporary file, fsync, rename), the weights first; the directory is created if needed.

    Args:
        directory: the checkpoint directory.
        model: the trained network (any device; the weights are stored from the CPU).
        model_spec: ``{"name": zoo name, "input_shape": [...], "num_classes": K,
            "options": {...}}``, the arguments of :func:`minsharp.models.build_model`.
        record: anything JSON-able (training config, history…); non-finite floats are
            stored as the strings ``"nan"``, ``"inf"``, ``"-inf"``.

    Raises:
        ModelError: ``model`` is not a module, or ``model_spec`` is malformed or rebuilds a
            different network.
        MinsharpError: ``record`` is not a mapping, or the directory cannot be written.
    """
    from safetensors.torch import save as safetensors_bytes

    nn_module("model", model)
    if not isinstance(record, Mapping):
        raise MinsharpError(f"record must be a mapping (JSON object); got {record!r}.")
    directory = Path(directory)
    spec = _normalised_spec(model_spec, where="model_spec")
    state = {name: value.detach() for name, value in model.state_dict().items()}
    _check_rebuilds(spec, state)
    floating = [value.dtype for value in state.values() if value.is_floating_point()]
    dtype = str(floating[0]).removeprefix("torch.") if floating else "float32"
    tensors = {name: value.cpu().contiguous() for name, value in state.items()}
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as failure:
        raise MinsharpError(f"cannot create checkpoint directory {directory}: {failure}.") from None
    payload = safetensors_bytes(tensors, metadata={"format": CHECKPOINT_FORMAT})
    write_bytes_atomic(directory / WEIGHTS_FILE, payload)
    write_json_atomic(
        directory / CHECKPOINT_FILE,
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": spec,
            "weights": {
                "file": WEIGHTS_FILE,
                "sha256": hashlib.sha256(payload).hexdigest(),
                "dtype": dtype,
            },
            "record": dict(record),
        },
    )


def _check_rebuilds(spec: dict[str, Any], state: Mapping[str, Tensor]) -> None:
    """Raise unless ``spec`` rebuilds (on the meta device, no generator touched) ``state``'s net."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        rebuilt = _build(spec, where="model_spec").state_dict()
    differences = _state_differences(state, rebuilt)
    if differences:
        raise ModelError(
            f"model_spec {spec} does not rebuild the model being saved: {differences}. Give the "
            "zoo name, input shape, class count and options the model was built with."
        )


def load_checkpoint(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network saved by :func:`save_checkpoint` in ``directory``.

    The network is rebuilt with :func:`minsharp.models.build_model` from the ``model`` entry
    of ``checkpoint.json`` (the caller's random generators are left untouched), converted to
    the saved dtype, and filled from ``model.safetensors`` after checking the file's SHA-256
    against the one recorded; keys and shapes must match exactly.

    Args:
        directory: the checkpoint directory.

    Returns:
        ``(model, record)``: the network on the CPU in eval mode, and the ``record`` given to
        :func:`save_checkpoint` as read back from JSON.

    Raises:
        ModelError: ``checkpoint.json`` or ``model.safetensors`` is missing, truncated,
            corrupt or inconsistent; the message names the file.
    """
    content, weights_path = verify_checkpoint(directory)
    path = Path(directory) / CHECKPOINT_FILE
    weights, record = content["weights"], content["record"]
    spec = _normalised_spec(content.get("model"), where=f"checkpoint file {path}")
    dtype = getattr(torch, str(weights.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelError(f"checkpoint file {path}: unknown weights dtype {weights.get('dtype')!r}.")
    with torch.random.fork_rng(devices=[]):
        model = _build(spec, where=f"checkpoint file {path}").to(dtype)
    load_weights(model, weights_path, model_name=spec["name"])
    model.eval()
    return model, record


def verify_checkpoint(directory: str | Path) -> tuple[dict[str, Any], Path]:
    """Check that the checkpoint in ``directory`` is whole: its JSON and its weights' SHA-256.

    Reads ``checkpoint.json`` (format and version) and hashes the weights file it names,
    without building the network (what a resumed study checks of each finished run).

    Returns:
        The content of ``checkpoint.json`` and the path of its weights file.

    Raises:
        ModelError: a file is missing, truncated or corrupt, or the weights' SHA-256 is not
            the one recorded; the message names the file.
    """
    directory = Path(directory)
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        state = "is a directory" if path.is_dir() else "does not exist"
        raise ModelError(f"checkpoint file {path} {state}; was the checkpoint saved completely?")
    content = read_tagged_json(
        path,
        tag=CHECKPOINT_FORMAT,
        version=CHECKPOINT_VERSION,
        error=ModelError,
        fix="Delete the checkpoint directory and train again.",
    )
    weights = content.get("weights")
    if not isinstance(weights, dict) or not isinstance(content.get("record"), dict):
        raise ModelError(f"checkpoint file {path} lacks its 'weights' or 'record' entry.")
    name = weights.get("file", WEIGHTS_FILE)
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise ModelError(f"checkpoint file {path}: the weights file {name!r} is not a file name.")
    weights_path = directory / name
    digest = sha256_file(weights_path, what=f"weights file of checkpoint {path}:", error=ModelError)
    _check_digest(weights_path, digest, weights.get("sha256"), path)
    return content, weights_path


def check_recorded_digest(weights_path: str | Path, digest: str) -> None:
    """Refuse a weights file whose SHA-256 ``digest`` differs from the one recorded for it.

    The record is the ``checkpoint.json`` beside the file (:func:`save_checkpoint`), when it
    names this file; a file without one is not checked.

    Raises:
        ModelError: a recorded SHA-256 differs from ``digest`` (the file is corrupt).
    """
    weights_path = Path(weights_path)
    path = weights_path.parent / CHECKPOINT_FILE
    if not path.is_file():
        return
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return  # not a record this file can be checked against
    weights = content.get("weights") if isinstance(content, dict) else None
    if (
        isinstance(weights, dict)
        and weights.get("file", WEIGHTS_FILE) == weights_path.name
        and "sha256" in weights
    ):
        _check_digest(weights_path, digest, weights.get("sha256"), path)


def _check_digest(weights_path: Path, digest: str, expected: Any, record: Path) -> None:
    if expected != digest:
        raise ModelError(
            f"weights file {weights_path} does not match checkpoint {record}: its SHA-256 is "
            f"{digest}, the checkpoint recorded {expected}. The file is corrupt, truncated or "
            "was replaced; delete the checkpoint directory and train again."
        )


def _normalised_spec(spec: Any, *, where: str) -> dict[str, Any]:
    """``spec`` checked and in plain types: name, input_shape (list), num_classes, options."""
    if not isinstance(spec, Mapping):
        raise ModelError(f"{where}: the model spec must be a mapping, got {type(spec).__name__}.")
    missing = [key for key in ("name", "input_shape", "num_classes") if key not in spec]
    if missing:
        raise ModelError(
            f"{where}: the model spec lacks {', '.join(missing)}; expected "
            '{"name": zoo name, "input_shape": [...], "num_classes": K, "options": {...}}.'
        )
    name, shape, classes = spec["name"], spec["input_shape"], spec["num_classes"]
    options = spec.get("options") or {}
    if (
        not isinstance(name, str)
        or not isinstance(shape, Sequence)
        or isinstance(shape, str)
        or not all(isinstance(side, int) and not isinstance(side, bool) for side in shape)
        or not isinstance(classes, int)
        or isinstance(classes, bool)
        or classes < 1
        or not isinstance(options, Mapping)
    ):
        raise ModelError(
            f"{where}: malformed model spec {dict(spec)!r}; expected a zoo name, a list of "
            "integer input sides, a positive class count and a mapping of options."
        )
    try:
        options = json.loads(json.dumps(dict(options), allow_nan=False))
    except (TypeError, ValueError) as failure:
        raise ModelError(f"{where}: the model options are not plain JSON ({failure}).") from None
    return {"name": name, "input_shape": list(shape), "num_classes": classes, "options": options}


def _build(spec: dict[str, Any], *, where: str) -> nn.Module:
    """:func:`build_model` from a normalised spec, naming ``where`` in its errors."""
    try:
        return build_model(
            spec["name"], spec["input_shape"], spec["num_classes"], **spec["options"]
        )
    except ModelError as failure:
        raise ModelError(f"{where}: {failure}") from None
    except TypeError as failure:  # a builder rejecting an option's value
        raise ModelError(f"{where}: cannot build model {spec['name']!r} ({failure}).") from None


def _state_differences(state: Mapping[str, Tensor], rebuilt: Mapping[str, Tensor]) -> str:
    """Keys and shapes in which two state dicts differ, or ``""``."""
    missing, extra, reshaped = state_differences(state, rebuilt)
    shapes = [f"{key} {tuple(state[key].shape)} vs {tuple(rebuilt[key].shape)}" for key in reshaped]
    phrases = (
        "the rebuilt network has keys the model lacks",
        "the model has keys the rebuilt network lacks",
        "shapes differ (model vs rebuilt)",
    )
    problems = difference_phrases(
        missing, extra, shapes, phrases=phrases, listing=lambda items: str(items[:5])
    )
    return "; ".join(problems)

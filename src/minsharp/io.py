"""Safe reading of weights and data files, and atomic writing of JSON, text and bytes.

Nothing here unpickles arbitrary objects: ``.safetensors`` files are read with
:func:`safetensors.torch.load_file`, ``.npz`` archives with ``allow_pickle=False``, and every
other file with ``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and
plain containers. A pickle that would import or call anything else is refused with
:class:`~minsharp.errors.MinsharpError` before any of it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import pickle
import re
import stat
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from minsharp.errors import DataError, MinsharpError, ModelError
from minsharp.tensors import all_finite, check_labels

__all__ = [
    "CHECKPOINT_KEYS",
    "DATA_KEYS",
    "check_output",
    "jsonable",
    "load_weights",
    "package_version",
    "read_labelled_file",
    "read_state_dict",
    "read_tensors",
    "sha256_file",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_output",
    "write_text_atomic",
]

#: Keys under which a checkpoint dictionary may hold the state dict.
CHECKPOINT_KEYS = ("state_dict", "model")

#: Names of the tensors of a data file (``file:PATH``).
DATA_KEYS = ("inputs", "labels")

_MAX_LISTED = 10

#: The state-dict key suffix of batch-norm's step counter, optional in a weights file.
_COUNTER = ".num_batches_tracked"


def sha256_file(
    path: str | Path, *, what: str = "file", error: type[MinsharpError] = MinsharpError
) -> str:
    """Hex SHA-256 digest of the file at ``path``, read in chunks.

    Raises:
        MinsharpError: (of class ``error``, naming the file as ``what``) the file is missing,
            a directory or unreadable.
    """
    path = _existing_file(path, what=what, error=error)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as failure:
        raise error(f"{what} {path} cannot be read ({failure}).") from failure
    return digest.hexdigest()


def _existing_file(path: str | Path, *, what: str, error: type[MinsharpError]) -> Path:
    """``path`` as a :class:`Path`, after checking that it is a file."""
    path = Path(path)
    if not path.is_file():
        state = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise error(f"{what} {path} {state}.")
    return path


def read_tensors(path: str | Path, *, what: str, error: type[MinsharpError]) -> Any:
    """The content of a tensor file, read without running code from it.

    Args:
        path: a ``.safetensors`` file, an ``.npz`` archive, or a file written by
            ``torch.save`` (any other name).
        what: what the file is meant to hold, for the error messages ("weights file"…).
        error: the error class to raise.

    Returns:
        A dict of tensors for ``.safetensors`` and ``.npz`` (arrays become tensors), or
        whatever ``torch.load(weights_only=True)`` rebuilds: tensors in plain containers.

    Raises:
        MinsharpError: (of class ``error``) the file is missing, unreadable, or its pickle
            asks for anything other than tensors and plain containers.
    """
    path = _existing_file(path, what=what, error=error)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as failure:  # SafetensorError, OSError, …: say which file and why
            raise error(
                f"{what} {path} is not a readable .safetensors file ({failure})."
            ) from failure
    if suffix == ".npz":
        return _read_npz(path, what=what, error=error)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notes of the weights-only unpickler
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as failure:
        reason = str(failure).split("\n\n")[1:2] or [""]
        raise error(
            f"refused to load {what} {path}: torch.load(weights_only=True) rejects its pickle "
            f"({reason[0].strip() or 'unsupported content'}). It holds or calls more than "
            "tensors and plain containers, or was not written by torch.save, and loading it "
            "any other way could run arbitrary code. Save plain tensors instead: "
            "torch.save(model.state_dict(), path), or better the .safetensors format "
            "(safetensors.torch.save_file)."
        ) from failure
    except Exception as failure:  # torch.load raises many types for foreign files
        raise error(
            f"{what} {path} could not be read as a PyTorch file "
            f"({type(failure).__name__}: {failure}). Expected a .safetensors file or one "
            "written by torch.save."
        ) from failure


def _read_npz(path: Path, *, what: str, error: type[MinsharpError]) -> dict[str, Tensor]:
    """The arrays of an ``.npz`` archive as tensors, refusing pickled (object) arrays."""
    if not zipfile.is_zipfile(path):  # else np.load would take it for a pickle and refuse it
        raise error(f"{what} {path} is not a readable .npz archive (not a zip file).")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as failure:  # object arrays need pickle
        raise error(
            f"refused to load {what} {path}: it holds object arrays, which only load through "
            f"pickle ({failure}). Save numeric arrays only."
        ) from failure
    except (OSError, zipfile.BadZipFile, EOFError) as failure:
        raise error(f"{what} {path} is not a readable .npz archive ({failure}).") from failure
    tensors = {}
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):  # np.load hands other zip members back as bytes
            raise error(
                f"{what} {path}: member {name!r} is not a .npy array; an .npz archive (np.savez) "
                "holds arrays only."
            )
        try:
            tensors[name] = torch.from_numpy(np.array(array, copy=True))
        except TypeError as failure:
            raise error(
                f"{what} {path}: array {name!r} has dtype {array.dtype}, which has no tensor "
                "type; save numeric arrays."
            ) from failure
    return tensors


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict saved in a weights file.

    Accepts a ``.safetensors`` file, or a ``torch.save`` file holding a state dict or a
    checkpoint dictionary with the state dict under ``"state_dict"`` or ``"model"``.

    Raises:
        ModelError: unreadable or unsafe file (see :func:`read_tensors`), or content that is
            not a mapping from names to tensors.
    """
    content = read_tensors(path, what="weights file", error=ModelError)
    if not isinstance(content, Mapping):
        raise ModelError(
            f"weights file {path} holds a {type(content).__name__}; expected a state dict "
            "(a mapping from parameter names to tensors), e.g. torch.save(model.state_dict(), "
            "path)."
        )
    if not all(isinstance(value, Tensor) for value in content.values()):
        for key in CHECKPOINT_KEYS:
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
    not_tensors = [str(key) for key, value in content.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise ModelError(
            f"weights file {path}: entries {_listing(not_tensors)} are not tensors. Expected "
            "a state dict, or a checkpoint with the state dict under "
            f"{' or '.join(map(repr, CHECKPOINT_KEYS))}."
        )
    if not content:
        raise ModelError(f"weights file {path} holds no tensors.")
    return {str(key): value for key, value in content.items()}


def load_weights(model: nn.Module, path: str | Path, *, model_name: str) -> None:
    """Load the weights file at ``path`` into ``model``, checking keys and shapes strictly.

    Args:
        model: the network to fill, built with the shapes the weights were trained with.
        path: see :func:`read_state_dict`.
        model_name: how the model is named in error messages.

    A file without the batch-norm counters ``num_batches_tracked`` (saved by an older
    torch, or with them removed) loads: the counters keep the model's values.

    Raises:
        ModelError: unreadable or unsafe file, or a state dict whose keys or shapes differ
            from the model's; the message lists the missing and unexpected keys and the
            shape mismatches, naming the file and the model.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model {model_name} must be a torch.nn.Module to load {path} into; got a "
            f"{type(model).__name__}."
        )
    expected = model.state_dict()
    state = read_state_dict(path)
    # Batch-norm step counters absent from older files keep the model's own values: they
    # only set the running averages' momentum when that is None, never the function.
    state = {key: value for key, value in expected.items() if key.endswith(_COUNTER)} | state
    missing, unexpected, reshaped = state_differences(state, expected)
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in reshaped
    ]
    problems = difference_phrases(missing, unexpected, mismatched)
    if problems:
        raise ModelError(
            f"weights file {path} does not fit model {model_name}: {'; '.join(problems)}."
            f"{_prefix_hint(missing, unexpected)} Check that --model, its options and the "
            "data's input shape and class count are those the weights were trained with."
        )
    not_floating = [
        key
        for key, value in state.items()
        if expected[key].is_floating_point() and not value.is_floating_point()
    ]
    if not_floating:
        raise ModelError(
            f"weights file {path}: {_listing(not_floating)} are not floating-point tensors, "
            f"but model {model_name} holds floating-point values there."
        )
    model.load_state_dict(state, strict=True)


def state_differences(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """How ``state`` differs from the ``expected`` state dict, key by key.

    Returns:
        The keys of ``expected`` missing from ``state``, the keys of ``state`` that
        ``expected`` lacks, and the keys of both whose shapes differ (in ``expected``'s order).
    """
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    return missing, unexpected, reshaped


def difference_phrases(
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    *,
    phrases: tuple[str, str, str] = ("missing keys", "unexpected keys", "shape mismatches"),
    listing: Callable[[list[str]], str] | None = None,
) -> list[str]:
    """One phrase per non-empty kind of state-dict difference: ``"missing keys ['a', …]"``."""
    show = listing or _listing
    kinds = zip(phrases, (missing, unexpected, mismatched), strict=True)
    return [f"{phrase} {show(items)}" for phrase, items in kinds if items]


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """A hint when the file's names are the model's under a common prefix (``module.``…)."""
    if not missing or len(missing) != len(unexpected):
        return ""
    first = unexpected[0]
    for cut in (i + 1 for i, char in enumerate(first) if char == "."):
        prefix = first[:cut]
        if all(key.startswith(prefix) for key in unexpected) and sorted(
            key[cut:] for key in unexpected
        ) == sorted(missing):
            return (
                f" The file's names are the model's with the prefix {prefix!r} (as saved "
                "from a wrapped model); save the inner model's state dict instead."
            )
    return ""


def _listing(items: list[str]) -> str:
    """Up to :data:`_MAX_LISTED` items, comma-separated, with the count of the rest."""
    shown = ", ".join(items[:_MAX_LISTED])
    rest = len(items) - _MAX_LISTED
    return f"[{shown}{f', … and {rest} more' if rest > 0 else ''}]"


def read_labelled_file(path: str | Path) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` from a data file holding tensors named ``inputs`` and ``labels``.

    The file is a ``.safetensors`` file, an ``.npz`` archive, or a ``torch.save`` file of a
    dictionary (read with ``weights_only=True``). ``inputs`` are floating point with a leading
    example axis; ``labels`` are integer class indices 0..K−1, one per example.

    Raises:
        DataError: unreadable or unsafe file, missing tensors, tensors of the wrong kind, no
            examples, or non-finite inputs.
    """
    content = read_tensors(path, what="data file", error=DataError)
    if not isinstance(content, Mapping):
        raise DataError(
            f"data file {path} holds a {type(content).__name__}; expected a dictionary with "
            f"tensors {' and '.join(map(repr, DATA_KEYS))}."
        )
    absent = [key for key in DATA_KEYS if key not in content]
    if absent:
        found = ", ".join(map(repr, map(str, content))) or "nothing"
        raise DataError(
            f"data file {path} has no {' or '.join(map(repr, absent))}; it holds {found}. "
            f"Save the inputs and the labels under the names {' and '.join(DATA_KEYS)}."
        )
    inputs, labels = (content[key] for key in DATA_KEYS)
    for key, value in zip(DATA_KEYS, (inputs, labels), strict=True):
        if not isinstance(value, Tensor):
            raise DataError(
                f"data file {path}: {key!r} is a {type(value).__name__}, not a tensor/array."
            )
    if not inputs.is_floating_point() or inputs.dim() < 2:
        raise DataError(
            f"data file {path}: 'inputs' must be floating point with shape (N, …); got dtype "
            f"{inputs.dtype} and shape {tuple(inputs.shape)}. Convert (and normalise) integer "
            "pixels before saving."
        )
    check_labels(labels, inputs.shape[0], f"data file {path}")
    if labels.numel() == 0:
        raise DataError(f"data file {path} holds no examples; save at least one.")
    if not all_finite(inputs):
        bad = int((~torch.isfinite(inputs)).flatten(1).any(1).sum())
        raise DataError(
            f"data file {path}: 'inputs' of {bad} examples hold NaN or infinite values; clean "
            "or drop those examples before saving."
        )
    return inputs, labels.to(torch.long)


def jsonable(value: Any) -> Any:
    """``value`` in plain JSON types.

    Tensors and arrays become lists, non-JSON objects their ``str``, and non-finite floats
    the strings ``"nan"``, ``"inf"``, ``"-inf"`` (strict JSON has no such numbers).
    """
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    if isinstance(value, (Tensor, np.ndarray, np.generic)):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def read_tagged_json(
    path: str | Path, *, tag: str, version: int, error: type[MinsharpError], fix: str = ""
) -> dict[str, Any]:
    """The JSON object in ``path``, checked to carry ``"format": tag`` and ``version``.

    Every versioned file minsharp writes (study, run result, checkpoint) is read through this.

    Raises:
        error: the file cannot be read, is not JSON (truncated or corrupt), or is another
            format or version; the message names the file and ends with ``fix``.
    """
    hint = f" {fix}" if fix else ""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as failure:
        raise error(
            f"{path} is unreadable or truncated ({type(failure).__name__}: {failure}).{hint}"
        ) from None
    if not isinstance(content, dict) or content.get("format") != tag:
        raise error(f"{path} is not a {tag} file.{hint}")
    if content.get("version") != version:
        raise error(
            f"{path} has format version {content.get('version')!r}; this minsharp reads "
            f"version {version}.{hint}"
        )
    return content


def write_json_atomic(path: str | Path, content: Any) -> None:
    """Write ``content`` as indented JSON to ``path`` atomically.

    The text goes to a temporary file in the same directory, is flushed to disk, and then
    replaces ``path`` in one :func:`os.replace`: readers see the old file or the new one, never
    a partial write. Values are first passed through :func:`jsonable`.

    Raises:
        MinsharpError: the directory does not exist or cannot be written.
    """
    text = json.dumps(jsonable(content), indent=2, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`write_bytes_atomic`.

    Raises:
        MinsharpError: the directory does not exist or cannot be written.
    """
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically.

    The bytes go to a temporary file in the same directory, are flushed to disk, and then
    replace ``path`` in one :func:`os.replace`: readers see the old file or the new one, never
    a partial write. The file gets the usual permissions (``0o666`` less the umask).

    Raises:
        MinsharpError: the directory does not exist or cannot be written.
    """
    path = Path(path)
    try:
        descriptor, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=_TEMPORARY_SUFFIX
        )
    except OSError as failure:
        raise MinsharpError(f"cannot write {path}: {failure}.") from failure
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private (0600)
        os.replace(temporary, path)
    except BaseException as failure:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(failure, OSError):
            raise MinsharpError(f"cannot write {path}: {failure}.") from failure
        raise


#: The suffix of :func:`write_bytes_atomic`'s temporaries, named ``.<file name>.<random>.tmp``.
_TEMPORARY_SUFFIX = ".tmp"


def atomic_leftovers(path: str | Path) -> list[Path]:
    """The temporaries of atomic writes of ``path`` that a killed process left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{_TEMPORARY_SUFFIX}"))


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def package_version() -> str:
    """The version of minsharp: the installed package's metadata, else the source tree's.

    A checkout used without installing (``PYTHONPATH=src``) reads ``pyproject.toml`` beside
    ``src`` and marks the version ``+source``; with neither, ``"0+unknown"``.
    """
    try:
        return importlib.metadata.version("minsharp")
    except importlib.metadata.PackageNotFoundError:
        pass
    project = Path(__file__).resolve().parents[2] / "pyproject.toml"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        found = re.search(r'^version\s*=\s*"([^"]+)"', project.read_text("utf-8"), re.M)
        if found:
            return f"{found.group(1)}+source"
    return "0+unknown"


#: The ``--output`` that means standard output.
STDOUT = "-"

#: Outputs under these folders are written in place, never replaced (``/dev/stdout``…).
_SYSTEM = ("/dev/", "/proc/")


def check_output(path: str | Path, *, flag: str = "--output") -> None:
    """Refuse an output path that cannot be written, before any computing.

    ``-`` (standard output), a FIFO, a character device or a path under ``/dev`` or
    ``/proc``, or a file (through symbolic links) in an existing directory.

    Raises:
        MinsharpError: the path (or its link target) is a directory or another kind of
            special file, or its directory does not exist.
    """
    if path == STDOUT or _in_place(path):
        return
    target = Path(os.path.realpath(Path(path).expanduser()))
    if target.is_dir():
        raise MinsharpError(f"{flag} {path} is a directory; give a file name.")
    if target.exists() and not target.is_file():
        raise MinsharpError(
            f"{flag} {path} is neither a regular file, a FIFO nor a character device."
        )
    if not target.parent.is_dir():
        raise MinsharpError(f"{flag} {path}: directory {target.parent} does not exist.")


def write_output(path: str | Path, text: str, *, flag: str = "--output") -> None:
    """Write ``text`` to a user-named output: a file, a link to one, a FIFO or a device.

    ``-`` is standard output. A FIFO, a character device or a path under ``/dev`` or
    ``/proc`` (``/dev/stdout``…) is written in place (appended to, never replaced). A
    symbolic link is followed and its target written atomically (:func:`write_bytes_atomic`
    in the target's directory), so the link stays a link; any other path is written
    atomically.

    Raises:
        MinsharpError: the output cannot be written (see :func:`check_output`).
    """
    check_output(path, flag=flag)
    if path == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    if not _in_place(path):
        write_bytes_atomic(os.path.realpath(Path(path).expanduser()), text.encode("utf-8"))
        return
    try:
        with open(Path(path).expanduser(), "a", encoding="utf-8") as stream:
            stream.write(text)
    except OSError as failure:
        raise MinsharpError(f"cannot write {flag} {path}: {failure}.") from failure


def _in_place(path: str | Path) -> bool:
    """Whether ``path`` is written in place: a FIFO, a character device or a system path."""
    given = Path(path).expanduser().absolute()
    if any(str(name).startswith(_SYSTEM) for name in (given, os.path.realpath(given))):
        return True
    try:
        mode = os.stat(given).st_mode  # through symbolic links
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)

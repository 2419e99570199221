"""The one data-spec parser: what ``minsharp measure --data`` and the studies' data sets name.

A data spec is one of

====================== ===============================================================
``digits``             scikit-learn's bundled digits (no files)
``mnist[:DIR]``        the official MNIST IDX files in ``DIR``
``fashion-mnist[:DIR]`` the Fashion-MNIST IDX files in ``DIR``
``cifar10[:DIR]``      the CIFAR-10 binary batch files in ``DIR`` (or ``DIR/cifar-10-batches-bin``)
``file:PATH``          a ``.safetensors``, ``.npz`` or ``torch.save`` file of tensors ``inputs``
                       and ``labels`` (:func:`minsharp.io.read_labelled_file`)
====================== ===============================================================

Without ``DIR`` the data set's cache folder :func:`default_data_root` is meant. Names forgive
case, ``_`` and common spellings (``Fashion_MNIST``, ``cifar-10``). :func:`parse_data_spec`
reads a spec into a :class:`DataSource`; :func:`minsharp.data.datasets.load_dataset` (a
train/test pair, for the studies) and :func:`load_examples` (one official split, for
``minsharp measure``) both start from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from minsharp.data import cifar
from minsharp.data.digits import load_digits
from minsharp.data.mnist import idx_images_to_tensor, read_idx_split
from minsharp.errors import DataError
from minsharp.io import read_labelled_file, sha256_file

#: The named data sets, in the order they are listed.
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")

#: How the data sets are called in messages and reports.
TITLES = {
    "digits": "digits",
    "mnist": "MNIST",
    "fashion-mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
}

#: Environment variable naming the parent folder of the data caches.
DATA_ENV = "MINSHARP_DATA"

#: The forms a data spec takes, as messages and ``--help`` list them.
DATA_FORMS = (
    "digits, mnist:DIR, fashion-mnist:DIR, cifar10:DIR or file:PATH (.safetensors, .npz or .pt)"
)

#: Split read from each named data set when none is asked for.
DEFAULT_SPLITS = {"digits": "train", "mnist": "test", "fashion-mnist": "test", "cifar10": "test"}

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}
_PIXELS = "x in [0, 1]"
_NORMALIZATIONS = {
    "mnist": f"(x - 0.5) / 0.5, {_PIXELS}",
    "fashion-mnist": f"(x - 0.5) / 0.5, {_PIXELS}",
    "cifar10": f"(x - mean_c) / std_c per channel c, {_PIXELS}, mean {cifar.MEAN}, std {cifar.STD}",
}


@dataclass(frozen=True)
class DataSource:
    """A parsed data spec.

    Attributes:
        dataset: a name of :data:`DATASETS`, or ``"file"``.
        location: the folder (named data sets) or file (``file:``) given, ``~`` expanded;
            ``None`` for a bare name (its cache folder, or nothing for digits).
        spec: the spec as written.
    """

    dataset: str
    location: Path | None
    spec: str


@dataclass
class LoadedData:
    """The labelled examples ``minsharp measure`` runs on, and where they came from."""

    inputs: Tensor
    labels: Tensor
    num_classes: int
    """The data set's class count (10 for the named data sets, 1 + largest label for files)."""
    record: dict[str, Any] = field(default_factory=dict)
    """What the JSON output says about the data."""


def canonical_name(name: str) -> str:
    """``name`` as listed in :data:`DATASETS` (case, ``_`` and common spellings forgiven).

    Raises:
        DataError: an unknown data set.
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}.")
    return key


def parse_data_spec(text: str) -> DataSource:
    """Read a data spec (see the module text): ``NAME``, ``NAME:DIR`` or ``file:PATH``.

    Example:
        >>> source = parse_data_spec("Fashion_MNIST:/data/fmnist")
        >>> source.dataset, str(source.location)
        ('fashion-mnist', '/data/fmnist')

    Raises:
        DataError: an unknown name, ``file`` without a path, a colon without a folder, or a
            folder given to digits; the message lists the forms.
    """
    name, colon, location = str(text).partition(":")
    if name.strip().lower() == "file":
        if not location:
            raise DataError(f"data spec {text!r}: give the file as file:PATH.")
        return DataSource("file", Path(location).expanduser(), text)
    try:
        dataset = canonical_name(name)
    except DataError as error:
        raise DataError(f"{error} A data spec is {DATA_FORMS}.") from None
    if colon and (not location or dataset == "digits"):
        why = "digits is bundled and takes no folder" if location else "the folder is empty"
        raise DataError(f"data spec {text!r}: {why}; expected {DATA_FORMS}.")
    return DataSource(dataset, Path(location).expanduser() if location else None, text)


def default_data_root(name: str) -> Path:
    """The cache folder of data set ``name``.

    ``$MINSHARP_DATA/<name>`` when ``MINSHARP_DATA`` is set, else
    ``$XDG_CACHE_HOME/minsharp/<name>``, with ``XDG_CACHE_HOME`` defaulting to ``~/.cache``.
    """
    key = canonical_name(name)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser() / key
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "minsharp" / key


def load_examples(text: str, split: str | None, examples: int | None) -> LoadedData:
    """The labelled examples of the data spec ``text`` (first ``examples`` of them, if given).

    A named data set gives one official split, ``split`` or :data:`DEFAULT_SPLITS` (digits:
    ``train``, the seeded 75 % / 25 % split of :func:`~minsharp.data.load_digits`, pixels
    x/16 ∈ [0, 1]; MNIST and Fashion-MNIST: ``test``, the ``t10k-*`` files, normalised
    ``(x − 0.5)/0.5`` as in the Minimum Sharpness paper, theory §6; CIFAR-10: ``test``,
    ``test_batch.bin``, normalised per channel by :data:`minsharp.data.cifar.MEAN` and
    :data:`~minsharp.data.cifar.STD`). ``file:PATH`` gives the file's tensors.

    Raises:
        DataError: a bad spec, a missing or malformed file, ``split`` given for a file, or
            fewer examples than asked for. Messages name the ``--data``, ``--split`` and
            ``--examples`` options of ``minsharp measure``.
    """
    source = parse_data_spec(text)
    if source.dataset == "file":
        if split is not None:
            raise DataError(
                f"--split applies to the named data sets ({', '.join(DATASETS)}), not to "
                f"--data {text}."
            )
        data = _file_examples(source)
    else:
        data = _split_examples(source, split or DEFAULT_SPLITS[source.dataset])
    available = int(data.labels.shape[0])
    if examples is not None:
        if examples < 1:
            raise DataError(f"--examples must be positive; got {examples}.")
        if examples > available:
            raise DataError(f"--examples {examples}: --data {text} has only {available} examples.")
        data.inputs, data.labels = data.inputs[:examples], data.labels[:examples]
    if data.labels.shape[0] == 0:
        raise DataError(f"--data {text} holds no examples.")
    data.record.update(
        spec=text,
        num_examples=int(data.labels.shape[0]),
        input_shape=list(data.inputs.shape[1:]),
        first_examples=examples is not None,
    )
    return data


def _file_examples(source: DataSource) -> LoadedData:
    assert source.location is not None
    inputs, labels = read_labelled_file(source.location)
    record = {
        "source": "file",
        "path": str(source.location.resolve()),
        "sha256": sha256_file(source.location),
    }
    return LoadedData(inputs, labels, int(labels.max()) + 1 if labels.numel() else 0, record)


def _split_examples(source: DataSource, split: str) -> LoadedData:
    """One official split of a named data set, with the record the JSON output keeps."""
    key = source.dataset
    if key == "digits":
        train, test = load_digits()
        inputs, labels = train if split == "train" else test
        return LoadedData(inputs, labels, 10, {"source": "digits", "split": split})
    folder = source.location or default_data_root(key)
    if key == "cifar10":
        batches = cifar.batch_folder(folder) or folder / cifar.FOLDER
        images, raw_labels, _ = cifar.read_split(batches, split)
        inputs = cifar.to_tensor(images)
    else:
        images, raw_labels, _ = read_idx_split(folder, split, dataset=TITLES[key])
        inputs = idx_images_to_tensor(images, normalize=True)
    record = {
        "source": key,
        "directory": str(folder.resolve()),
        "split": split,
        "normalization": _NORMALIZATIONS[key],
    }
    return LoadedData(inputs, torch.from_numpy(raw_labels.astype(np.int64)), 10, record)

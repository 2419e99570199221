"""The data sets of the studies as train/test pairs behind one call, :func:`load_dataset`.

============== ===================================== ========================================
name           inputs                                normalisation
============== ===================================== ========================================
digits         (N, 64) flat, 1797 examples, bundled   x/16 ∈ [0, 1] (as :func:`load_digits`)
mnist          (N, 1, 28, 28), 60 000 + 10 000        (x/255 − 0.5)/0.5 ∈ [−1, 1] (paper)
fashion-mnist  (N, 1, 28, 28), 60 000 + 10 000        (x/255 − 0.5)/0.5 ∈ [−1, 1]
cifar10        (N, 3, 32, 32), 50 000 + 10 000        (x/255 − mean_c)/std_c per channel
============== ===================================== ========================================

All have 10 classes. The MNIST normalisation is the Minimum Sharpness paper's (Ibayashi,
Hamaguchi, Imaizumi 2021; theory §6). CIFAR-10 uses the per-channel mean and standard deviation
of its 50 000 training images, :data:`minsharp.data.cifar.MEAN` and
:data:`~minsharp.data.cifar.STD`. Names are read by the one data-spec parser,
:func:`minsharp.data.sources.parse_data_spec`.

Where the files live: ``root`` if given, else the cache folder :func:`default_data_root`,
``$MINSHARP_DATA/<name>`` when ``MINSHARP_DATA`` is set, otherwise
``$XDG_CACHE_HOME/minsharp/<name>`` (``~/.cache/minsharp/<name>``). ``download=True`` fetches
missing official files there (see :mod:`minsharp.data.download`); files already present are
used as they are and their hashes recorded.

Splitting and subsampling draw from ``torch.Generator().manual_seed(seed)``:

* both official file sets present: the official split; ``train_size``/``test_size`` pick
  a uniform random subset (without replacement) of each part;
* only one file set present (our offline machines hold only MNIST's ``t10k-*`` files): a
  random permutation π of its n examples; train = π[:a], test = π[a:a + b], disjoint, where
  a = ``train_size`` and b = ``test_size``; a missing one is n minus the other, and with
  neither, a = round(0.8·n) (:data:`SINGLE_SET_TRAIN_FRACTION`), b = n − a;
  ``Splits.info["split"]`` says so in plain words;
* digits: :func:`~minsharp.data.load_digits`' seeded 75 %/25 % split, then subsets.

Selected examples keep the files' order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from minsharp.data import cifar
from minsharp.data.digits import load_digits
from minsharp.data.file_sets import Pool, read_cifar_pools, read_idx_pools
from minsharp.data.mnist import SPLIT_FILES, idx_images_to_tensor
from minsharp.data.sources import (
    DATA_ENV,
    DATASETS,
    TITLES,
    canonical_name,
    default_data_root,
    parse_data_spec,
)
from minsharp.errors import DataError
from minsharp.options import integer

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "SINGLE_SET_TRAIN_FRACTION",
    "Splits",
    "canonical_name",
    "default_data_root",
    "load_dataset",
]

#: Share of the examples that go to the training part when a single file set is split and
#: neither ``train_size`` nor ``test_size`` is given.
SINGLE_SET_TRAIN_FRACTION = 0.8

_CLASSES = {
    "digits": tuple(str(digit) for digit in range(10)),
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "cifar10": cifar.CLASSES,
}
_IDX_NORMALISATION = (
    "x ↦ (x/255 − 0.5)/0.5 ∈ [−1, 1] for pixels x ∈ {0..255}, as in the Minimum Sharpness "
    "paper (Ibayashi et al. 2021, theory §6)"
)
_CIFAR_NORMALISATION = (
    "x ↦ (x/255 − mean_c)/std_c per channel c = R, G, B with mean = "
    f"{cifar.MEAN} and std = {cifar.STD}, the per-channel statistics of the 50 000 CIFAR-10 "
    "training images"
)


@dataclass(frozen=True)
class Splits:
    """A train/test pair of one data set, with a JSON-able record of how it was made.

    Attributes:
        train_inputs: float inputs of the training part, (N, …) (see the module table).
        train_labels: int64 class indices 0..K−1 of the training part, (N,).
        test_inputs: float inputs of the test part, (M, …).
        test_labels: int64 class indices of the test part, (M,).
        num_classes: K.
        info: dataset, title, source and source_kind (``"cache"``, ``"directory"``,
            ``"bundled"``), downloaded (files fetched by this call), files (name, path,
            bytes, sha256, md5 and the official md5 where one exists, matches_official),
            files_match_official, normalisation (text) and normalisation_constants, split
            (plain words: ``"official train/test …"`` or ``"split from the test files only
            …"``), split_kind (``"official"``, ``"from-test-files"``, ``"from-train-files"``),
            sizes and available (examples per part, ``None`` for an absent file set),
            subsampled (whether available examples were left out), train_size, test_size, seed,
            input_shape, num_classes, class_names, and summary (one paragraph for a report).
    """

    train_inputs: Tensor
    train_labels: Tensor
    test_inputs: Tensor
    test_labels: Tensor
    num_classes: int
    info: dict[str, Any]

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        """``(train_inputs, train_labels)``."""
        return self.train_inputs, self.train_labels

    @property
    def test(self) -> tuple[Tensor, Tensor]:
        """``(test_inputs, test_labels)``."""
        return self.test_inputs, self.test_labels

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)``."""
        return tuple(self.train_inputs.shape[1:])


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Splits:
    """Load a data set as a train/test pair, optionally subsampled, with a record of it.

    How the parts are drawn is described in the module text.

    Args:
        name: one of :data:`DATASETS` (``"digits"`` needs no files), or a data spec
            ``NAME:DIR`` naming the folder instead of ``root``.
        root: folder holding the data set's files; default :func:`default_data_root`. MNIST
            and Fashion-MNIST: the official IDX files (``.gz`` or raw). CIFAR-10: the
            batch files, in ``root/cifar-10-batches-bin/`` or ``root`` itself, or the
            archive ``cifar-10-binary.tar.gz`` (verified by its official MD5, then extracted
            safely). Ignored for digits.
        download: fetch the missing official files into ``root`` first (network).
        train_size: examples in the training part (default: all of the training files).
        test_size: examples in the test part (default: all of the test files).
        seed: seeds the split and the subsets only; the same seed gives the same examples.
        dtype: floating dtype of the inputs (labels are int64).

    Returns:
        The :class:`Splits`.

    Raises:
        DataError: unknown data set, bad sizes, missing files (the message says where to put
            them and how to download them), damaged files (naming the file), or a failed
            download.
    """
    key, folder, source_kind = _locate(name, root)
    _check_request(train_size, test_size, seed, dtype)
    generator = torch.Generator().manual_seed(seed)
    if key == "digits":
        return _load_digits(train_size, test_size, seed, dtype, generator)
    if key == "cifar10":
        pools, files, downloaded = read_cifar_pools(folder, download=download)
    else:
        pools, files, downloaded = read_idx_pools(key, folder, download=download)
    plan = _plan(key, folder, pools, train_size, test_size, seed, generator)
    train_inputs, train_labels, test_inputs, test_labels = _draw(key, pools, plan, dtype)
    info = _record(
        key,
        source=str(folder.resolve()),
        source_kind=source_kind,
        downloaded=[path.name for path in downloaded],
        files=files,
        **_provenance(key, files, pools, plan, (len(train_labels), len(test_labels))),
        train_size=train_size,
        test_size=test_size,
        seed=seed,
        input_shape=list(train_inputs.shape[1:]),
    )
    return Splits(train_inputs, train_labels, test_inputs, test_labels, 10, info)


def _locate(name: str, root: str | Path | None) -> tuple[str, Path, str]:
    """The data set of ``name``, its folder, and whether that was given or the cache."""
    source = parse_data_spec(name)
    if source.dataset == "file":
        raise DataError(
            f"load_dataset reads the named data sets ({', '.join(DATASETS)}), not {name!r}; "
            "read a file of tensors with minsharp.io.read_labelled_file."
        )
    if source.location is not None and root is not None:
        raise DataError(f"load_dataset({name!r}, root={str(root)!r}): give the folder once.")
    given = source.location if source.location is not None else root
    if given is not None:
        return source.dataset, Path(given).expanduser(), "directory"
    if source.dataset == "digits":
        return "digits", Path(), "bundled"
    return source.dataset, default_data_root(source.dataset), "cache"


def _check_request(
    train_size: int | None, test_size: int | None, seed: int, dtype: torch.dtype
) -> None:
    for label, value in (("train_size", train_size), ("test_size", test_size)):
        if value is not None:
            integer(label, value, minimum=1, why="or None for the default", error=DataError)
    integer("seed", seed, error=DataError)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DataError(f"dtype must be a floating dtype such as torch.float32; got {dtype!r}.")


def _draw(
    key: str, pools: dict[str, Pool | None], plan: _SplitPlan, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The planned examples: train inputs and labels, test inputs and labels."""
    train_pool = pools["train"] if plan.kind != "from-test-files" else pools["test"]
    test_pool = pools["test"] if plan.kind != "from-train-files" else pools["train"]
    assert train_pool is not None and test_pool is not None
    convert = cifar.to_tensor if key == "cifar10" else idx_images_to_tensor
    return (
        convert(train_pool[0][plan.train], dtype=dtype),
        torch.from_numpy(train_pool[1][plan.train].astype(np.int64)),
        convert(test_pool[0][plan.test], dtype=dtype),
        torch.from_numpy(test_pool[1][plan.test].astype(np.int64)),
    )


def _provenance(
    key: str,
    files: list[dict[str, Any]],
    pools: dict[str, Pool | None],
    plan: _SplitPlan,
    sizes: tuple[int, int],
) -> dict[str, Any]:
    """The ``info`` fields saying how the files were read and which examples were used."""
    matches = [entry["matches_official"] for entry in files if entry["official_md5"]]
    available = {part: (len(pool[1]) if pool is not None else None) for part, pool in pools.items()}
    used = sum(sizes)
    if plan.kind == "official":
        subsampled = used < sum(count or 0 for count in available.values())
    else:
        subsampled = used < (available["test" if plan.kind == "from-test-files" else "train"] or 0)
    cifar10 = key == "cifar10"
    return {
        "files_match_official": all(matches) if matches else None,
        "normalisation": _CIFAR_NORMALISATION if cifar10 else _IDX_NORMALISATION,
        "normalisation_constants": (
            {"scale": 255, "mean": list(cifar.MEAN), "std": list(cifar.STD)}
            if cifar10
            else {"scale": 255, "mean": [0.5], "std": [0.5]}
        ),
        "split": plan.text,
        "split_kind": plan.kind,
        "sizes": {"train": sizes[0], "test": sizes[1]},
        "available": available,
        "subsampled": subsampled,
    }


# --- digits --------------------------------------------------------------------------------


def _load_digits(
    train_size: int | None,
    test_size: int | None,
    seed: int,
    dtype: torch.dtype,
    generator: torch.Generator,
) -> Splits:
    import sklearn

    (train_x, train_y), (test_x, test_y) = load_digits(seed=seed, dtype=dtype)
    available = {"train": len(train_y), "test": len(test_y)}
    train_idx = _subset(len(train_y), train_size, "train_size", "digits training part", generator)
    test_idx = _subset(len(test_y), test_size, "test_size", "digits test part", generator)
    split = (
        f"seeded random 75 %/25 % train/test split (seed {seed}) of scikit-learn's "
        f"{_count(available['train'] + available['test'])} digits, as "
        "minsharp.data.load_digits" + _subset_text(train_size, test_size, available, seed)
    )
    info = _record(
        "digits",
        source=f"scikit-learn {sklearn.__version__} bundled digits (sklearn.datasets.load_digits)",
        source_kind="bundled",
        downloaded=[],
        files=[],
        files_match_official=None,
        normalisation="x ↦ x/16 ∈ [0, 1] for pixel intensities x ∈ {0..16}; 8×8 images as "
        "64 flat features",
        normalisation_constants={"scale": 16, "mean": [0.0], "std": [1.0]},
        split=split,
        split_kind="official",
        sizes={"train": len(train_idx), "test": len(test_idx)},
        available=available,
        subsampled=len(train_idx) + len(test_idx) < available["train"] + available["test"],
        train_size=train_size,
        test_size=test_size,
        seed=seed,
        input_shape=list(train_x.shape[1:]),
    )
    train_index, test_index = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return Splits(
        train_x[train_index], train_y[train_index], test_x[test_index], test_y[test_index], 10, info
    )


# --- splitting and subsets -----------------------------------------------------------------


def _count(number: int) -> str:
    """``12345`` as ``"12 345"``."""
    return f"{number:,}".replace(",", " ")


def _subset(
    available: int, size: int | None, label: str, what: str, generator: torch.Generator
) -> np.ndarray:
    """Sorted indices of a uniform random subset of ``size`` of ``available`` (all if None)."""
    if size is None or size == available:
        return np.arange(available)
    if size > available:
        raise DataError(f"{label} = {size} exceeds the {_count(available)} examples of the {what}.")
    chosen = torch.randperm(available, generator=generator)[:size]
    return np.sort(chosen.numpy())


def _subset_text(
    train_size: int | None, test_size: int | None, available: dict[str, int | None], seed: int
) -> str:
    parts = [
        f"{_count(size)} of the {_count(available[part] or 0)} {part} examples"
        for part, size in (("train", train_size), ("test", test_size))
        if size is not None and size != available[part]
    ]
    return f"; seeded random subset (seed {seed}): {' and '.join(parts)}" if parts else ""


@dataclass(frozen=True)
class _SplitPlan:
    """Indices into the train and test pools, the split's kind, and its description."""

    train: np.ndarray
    test: np.ndarray
    kind: str
    text: str


def _plan(
    key: str,
    folder: Path,
    pools: dict[str, Pool | None],
    train_size: int | None,
    test_size: int | None,
    seed: int,
    generator: torch.Generator,
) -> _SplitPlan:
    """Which examples of the pools make the two parts (see the module text)."""
    title = TITLES[key]
    counts = {part: (len(pool[1]) if pool is not None else None) for part, pool in pools.items()}
    if pools["train"] is None or pools["test"] is None:
        return _single_set_plan(key, folder, counts, train_size, test_size, seed, generator)
    train_idx = _subset(
        counts["train"] or 0, train_size, "train_size", f"{title} training files", generator
    )
    test_idx = _subset(
        counts["test"] or 0, test_size, "test_size", f"{title} test files", generator
    )
    text = (
        f"official train/test split ({_count(counts['train'] or 0)} training and "
        f"{_count(counts['test'] or 0)} test examples)"
        + _subset_text(train_size, test_size, counts, seed)
    )
    return _SplitPlan(train_idx, test_idx, "official", text)


def _single_set_plan(
    key: str,
    folder: Path,
    counts: dict[str, int | None],
    train_size: int | None,
    test_size: int | None,
    seed: int,
    generator: torch.Generator,
) -> _SplitPlan:
    """Disjoint train and test parts drawn from the one file set present."""
    part = "test" if counts["test"] is not None else "train"
    other_files = "training files" if part == "test" else "test files"
    n = counts[part] or 0
    if train_size is None and test_size is None:
        train_size = round(SINGLE_SET_TRAIN_FRACTION * n)
    if test_size is None:
        test_size = n - (train_size or 0)
    if train_size is None:
        train_size = n - test_size
    if train_size < 1 or test_size < 1 or train_size + test_size > n:
        raise DataError(
            f"cannot split the {_count(n)} examples of the {TITLES[key]} {part} files into "
            f"{train_size} train and {test_size} test examples: the two parts are disjoint, so "
            f"train_size + test_size must be at most {_count(n)} and each at least 1 (the "
            f"{other_files} are not in {folder}, so only the {part} files are split)."
        )
    order = torch.randperm(n, generator=generator).numpy()
    if key == "cifar10":
        names = [cifar.TEST_BATCH] if part == "test" else list(cifar.TRAIN_BATCHES)
    else:
        names = list(SPLIT_FILES[part])
    text = (
        f"split from the {part} files only ({', '.join(names)}; the {other_files} are not in "
        f"{folder}): a seeded random permutation (seed {seed}) of their {_count(n)} examples, "
        f"the first {_count(train_size)} the training part and the next {_count(test_size)} "
        "the test part (disjoint)"
    )
    if train_size + test_size < n:
        text += f"; {_count(n - train_size - test_size)} examples unused"
    train_idx = np.sort(order[:train_size])
    test_idx = np.sort(order[train_size : train_size + test_size])
    return _SplitPlan(train_idx, test_idx, f"from-{part}-files", text)


def _record(key: str, **fields: Any) -> dict[str, Any]:
    """The JSON-able ``info`` of a :class:`Splits`, with its one-paragraph summary."""
    title = TITLES[key]
    sizes = fields["sizes"]
    summary = (
        f"{title} from {fields['source']}: {fields['split']}. "
        f"{_count(sizes['train'])} training and {_count(sizes['test'])} test examples of shape "
        f"{tuple(fields['input_shape'])}; normalisation {fields['normalisation']}."
    )
    if fields["files_match_official"] is False:
        summary += (
            " Some files differ byte-wise from the official downloads (MD5; e.g. recompressed "
            "copies); their contents passed the format checks."
        )
    return {
        "dataset": key,
        "title": title,
        **fields,
        "num_classes": 10,
        "class_names": list(_CLASSES[key]),
        "summary": summary,
    }

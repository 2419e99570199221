"""The data sets of the randomized-label study behind one call, :func:`load_dataset`.

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
:data:`~minsharp.data.cifar.STD`.

Where the files live: ``root`` if given, else the cache folder :func:`default_data_root`,
``$MINSHARP_DATA/<name>`` when ``MINSHARP_DATA`` is set, otherwise
``$XDG_CACHE_HOME/minsharp/<name>`` (``~/.cache/minsharp/<name>``). ``download=True`` fetches
missing official files there (see :mod:`minsharp.data.download`); files already present are
used as they are and their hashes recorded.

When only one of the two official file sets is present (our offline machines hold only
MNIST's test files), its examples are split, seeded, into disjoint train and test parts, and
``Splits.info["split"]`` says so in plain words.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from minsharp.data import cifar
from minsharp.data.digits import load_digits
from minsharp.data.download import RESOURCES, download_dataset, file_md5, official_md5
from minsharp.data.mnist import SPLIT_FILES, idx_images_to_tensor, locate_idx_file, read_idx_split
from minsharp.errors import DataError
from minsharp.io import sha256_file
from minsharp.options import integer

#: Names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")

#: Share of the examples that go to the training part when a single file set is split and
#: neither ``train_size`` nor ``test_size`` is given.
SINGLE_SET_TRAIN_FRACTION = 0.8

#: Environment variable naming the parent folder of the data caches.
DATA_ENV = "MINSHARP_DATA"

_TITLES = {
    "digits": "digits",
    "mnist": "MNIST",
    "fashion-mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
}
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}
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

    Splitting and subsampling draw from ``torch.Generator().manual_seed(seed)``:

    * both official file sets present: the official split; ``train_size``/``test_size`` pick
      a uniform random subset (without replacement) of each part;
    * only one file set present (e.g. MNIST's ``t10k-*`` files): a random permutation π of
      its n examples; train = π[:a], test = π[a:a + b], disjoint, where a = ``train_size``
      and b = ``test_size``; a missing one is n minus the other, and with neither,
      a = round(0.8·n) (:data:`SINGLE_SET_TRAIN_FRACTION`), b = n − a;
    * digits: :func:`~minsharp.data.load_digits`' seeded 75 %/25 % split, then subsets.

    Selected examples keep the files' order.

    Args:
        name: one of :data:`DATASETS` (``"digits"`` needs no files).
        root: folder holding the data set's files; default :func:`default_data_root`. MNIST
            and Fashion-MNIST: the official IDX files (``.gz`` or raw). CIFAR-10: the
            batch files, in ``root/cifar-10-batches-bin/`` or ``root`` itself, or the
            archive ``cifar-10-binary.tar.gz`` (verified by its official MD5, then extracted
            safely). Ignored for digits.
        download: fetch the missing official files into ``root`` first (network).
        train_size: examples in the training part (default: all of the training files; when
            a single file set is split, as described above).
        test_size: examples in the test part (default: all of the test files; when a single
            file set is split, as described above).
        seed: seeds the split and the subsets only; the same seed gives the same examples.
        dtype: floating dtype of the inputs (labels are int64).

    Returns:
        The :class:`Splits`.

    Raises:
        DataError: unknown data set, bad sizes, missing files (the message says where to put
            them and how to download them), damaged files (naming the file), or a failed
            download.
    """
    key = canonical_name(name)
    sizes = {"train_size": train_size, "test_size": test_size}
    for label, value in sizes.items():
        if value is not None:
            integer(label, value, minimum=1, why="or None for the default", error=DataError)
    integer("seed", seed, error=DataError)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DataError(f"dtype must be a floating dtype such as torch.float32; got {dtype!r}.")
    generator = torch.Generator().manual_seed(seed)

    if key == "digits":
        return _load_digits(train_size, test_size, seed, dtype, generator)

    folder = Path(root).expanduser() if root is not None else default_data_root(key)
    source_kind = "directory" if root is not None else "cache"
    if key == "cifar10":
        pools, files, downloaded = _cifar_pools(folder, download=download)
    else:
        pools, files, downloaded = _idx_pools(key, folder, download=download)

    train_idx, test_idx, split_kind, split_text = _plan(
        key, folder, pools, train_size, test_size, seed, generator
    )
    train_pool = pools["train"] if split_kind != "from-test-files" else pools["test"]
    test_pool = pools["test"] if split_kind != "from-train-files" else pools["train"]
    assert train_pool is not None and test_pool is not None
    convert = cifar.to_tensor if key == "cifar10" else idx_images_to_tensor
    train_inputs = convert(train_pool[0][train_idx], dtype=dtype)
    test_inputs = convert(test_pool[0][test_idx], dtype=dtype)
    train_labels = torch.from_numpy(train_pool[1][train_idx].astype(np.int64))
    test_labels = torch.from_numpy(test_pool[1][test_idx].astype(np.int64))

    matches = [entry["matches_official"] for entry in files if entry["official_md5"]]
    normalisation = _CIFAR_NORMALISATION if key == "cifar10" else _IDX_NORMALISATION
    constants = (
        {"scale": 255, "mean": list(cifar.MEAN), "std": list(cifar.STD)}
        if key == "cifar10"
        else {"scale": 255, "mean": [0.5], "std": [0.5]}
    )
    available = {part: (len(pool[1]) if pool is not None else None) for part, pool in pools.items()}
    used = len(train_labels) + len(test_labels)
    if split_kind == "official":
        subsampled = used < sum(count or 0 for count in available.values())
    else:
        subsampled = used < (available["test" if split_kind == "from-test-files" else "train"] or 0)
    info = _record(
        key,
        source=str(folder.resolve()),
        source_kind=source_kind,
        downloaded=[path.name for path in downloaded],
        files=files,
        files_match_official=all(matches) if matches else None,
        normalisation=normalisation,
        normalisation_constants=constants,
        split=split_text,
        split_kind=split_kind,
        sizes={"train": len(train_labels), "test": len(test_labels)},
        available=available,
        subsampled=subsampled,
        train_size=train_size,
        test_size=test_size,
        seed=seed,
        input_shape=list(train_inputs.shape[1:]),
    )
    return Splits(train_inputs, train_labels, test_inputs, test_labels, 10, info)


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


# --- files ---------------------------------------------------------------------------------

_Pool = tuple[np.ndarray, np.ndarray]


def _file_entry(dataset: str, path: Path) -> dict[str, Any]:
    """Name, path, size and hashes of one data file, and whether it is the official file."""
    expected = official_md5(dataset, path.name)
    actual = file_md5(path) if expected else None
    return {
        "name": path.name,
        "path": str(path.resolve()),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "md5": actual,
        "official_md5": expected,
        "matches_official": (actual == expected) if expected else None,
    }


def _download_hint(key: str, folder: Path) -> str:
    bases = dict.fromkeys(resource.urls[0].rsplit("/", 1)[0] + "/" for resource in RESOURCES[key])
    urls = ", ".join(bases) + (" or its mirrors" if len(RESOURCES[key][0].urls) > 1 else "")
    return (
        f"Either download them: load_dataset({key!r}, download=True) in Python or --download "
        f"on the command line (into {folder}; from {urls}, checked against the official MD5s), "
        "or put the official files in a folder yourself and pass it as root= / --data-dir "
        f"(or set {DATA_ENV} to a folder holding one subfolder per data set)."
    )


def _idx_pools(
    key: str, folder: Path, *, download: bool
) -> tuple[dict[str, _Pool | None], list[dict[str, Any]], list[Path]]:
    """The uint8 images and labels of each IDX split present in ``folder``."""
    title = _TITLES[key]

    def present(split: str) -> bool:
        return any(locate_idx_file(folder, name) is not None for name in SPLIT_FILES[split])

    downloaded: list[Path] = []
    if download and not (present("train") and present("test")):
        downloaded = download_dataset(key, folder)
    if not (present("train") or present("test")):
        state = "does not exist" if not folder.is_dir() else "holds none of its files"
        names = ", ".join(f"{name}[.gz]" for pair in SPLIT_FILES.values() for name in pair)
        raise DataError(
            f"{title} data not found: {folder} {state}. Expected the official IDX files "
            f"{names}; the two test files (t10k-*) alone are enough, they are then split into "
            f"train and test parts. {_download_hint(key, folder)}"
        )
    pools: dict[str, _Pool | None] = {"train": None, "test": None}
    files = []
    for split in ("train", "test"):
        if present(split):
            images, labels, paths = read_idx_split(folder, split, dataset=title)
            pools[split] = (images, labels)
            files += [_file_entry(key, path) for path in paths]
    return pools, files, downloaded


def _cifar_pools(
    folder: Path, *, download: bool
) -> tuple[dict[str, _Pool | None], list[dict[str, Any]], list[Path]]:
    """The uint8 images and labels of the CIFAR-10 batches under ``folder``."""
    archive = folder / cifar.ARCHIVE
    batches = cifar.batch_folder(folder)
    complete = batches is not None and all(
        (batches / name).is_file() for name in (*cifar.TRAIN_BATCHES, cifar.TEST_BATCH)
    )
    downloaded: list[Path] = []
    if not complete and (batches is None or download or archive.is_file()):
        if not archive.is_file():
            if not download:
                state = "does not exist" if not folder.is_dir() else "holds none of its files"
                raise DataError(
                    f"CIFAR-10 data not found: {folder} {state}. Expected the binary version: "
                    f"the archive {cifar.ARCHIVE}, or its batch files "
                    f"{', '.join((*cifar.TRAIN_BATCHES, cifar.TEST_BATCH))} in {folder} or "
                    f"{folder / cifar.FOLDER} (test_batch.bin alone is enough: it is then "
                    f"split into train and test parts). {_download_hint('cifar10', folder)}"
                )
            downloaded = download_dataset("cifar10", folder)
        else:
            expected = official_md5("cifar10", cifar.ARCHIVE)
            actual = file_md5(archive)
            if actual != expected:
                raise DataError(
                    f"checksum mismatch for {archive}: expected MD5 {expected} (the official "
                    f"{cifar.ARCHIVE}), got {actual}. Delete it and run again with --download, "
                    "or download it yourself from https://www.cs.toronto.edu/~kriz/ and pass "
                    "its folder with --data-dir; or extract the official batch files into "
                    f"{folder / cifar.FOLDER} yourself."
                )
        batches = cifar.extract(archive, folder)
    assert batches is not None
    files = [_file_entry("cifar10", archive)] if archive.is_file() else []
    pools: dict[str, _Pool | None] = {"train": None, "test": None}
    train_present = [name for name in cifar.TRAIN_BATCHES if (batches / name).is_file()]
    if train_present and len(train_present) < len(cifar.TRAIN_BATCHES):
        missing = sorted(set(cifar.TRAIN_BATCHES) - set(train_present))
        raise DataError(
            f"CIFAR-10 training batches {', '.join(missing)} are missing from {batches} (found "
            f"{', '.join(train_present)}). Put all five there, or none to split "
            f"{cifar.TEST_BATCH} into train and test parts. {_download_hint('cifar10', folder)}"
        )
    for part, names in (("train", train_present), ("test", [cifar.TEST_BATCH])):
        read = [cifar.read_batch(batches / name) for name in names if (batches / name).is_file()]
        if read:
            pools[part] = (
                np.concatenate([images for images, _ in read]),
                np.concatenate([labels for _, labels in read]),
            )
            files += [_file_entry("cifar10", batches / name) for name in names]
    if pools["train"] is None and pools["test"] is None:  # pragma: no cover - batch_folder
        raise DataError(f"no CIFAR-10 batch files in {batches}.")
    return pools, files, downloaded


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


def _plan(
    key: str,
    folder: Path,
    pools: dict[str, _Pool | None],
    train_size: int | None,
    test_size: int | None,
    seed: int,
    generator: torch.Generator,
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Indices into the train and test pools, the split's kind, and its description."""
    title = _TITLES[key]
    counts = {part: (len(pool[1]) if pool is not None else None) for part, pool in pools.items()}
    if pools["train"] is not None and pools["test"] is not None:
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
        return train_idx, test_idx, "official", text

    part = "test" if pools["test"] is not None else "train"
    other = "train" if part == "test" else "test"
    other_files = "training files" if other == "train" else "test files"
    n = counts[part] or 0
    if key == "cifar10":
        names = [cifar.TEST_BATCH] if part == "test" else list(cifar.TRAIN_BATCHES)
    else:
        names = list(SPLIT_FILES[part])
    if train_size is None and test_size is None:
        train_size = round(SINGLE_SET_TRAIN_FRACTION * n)
        test_size = n - train_size
    elif test_size is None:
        test_size = n - (train_size or 0)
    elif train_size is None:
        train_size = n - test_size
    if train_size < 1 or test_size < 1 or train_size + test_size > n:
        raise DataError(
            f"cannot split the {_count(n)} examples of the {title} {part} files into "
            f"{train_size} train and {test_size} test examples: the two parts are disjoint, so "
            f"train_size + test_size must be at most {_count(n)} and each at least 1 (the "
            f"{other_files} are not in {folder}, so only the {part} files are split)."
        )
    order = torch.randperm(n, generator=generator).numpy()
    train_idx = np.sort(order[:train_size])
    test_idx = np.sort(order[train_size : train_size + test_size])
    text = (
        f"split from the {part} files only ({', '.join(names)}; the {other_files} are not in "
        f"{folder}): a seeded random permutation (seed {seed}) of their {_count(n)} examples, "
        f"the first {_count(train_size)} the training part and the next {_count(test_size)} "
        "the test part (disjoint)"
    )
    if train_size + test_size < n:
        text += f"; {_count(n - train_size - test_size)} examples unused"
    return train_idx, test_idx, f"from-{part}-files", text


def _record(key: str, **fields: Any) -> dict[str, Any]:
    """The JSON-able ``info`` of a :class:`Splits`, with its one-paragraph summary."""
    title = _TITLES[key]
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

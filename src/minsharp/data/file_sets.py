"""The official file sets of MNIST, Fashion-MNIST and CIFAR-10 in a folder: found, fetched, read.

:func:`read_idx_pools` and :func:`read_cifar_pools` return each official part present in the
folder (``"train"``, ``"test"``, ``None`` for a part whose files are absent) as uint8 images
and labels, with a record of every file read (size, SHA-256, MD5 and whether it is the
official file). With ``download=True`` the missing official files are fetched first
(:mod:`minsharp.data.download`); a CIFAR-10 archive is verified by its official MD5 before it
is extracted. :func:`minsharp.data.datasets.load_dataset` splits and subsamples the parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from minsharp.data import cifar
from minsharp.data.download import RESOURCES, download_dataset, file_md5, official_md5
from minsharp.data.mnist import SPLIT_FILES, locate_idx_file, read_idx_split
from minsharp.data.sources import DATA_ENV, TITLES
from minsharp.errors import DataError
from minsharp.io import sha256_file

#: One official part: uint8 images and labels.
Pool = tuple[np.ndarray, np.ndarray]


def file_entry(dataset: str, path: Path) -> dict[str, Any]:
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


def read_idx_pools(
    key: str, folder: Path, *, download: bool
) -> tuple[dict[str, Pool | None], list[dict[str, Any]], list[Path]]:
    """The uint8 images and labels of each IDX split present in ``folder``."""
    title = TITLES[key]

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
    pools: dict[str, Pool | None] = {"train": None, "test": None}
    files = []
    for split in ("train", "test"):
        if present(split):
            images, labels, paths = read_idx_split(folder, split, dataset=title)
            pools[split] = (images, labels)
            files += [file_entry(key, path) for path in paths]
    return pools, files, downloaded


def read_cifar_pools(
    folder: Path, *, download: bool
) -> tuple[dict[str, Pool | None], list[dict[str, Any]], list[Path]]:
    """The uint8 images and labels of the CIFAR-10 batches under ``folder``."""
    batches, downloaded = _cifar_batches(folder, download=download)
    archive = folder / cifar.ARCHIVE
    files = [file_entry("cifar10", archive)] if archive.is_file() else []
    pools: dict[str, Pool | None] = {"train": None, "test": None}
    train_present = [name for name in cifar.TRAIN_BATCHES if (batches / name).is_file()]
    if train_present and len(train_present) < len(cifar.TRAIN_BATCHES):
        missing = sorted(set(cifar.TRAIN_BATCHES) - set(train_present))
        raise DataError(
            f"CIFAR-10 training batches {', '.join(missing)} are missing from {batches} (found "
            f"{', '.join(train_present)}). Put all five there, or none to split "
            f"{cifar.TEST_BATCH} into train and test parts. {_download_hint('cifar10', folder)}"
        )
    present = {"train": bool(train_present), "test": (batches / cifar.TEST_BATCH).is_file()}
    for part in ("train", "test"):
        if present[part]:
            images, labels, paths = cifar.read_split(batches, part)
            pools[part] = (images, labels)
            files += [file_entry("cifar10", path) for path in paths]
    if pools["train"] is None and pools["test"] is None:  # pragma: no cover - batch_folder
        raise DataError(f"no CIFAR-10 batch files in {batches}.")
    return pools, files, downloaded


def _cifar_batches(folder: Path, *, download: bool) -> tuple[Path, list[Path]]:
    """The folder of the batch files, extracted from the verified archive when needed.

    Also the files this call downloaded.
    """
    archive = folder / cifar.ARCHIVE
    batches = cifar.batch_folder(folder)
    complete = batches is not None and all(
        (batches / name).is_file() for name in (*cifar.TRAIN_BATCHES, cifar.TEST_BATCH)
    )
    if complete or not (batches is None or download or archive.is_file()):
        assert batches is not None
        return batches, []
    downloaded: list[Path] = []
    if archive.is_file():
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
    elif download:
        downloaded = download_dataset("cifar10", folder)
    else:
        state = "does not exist" if not folder.is_dir() else "holds none of its files"
        raise DataError(
            f"CIFAR-10 data not found: {folder} {state}. Expected the binary version: "
            f"the archive {cifar.ARCHIVE}, or its batch files "
            f"{', '.join((*cifar.TRAIN_BATCHES, cifar.TEST_BATCH))} in {folder} or "
            f"{folder / cifar.FOLDER} (test_batch.bin alone is enough: it is then "
            f"split into train and test parts). {_download_hint('cifar10', folder)}"
        )
    return cifar.extract(archive, folder), downloaded

"""CIFAR-10 in its official binary version: safe extraction and a reader for the batch files.

The binary distribution ``cifar-10-binary.tar.gz`` (Krizhevsky 2009,
https://www.cs.toronto.edu/~kriz/cifar.html) holds, under ``cifar-10-batches-bin/``, five
training batches ``data_batch_1.bin`` … ``data_batch_5.bin`` and ``test_batch.bin``, 10 000
images each. A batch is a sequence of 3073-byte records: one label byte (0..9), then the
32×32 image as 1024 red, 1024 green and 1024 blue bytes, each plane in row-major order. The
pickled "python version" is never used: nothing here unpickles anything.

Extraction writes only those six files (and ``batches.meta.txt``) under their own fixed names,
after refusing any archive with absolute paths, ``..`` components, links or device files, so
no member can land outside the target folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch import Tensor

from minsharp.errors import DataError

#: Name of the official archive of the binary version.
ARCHIVE = "cifar-10-binary.tar.gz"

#: Folder of the batch files inside the archive (and after extraction).
FOLDER = "cifar-10-batches-bin"

#: The training batches (50 000 images) and the test batch (10 000 images).
TRAIN_BATCHES = tuple(f"data_batch_{index}.bin" for index in range(1, 6))
TEST_BATCH = "test_batch.bin"

#: Class names, in label order (``batches.meta.txt``).
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: Bytes per record: 1 label byte + 3·32·32 pixel bytes.
RECORD_BYTES = 1 + 3 * 32 * 32

#: Per-channel (R, G, B) mean and standard deviation of the 50 000 training images with
#: pixels scaled to [0, 1] (population statistics over all pixels of each channel).
MEAN = (0.49139968, 0.48215841, 0.44653091)
STD = (0.24703223, 0.24348513, 0.26158784)

_EXTRACTED = (*TRAIN_BATCHES, TEST_BATCH, "batches.meta.txt")


def batch_folder(root: Path) -> Path | None:
    """Where the batch files lie under ``root``: ``root/cifar-10-batches-bin`` or ``root``.

    Returns ``None`` when neither holds any of the six ``.bin`` files.
    """
    for candidate in (root / FOLDER, root):
        if any((candidate / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH)):
            return candidate
    return None


def _refuse(archive: Path, member: str, why: str) -> DataError:
    return DataError(
        f"refused to extract {archive}: member {member!r} {why}. The official CIFAR-10 archive "
        f"holds only regular files under {FOLDER}/; delete {archive} and download it again "
        "(--download), or extract it yourself and pass the folder with --data-dir."
    )


def check_members(tar: tarfile.TarFile, archive: Path) -> dict[str, tarfile.TarInfo]:
    """Check every member of ``tar`` and return the wanted regular files by base name.

    Raises:
        DataError: a member has an absolute path or a ``..`` component, is a link, device or
            FIFO, or a wanted file appears twice.
    """
    wanted: dict[str, tarfile.TarInfo] = {}
    for member in tar.getmembers():
        name = member.name
        path = PurePosixPath(name.replace("\\", "/"))
        if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
            raise _refuse(archive, name, "has an absolute path")
        if ".." in path.parts:
            raise _refuse(archive, name, "climbs out of the target folder with '..'")
        if not (member.isfile() or member.isdir()):
            raise _refuse(archive, name, "is a link, device or FIFO, not a regular file")
        if member.isfile() and path.name in _EXTRACTED:
            if path.name in wanted:
                raise _refuse(archive, name, "appears twice")
            wanted[path.name] = member
    return wanted


def extract(archive: str | Path, directory: str | Path) -> Path:
    """Extract the batch files of the binary archive into ``directory/cifar-10-batches-bin``.

    The archive's checksum is not checked here (the caller verifies it first). Members are
    checked with :func:`check_members`; only the six batch files and ``batches.meta.txt``
    are written, each to a temporary file and then moved under its fixed name.

    Returns:
        The folder holding the extracted batch files.

    Raises:
        DataError: unreadable archive, unsafe member, missing batch file, or a folder that
            cannot be written.
    """
    archive = Path(archive)
    target = Path(directory) / FOLDER
    try:
        with tarfile.open(archive, "r:gz") as tar:
            wanted = check_members(tar, archive)  # reads the whole archive once
            _extract_members(tar, archive, wanted, target)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as failure:
        raise DataError(
            f"CIFAR-10 archive {archive} is not a complete gzipped tar file ({failure}). "
            "Delete it and download it again (--download)."
        ) from failure
    return target


def _extract_members(
    tar: tarfile.TarFile, archive: Path, wanted: dict[str, tarfile.TarInfo], target: Path
) -> None:
    """Write the checked members ``wanted`` into ``target`` under their base names."""
    missing = [name for name in (*TRAIN_BATCHES, TEST_BATCH) if name not in wanted]
    if missing:
        raise DataError(
            f"CIFAR-10 archive {archive} lacks {', '.join(missing)}: it is not the "
            f"official binary version ({ARCHIVE}). Delete it and download it again."
        )
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, member in wanted.items():
            source = tar.extractfile(member)
            if source is None:  # pragma: no cover - regular files always have content
                raise _refuse(archive, member.name, "has no content")
            _write_atomic(source, target / name)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as failure:
        raise DataError(
            f"could not extract CIFAR-10 archive {archive} into {target} ({failure}). "
            "Either the folder is not writable (pass another with --data-dir) or the "
            "archive is damaged (delete it and download it again)."
        ) from failure


def _write_atomic(source: object, destination: Path) -> None:
    """Copy the stream ``source`` to ``destination`` through a temporary file and a rename."""
    descriptor, temporary = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    try:
        with os.fdopen(descriptor, "wb") as stream:
            shutil.copyfileobj(source, stream, 1 << 20)  # type: ignore[arg-type]
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels (N,), both uint8, of one binary batch file.

    Raises:
        DataError: the file is missing, empty, not a whole number of 3073-byte records
            (truncated or not a CIFAR-10 batch), or holds labels outside 0..9.
    """
    path = Path(path)
    try:
        content = np.fromfile(path, dtype=np.uint8)
    except OSError as failure:
        raise DataError(f"CIFAR-10 file {path} could not be read ({failure}).") from failure
    if content.size == 0 or content.size % RECORD_BYTES:
        raise DataError(
            f"CIFAR-10 file {path} is truncated or not a binary batch: {content.size} bytes is "
            f"not a positive multiple of the {RECORD_BYTES}-byte record (1 label byte + 3072 "
            f"pixel bytes; an official batch has 10 000 records = {10_000 * RECORD_BYTES} "
            "bytes). Replace it with the file from the official archive."
        )
    records = content.reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    if int(labels.max()) >= len(CLASSES):
        bad = int(np.count_nonzero(labels >= len(CLASSES)))
        raise DataError(
            f"CIFAR-10 file {path} has {bad} labels outside 0..9 (largest {int(labels.max())}): "
            "it is damaged or not a CIFAR-10 batch. Replace it with the file from the official "
            "archive."
        )
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def to_tensor(images: np.ndarray, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 images (N, 3, 32, 32) as floats ``(x/255 − mean_c)/std_c`` per channel c.

    The constants are :data:`MEAN` and :data:`STD`.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(images)).to(dtype).div_(255.0)
    mean = torch.tensor(MEAN, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=dtype).view(1, 3, 1, 1)
    return pixels.sub_(mean).div_(std)


def read_split(batches: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """uint8 images and labels of one official split from the batch folder ``batches``.

    ``"train"`` is the five training batches concatenated in order, ``"test"`` the test batch.

    Returns:
        ``(images, labels, paths)``: images (N, 3, 32, 32), labels (N,), the files read.

    Raises:
        DataError: a batch file of the split is missing (naming it), or is damaged
            (see :func:`read_batch`).
    """
    names = list(TRAIN_BATCHES) if split == "train" else [TEST_BATCH]
    missing = [name for name in names if not (batches / name).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 {split} batch files {', '.join(missing)} are missing from {batches}. "
            f"Put the official batch files there, or pass the folder of {ARCHIVE} to a study "
            "(--data-dir), which verifies and extracts it."
        )
    paths = [batches / name for name in names]
    read = [read_batch(path) for path in paths]
    images = np.concatenate([images for images, _ in read])
    labels = np.concatenate([labels for _, labels in read])
    return images, labels, paths

"""Reader for MNIST and Fashion-MNIST in their original IDX format, from a directory.

The four files of the official distribution, each either gzipped (``.gz``) or raw (Fashion-MNIST
(Xiao, Rasul, Vollgraf 2017) uses the same names, sizes and format):

* ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` (60 000 examples),
* ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (10 000 examples).

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <number of dims>``, one
big-endian unsigned 32-bit size per dimension, then the data in C order. MNIST uses dtype code
``0x08`` (unsigned byte): images are ``(N, rows, cols)`` (magic 2051), labels ``(N,)``
(magic 2049). The header is parsed here with numpy, and every inconsistency raises
:class:`~minsharp.errors.DataError` naming the file and the fix. Nothing is downloaded here
(see :mod:`minsharp.data.download`).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from minsharp.errors import DataError
from minsharp.options import choice

#: IDX dtype code of unsigned bytes, the only one MNIST uses.
_UBYTE = 0x08

#: Magic numbers of the image (3-d) and label (1-d) files.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801

#: Base names of the IDX files of each split (images, labels); ``.gz`` may be appended.
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Number of classes: labels must lie in 0..9.
NUM_CLASSES = 10


def _fix_corrupt(dataset: str) -> str:
    """The advice that ends every message about a damaged file."""
    return (
        f"The file is damaged or not a valid {dataset} IDX file: replace it with a fresh copy of "
        "the official file."
    )


def load_mnist_split(
    directory: str | Path, split: str = "test", *, normalize: bool = True
) -> tuple[Tensor, Tensor]:
    """Images and labels of one MNIST split, read from the IDX files in ``directory``.

    Each file is looked up under its official name, raw first, then with ``.gz`` (see
    :data:`SPLIT_FILES`).

    Args:
        directory: folder holding the split's two IDX files.
        split: ``"test"`` (``t10k-*``, 10 000 examples) or ``"train"`` (``train-*``, 60 000).
        normalize: map pixels ``x ∈ {0..255}`` to ``(x/255 − 0.5)/0.5 ∈ [−1, 1]``, as in the
            Minimum Sharpness paper; otherwise return ``x/255 ∈ [0, 1]``.

    Returns:
        ``(images, labels)``: images a float32 tensor of shape (N, 1, rows, cols), which is
        (N, 1, 28, 28) for MNIST; labels an int64 tensor of shape (N,) with values 0..9.

    Raises:
        DataError: unknown split, missing directory or file, wrong magic number or dtype,
            truncated or overlong file, unreadable gzip stream, different numbers of images
            and labels, or labels outside 0..9. The message names the file and the fix.
    """
    images, labels, _ = read_idx_split(directory, split)
    return idx_images_to_tensor(images, normalize=normalize), torch.from_numpy(
        labels.astype(np.int64)
    )


def idx_images_to_tensor(
    images: np.ndarray, *, normalize: bool = True, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Unsigned-byte images ``(N, rows, cols)`` as a float tensor ``(N, 1, rows, cols)``.

    Pixels ``x ∈ {0..255}`` become ``(x/255 − 0.5)/0.5 ∈ [−1, 1]`` (the Minimum Sharpness
    paper's normalisation, theory §6), or ``x/255 ∈ [0, 1]`` when ``normalize`` is false.
    """
    pixels = torch.from_numpy(images.astype(np.float32)).to(dtype).div_(255.0).unsqueeze(1)
    if normalize:
        pixels.sub_(0.5).div_(0.5)
    return pixels


def read_idx_split(
    directory: str | Path, split: str = "test", *, dataset: str = "MNIST"
) -> tuple[np.ndarray, np.ndarray, tuple[Path, Path]]:
    """The raw uint8 images and labels of one split of an MNIST-format data set.

    Args:
        directory: folder holding the split's two IDX files (raw or ``.gz``).
        split: ``"test"`` (``t10k-*``) or ``"train"`` (``train-*``).
        dataset: the data set's name in error messages (``"MNIST"``, ``"Fashion-MNIST"``).

    Returns:
        ``(images, labels, (images_path, labels_path))``: images uint8 of shape
        (N, rows, cols), labels uint8 of shape (N,) with values 0..9, and the files read.

    Raises:
        DataError: as :func:`load_mnist_split`.
    """
    choice(f"{dataset} split", split, sorted(SPLIT_FILES), error=DataError)
    folder = Path(directory)
    if not folder.is_dir():
        raise DataError(
            f"{dataset} directory {folder} does not exist or is not a directory. Pass the folder "
            f"that holds the official IDX files {', '.join(SPLIT_FILES[split])} (.gz or raw)."
        )
    images_name, labels_name = SPLIT_FILES[split]
    images_path = _locate(folder, images_name, dataset)
    labels_path = _locate(folder, labels_name, dataset)
    images = _read_idx(images_path, _IMAGES_MAGIC, ndim=3, dataset=dataset)
    labels = _read_idx(labels_path, _LABELS_MAGIC, ndim=1, dataset=dataset)

    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{dataset} {split} split: {images_path.name} holds {images.shape[0]} images but "
            f"{labels_path.name} holds {labels.shape[0]} labels (in {folder}). The two files "
            "come from different splits or downloads: replace both with the official pair."
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        bad = int(np.count_nonzero(labels >= NUM_CLASSES))
        raise DataError(
            f"{dataset} labels file {labels_path} has {bad} labels outside "
            f"0..{NUM_CLASSES - 1} (largest {int(labels.max())}). {_fix_corrupt(dataset)}"
        )
    return images, labels, (images_path, labels_path)


def locate_idx_file(folder: Path, name: str) -> Path | None:
    """The raw file ``folder/name`` if present, else ``folder/name.gz``, else ``None``."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate(folder: Path, name: str, dataset: str) -> Path:
    """The raw file ``folder/name`` if present, else ``folder/name.gz``; DataError if neither."""
    found = locate_idx_file(folder, name)
    if found is None:
        raise DataError(
            f"{dataset} file {name} (or {name}.gz) not found in {folder}. Place the official "
            f"{dataset} IDX file there under its official name, gzipped or not."
        )
    return found


def _read_bytes(path: Path, dataset: str) -> bytes:
    """The file's content, decompressed when its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(
            f"{dataset} file {path} is not a complete gzip stream ({error}). The download was "
            f"probably cut short. {_fix_corrupt(dataset)}"
        ) from error
    except OSError as error:
        raise DataError(f"{dataset} file {path} could not be read ({error}).") from error


def _read_idx(path: Path, expected_magic: int, *, ndim: int, dataset: str) -> np.ndarray:
    """Parse an unsigned-byte IDX file with ``ndim`` dimensions into a uint8 array."""
    content = _read_bytes(path, dataset)
    kind = "images" if ndim == 3 else "labels"
    fix = _fix_corrupt(dataset)
    if len(content) < 4:
        raise DataError(
            f"{dataset} file {path} is {len(content)} bytes long, too short for an IDX header. "
            f"{fix}"
        )
    magic = int.from_bytes(content[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{dataset} file {path} has magic number 0x{magic:08x}; an IDX {kind} file starts "
            f"with 0x{expected_magic:08x} (dtype code 0x{_UBYTE:02x} = unsigned byte, "
            f"{ndim} dimension{'s' if ndim > 1 else ''}). Check that the images and labels "
            f"files are not swapped or compressed twice. {fix}"
        )
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(
            f"{dataset} file {path} is truncated: {len(content)} bytes, shorter than its "
            f"{header_size}-byte header. {fix}"
        )
    dims = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    expected_size = header_size + int(np.prod(dims, dtype=np.int64))
    if len(content) != expected_size:
        state = "truncated" if len(content) < expected_size else "longer than its header says"
        raise DataError(
            f"{dataset} file {path} is {state}: the header declares shape {dims}, which needs "
            f"{expected_size} bytes, but the{' decompressed' if path.suffix == '.gz' else ''} "
            f"file has {len(content)}. {fix}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(dims)

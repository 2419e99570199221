"""Writers of tiny MNIST-format (IDX) files for the data and CLI tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray, *, magic: int | None = None) -> bytes:
    """``array`` (as uint8) in IDX format: magic ``0x08 ndim`` (or ``magic``), sizes, data."""
    magic = 0x0800 | array.ndim if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None, cut: int = 0) -> Path:
    """Write ``array`` as an IDX file, optionally with another magic or ``cut`` bytes missing
    at the end; gzip it when ``path`` ends in ``.gz``, with a fixed mtime so that the same
    content gives the same bytes (and MD5) whenever it is written."""
    content = idx_bytes(array, magic=magic)
    if cut:
        content = content[:-cut]
    path.write_bytes(gzip.compress(content, mtime=0) if path.suffix == ".gz" else content)
    return path

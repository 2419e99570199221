"""Download the official data files, verified against their official checksums.

Every file is streamed to a temporary file in the target directory while its MD5 is computed,
checked against the checksum its authors publish, and only then moved under its final name
with one :func:`os.replace` (atomic on POSIX and Windows). A transfer that fails, is cut short
or delivers other bytes leaves nothing behind: the temporary file is removed and
:class:`~minsharp.errors.DataError` names the file, the URLs tried, the expected and actual
MD5, and the manual fix (download the file yourself and pass its folder with ``--data-dir``).

Official checksums (MD5 of the compressed files, as published):

* MNIST (LeCun, Cortes, Burges): the four ``*.gz`` files of http://yann.lecun.com/exdb/mnist/;
  the MD5s are those torchvision and TensorFlow check, since the original page lists none.
  PyTorch's (``ossci-datasets``) and TensorFlow's (``cvdf-datasets``) mirrors are tried before
  the original site, which often refuses automated downloads.
* Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): the MD5 table of the README of
  https://github.com/zalandoresearch/fashion-mnist, files from the official S3 bucket, then
  from the repository itself.
* CIFAR-10 (Krizhevsky 2009): ``cifar-10-binary.tar.gz`` (the binary version, never the
  pickled Python one) with the MD5 listed on https://www.cs.toronto.edu/~kriz/cifar.html.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minsharp.errors import DataError

#: Bytes read from the network per step.
CHUNK_BYTES = 1 << 16

#: Seconds a connection may stay silent before the attempt counts as failed.
DEFAULT_TIMEOUT_S = 60.0

#: An opener takes ``(url, timeout)`` and returns a response usable as a context manager,
#: with ``read(size)`` and, optionally, ``headers`` (for ``Content-Length``).
Opener = Callable[[str, float], Any]


@dataclass(frozen=True)
class Resource:
    """One file of a data set's official distribution.

    Attributes:
        filename: the official file name, kept on disk.
        md5: the official MD5 (hex) of that file.
        urls: where to fetch it, tried in order (the first that delivers the right bytes wins).
    """

    filename: str
    md5: str
    urls: tuple[str, ...]


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)


def _mirrored(filename: str, md5: str, mirrors: Sequence[str]) -> Resource:
    return Resource(filename, md5, tuple(f"{base}{filename}" for base in mirrors))


#: The official files of each downloadable data set.
RESOURCES: dict[str, tuple[Resource, ...]] = {
    "mnist": (
        _mirrored("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", _MNIST_MIRRORS),
        _mirrored("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", _MNIST_MIRRORS),
        _mirrored("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", _MNIST_MIRRORS),
        _mirrored("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", _MNIST_MIRRORS),
    ),
    "fashion-mnist": (
        _mirrored(
            "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", _FASHION_MIRRORS
        ),
        _mirrored(
            "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", _FASHION_MIRRORS
        ),
        _mirrored(
            "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", _FASHION_MIRRORS
        ),
        _mirrored(
            "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", _FASHION_MIRRORS
        ),
    ),
    "cifar10": (
        Resource(
            "cifar-10-binary.tar.gz",
            "c32a1d4ab5d03f1284b67883e8d87530",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
        ),
    ),
}


def official_md5(dataset: str, filename: str) -> str | None:
    """The official MD5 of ``filename`` in ``dataset``'s distribution, or ``None``."""
    for resource in RESOURCES.get(dataset, ()):
        if resource.filename == filename:
            return resource.md5
    return None


def file_md5(path: str | Path) -> str:
    """Hex MD5 digest of the file at ``path``, read in chunks (integrity, not security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _urlopen(url: str, timeout: float) -> Any:
    """The default opener: :func:`urllib.request.urlopen` with a user agent."""
    request = urllib.request.Request(url, headers={"User-Agent": "minsharp (data download)"})
    return urllib.request.urlopen(request, timeout=timeout)


class _ChecksumMismatch(Exception):
    """The bytes arrived whole but their MD5 is not the official one."""

    def __init__(self, actual: str) -> None:
        super().__init__(actual)
        self.actual = actual


class _Incomplete(Exception):
    """The server announced more bytes than it delivered."""


def _content_length(response: Any) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fetch(
    url: str, destination: Path, md5: str, *, progress: bool, opener: Opener, timeout: float
) -> None:
    """Stream ``url`` into a temporary file next to ``destination``; verify; move into place.

    Raises ``_ChecksumMismatch``, ``_Incomplete``, or the opener's own errors; the temporary
    file is removed whatever happens (including ``KeyboardInterrupt``).
    """
    from tqdm.auto import tqdm

    try:
        descriptor, temporary = tempfile.mkstemp(
            dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
        )
    except OSError as failure:
        raise DataError(
            f"cannot write into the data directory {destination.parent} ({failure}). Pass a "
            "writable folder with --data-dir (root= in Python), or set MINSHARP_DATA."
        ) from failure
    try:
        digest = hashlib.md5(usedforsecurity=False)
        received = 0
        with os.fdopen(descriptor, "wb") as stream, opener(url, timeout) as response:
            total = _content_length(response)
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=destination.name,
                disable=not progress,
            ) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    stream.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            stream.flush()
            os.fsync(stream.fileno())
        if total is not None and received < total:
            raise _Incomplete(f"transfer cut short after {received} of {total} bytes")
        actual = digest.hexdigest()
        if actual != md5:
            raise _ChecksumMismatch(actual)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private (0600)
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def download_file(
    resource: Resource,
    directory: str | Path,
    *,
    progress: bool = True,
    opener: Opener | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Download one official file into ``directory``, verified by its MD5, atomically.

    Each URL of ``resource`` is tried in turn until one delivers bytes whose MD5 equals
    ``resource.md5``. The bytes go to a hidden temporary file in ``directory`` and are moved
    to ``directory/resource.filename`` only once verified, so the final name never holds a
    partial or wrong file, and a failed attempt leaves no file at all.

    Args:
        resource: the file, its official MD5 and its URLs.
        directory: the target folder, created if missing.
        progress: show a tqdm progress bar (on stderr).
        opener: ``(url, timeout) -> response`` (see :data:`Opener`); default
            :func:`urllib.request.urlopen`. Tests pass their own, or ``file://`` URLs.
        timeout: seconds a connection may stay silent.

    Returns:
        The path of the downloaded file.

    Raises:
        DataError: the directory cannot be created or written, or no URL delivered the file
            with the official checksum; the message lists each URL's failure, the expected
            and actual MD5, and how to download the file by hand.
    """
    folder = Path(directory).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as failure:
        raise DataError(
            f"cannot create the data directory {folder} ({failure}). Pass a writable folder "
            "with --data-dir (root= in Python), or set MINSHARP_DATA."
        ) from failure
    destination = folder / resource.filename
    failures: list[str] = []
    mismatch: str | None = None
    for url in resource.urls:
        try:
            _fetch(
                url,
                destination,
                resource.md5,
                progress=progress,
                opener=opener or _urlopen,
                timeout=timeout,
            )
            return destination
        except _ChecksumMismatch as failure:
            mismatch = failure.actual
            failures.append(_attempt_failure(url, failure, resource.md5))
        except (_Incomplete, OSError, http.client.HTTPException, ValueError) as failure:
            failures.append(_attempt_failure(url, failure, resource.md5))
    raise DataError(_no_download_message(resource, folder, failures, mismatch))


def _attempt_failure(url: str, failure: Exception, md5: str) -> str:
    """One line saying why fetching ``url`` failed."""
    if isinstance(failure, _ChecksumMismatch):
        return f"{url}: MD5 {failure.actual}, expected {md5} (the official checksum)"
    if isinstance(failure, _Incomplete):
        return f"{url}: {failure}"
    if isinstance(failure, urllib.error.HTTPError):
        return f"{url}: HTTP {failure.code} {failure.reason}"
    reason = getattr(failure, "reason", None) or failure
    return f"{url}: {type(failure).__name__}: {reason}"


def _no_download_message(
    resource: Resource, folder: Path, failures: list[str], mismatch: str | None
) -> str:
    """What failed for every URL of ``resource``, and how to fetch the file by hand."""
    what = (
        f"checksum mismatch for {resource.filename}: expected MD5 {resource.md5}, got {mismatch}"
        if mismatch is not None
        else f"could not download {resource.filename} (network failure)"
    )
    return (
        f"{what}. Nothing was written to {folder}. Tried:\n  "
        + "\n  ".join(failures)
        + f"\nTo fix it by hand: download {resource.urls[0]} yourself (or from "
        "another of the URLs above), check that its MD5 is "
        f"{resource.md5} (e.g. `md5sum {resource.filename}`), put it in a folder and pass "
        "that folder with --data-dir (root= in Python)."
    )


def download_dataset(
    dataset: str,
    directory: str | Path,
    *,
    only_missing: bool = True,
    progress: bool = True,
    opener: Opener | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[Path]:
    """Download the official files of ``dataset`` into ``directory``.

    Args:
        dataset: ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"`` (a key of
            :data:`RESOURCES`).
        directory: the target folder, created if missing.
        only_missing: skip files already present under their official name (for the IDX
            data sets also uncompressed, without ``.gz``); they are not re-verified here.
        progress: show a progress bar per file (see :func:`download_file`).
        opener: ``(url, timeout) -> response``, default urllib (see :func:`download_file`).
        timeout: seconds a connection may stay silent.

    Returns:
        The paths of the files downloaded by this call (empty when nothing was missing).

    Raises:
        DataError: unknown data set, or a download failed (see :func:`download_file`).
    """
    if dataset not in RESOURCES:
        raise DataError(
            f"no download is known for data set {dataset!r}; downloadable: {sorted(RESOURCES)}."
        )
    folder = Path(directory).expanduser()
    downloaded = []
    for resource in RESOURCES[dataset]:
        names = [resource.filename]
        if resource.filename.endswith("-ubyte.gz"):  # IDX files may lie uncompressed
            names.append(resource.filename.removesuffix(".gz"))
        if only_missing and any((folder / name).is_file() for name in names):
            continue
        downloaded.append(
            download_file(resource, folder, progress=progress, opener=opener, timeout=timeout)
        )
    return downloaded

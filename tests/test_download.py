"""The downloader, offline: file:// URLs and fake openers, never the network."""

from __future__ import annotations

import hashlib
import io
import urllib.error
from pathlib import Path

import pytest

from minsharp.data import download
from minsharp.data.download import Resource, download_dataset, download_file, file_md5
from minsharp.errors import DataError

CONTENT = bytes(range(256)) * 300  # 76.8 kB: several chunks


def md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


@pytest.fixture
def served(tmp_path) -> Path:
    path = tmp_path / "server" / "file.gz"
    path.parent.mkdir()
    path.write_bytes(CONTENT)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


class FakeResponse(io.BytesIO):
    """Serves ``content``, announcing ``length`` bytes; optionally fails after ``fail_at``."""

    def __init__(
        self,
        content: bytes,
        length: int | None,
        fail_at: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        super().__init__(content)
        self.headers = {"Content-Length": str(length)} if length is not None else {}
        self.fail_at, self.error = fail_at, error

    def read(self, size: int = -1) -> bytes:
        if self.fail_at is not None and self.tell() >= self.fail_at:
            raise self.error or ConnectionResetError("connection reset by peer")
        return super().read(size)


def test_file_url_download_is_verified_and_atomic(tmp_path, served) -> None:
    target = tmp_path / "cache" / "nested"
    path = download_file(Resource("file.gz", md5(CONTENT), (served.as_uri(),)), target)
    assert path == target / "file.gz"
    assert path.read_bytes() == CONTENT
    assert leftovers(target) == ["file.gz"]  # no temporary file left
    assert file_md5(path) == md5(CONTENT)


def test_progress_bar(tmp_path, served, capsys) -> None:
    resource = Resource("file.gz", md5(CONTENT), (served.as_uri(),))
    download_file(resource, tmp_path / "out", progress=True)
    assert "file.gz" in capsys.readouterr().err


def test_checksum_mismatch_leaves_nothing_and_says_how_to_fix(tmp_path, served) -> None:
    resource = Resource("file.gz", "0" * 32, (served.as_uri(),))
    target = tmp_path / "out"
    with pytest.raises(DataError) as caught:
        download_file(resource, target, progress=False)
    message = str(caught.value)
    assert "checksum mismatch for file.gz" in message
    assert f"expected MD5 {'0' * 32}, got {md5(CONTENT)}" in message
    assert served.as_uri() in message
    assert "download" in message and "yourself" in message and "--data-dir" in message
    assert leftovers(target) == []


def test_existing_file_survives_a_failed_download(tmp_path, served) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "file.gz").write_bytes(b"old")
    with pytest.raises(DataError):
        download_file(Resource("file.gz", "0" * 32, (served.as_uri(),)), target, progress=False)
    assert (target / "file.gz").read_bytes() == b"old"
    assert leftovers(target) == ["file.gz"]


def test_next_mirror_after_a_failure(tmp_path, served) -> None:
    missing = (tmp_path / "server" / "absent.gz").as_uri()
    resource = Resource("file.gz", md5(CONTENT), (missing, served.as_uri()))
    path = download_file(resource, tmp_path / "out", progress=False)
    assert path.read_bytes() == CONTENT


def test_network_failure_everywhere(tmp_path) -> None:
    def refuse(url: str, timeout: float) -> FakeResponse:
        if "a.invalid" in url:
            raise urllib.error.HTTPError(url, 403, "Forbidden", None, None)  # type: ignore[arg-type]
        raise urllib.error.URLError(OSError(f"name resolution failed for {url}"))

    resource = Resource("file.gz", md5(CONTENT), ("https://a.invalid/f", "https://b.invalid/f"))
    with pytest.raises(DataError) as caught:
        download_file(resource, tmp_path / "out", progress=False, opener=refuse)
    message = str(caught.value)
    assert "could not download file.gz (network failure)" in message
    assert "https://a.invalid/f: HTTP 403 Forbidden" in message
    assert "https://b.invalid/f: URLError: name resolution failed" in message
    assert "--data-dir" in message
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (lambda: FakeResponse(CONTENT[:1000], len(CONTENT)), "cut short after 1000 of 76800"),
        (lambda: FakeResponse(CONTENT, len(CONTENT), fail_at=1 << 16), "ConnectionResetError"),
        (
            lambda: FakeResponse(CONTENT, None, fail_at=1 << 16, error=TimeoutError("timed out")),
            "TimeoutError: timed out",
        ),
    ],
)
def test_interrupted_transfer_leaves_no_partial_file(tmp_path, response, reason) -> None:
    resource = Resource("file.gz", md5(CONTENT), ("https://example.invalid/file.gz",))
    target = tmp_path / "out"
    with pytest.raises(DataError, match=r"could not download file.gz") as caught:
        download_file(resource, target, progress=False, opener=lambda url, timeout: response())
    assert reason in str(caught.value)
    assert leftovers(target) == []


def test_keyboard_interrupt_leaves_no_partial_file(tmp_path) -> None:
    resource = Resource("file.gz", md5(CONTENT), ("https://example.invalid/file.gz",))

    def opener(url: str, timeout: float) -> FakeResponse:
        return FakeResponse(CONTENT, len(CONTENT), fail_at=1 << 16, error=KeyboardInterrupt())

    with pytest.raises(KeyboardInterrupt):
        download_file(resource, tmp_path / "out", progress=False, opener=opener)
    assert leftovers(tmp_path / "out") == []


def test_download_dataset_skips_present_files(tmp_path, served, monkeypatch) -> None:
    resources = (
        Resource("train-images-idx3-ubyte.gz", md5(CONTENT), (served.as_uri(),)),
        Resource("t10k-images-idx3-ubyte.gz", md5(CONTENT), (served.as_uri(),)),
    )
    monkeypatch.setitem(download.RESOURCES, "mnist", resources)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"raw copy")  # uncompressed counts
    fetched = download_dataset("mnist", tmp_path, progress=False)
    assert [path.name for path in fetched] == ["train-images-idx3-ubyte.gz"]
    assert download_dataset("mnist", tmp_path, progress=False) == []
    with pytest.raises(DataError, match="no download is known for data set 'digits'"):
        download_dataset("digits", tmp_path)


def test_official_checksums_are_listed() -> None:
    table = {
        (name, resource.filename): resource.md5
        for name, resources in download.RESOURCES.items()
        for resource in resources
    }
    assert table[("mnist", "train-images-idx3-ubyte.gz")] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert table[("fashion-mnist", "t10k-labels-idx1-ubyte.gz")] == (
        "bb300cfdad3c16e7a12a480ee83cd310"
    )
    assert table[("cifar10", "cifar-10-binary.tar.gz")] == "c32a1d4ab5d03f1284b67883e8d87530"
    assert len(table) == 9
    assert all(
        url.startswith(("https://", "http://"))
        for r in download.RESOURCES["mnist"]
        for url in r.urls
    )

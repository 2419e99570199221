"""load_dataset: the real MNIST test split, tiny synthetic IDX and CIFAR-10 binary files."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.idx import idx_bytes, write_idx

from minsharp.data import (
    DATASETS,
    Splits,
    cifar,
    default_data_root,
    download,
    load_dataset,
    load_mnist_split,
)
from minsharp.data.download import Resource
from minsharp.errors import DataError

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
SHARED_SHA256 = {  # from ../shared/data/mnist/README.md
    "t10k-images-idx3-ubyte.gz": "1488b2253c7678056ecec4d0a5964be6cf8cf6dc6411b21a48d77a497fefe2be",
    "t10k-labels-idx1-ubyte.gz": "daa0ca80179b076764a51a527b4850de26f321125e4d2d55cf279fff0a4b4c4d",
}

needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"the MNIST test split is not at {MNIST_DIR} (only present in the shared workspace)",
)


# --- writers of tiny files ------------------------------------------------------------------


def write_idx_set(
    folder: Path, images: np.ndarray, labels: np.ndarray, *, split: str, gz: bool = True
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "t10k" if split == "test" else "train"
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        write_idx(folder / f"{prefix}-{kind}-ubyte{'.gz' if gz else ''}", array)


def tiny_idx(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
    return images, labels, records.tobytes()


def write_cifar(folder: Path, *, train: bool = True, per_batch: int = 3) -> dict[str, tuple]:
    """The six batch files (or only the test batch) in folder; returns arrays by name."""
    folder.mkdir(parents=True, exist_ok=True)
    names = (*cifar.TRAIN_BATCHES, cifar.TEST_BATCH) if train else (cifar.TEST_BATCH,)
    written = {}
    for index, name in enumerate(names):
        images, labels, content = cifar_batch(per_batch, seed=index)
        (folder / name).write_bytes(content)
        written[name] = (images, labels)
    return written


def cifar_archive(path: Path, source: Path) -> str:
    """A .tar.gz laid out like the official one, from the batch files in source; its MD5."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source, arcname=cifar.FOLDER)
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_jsonable(info: dict) -> None:
    assert json.loads(json.dumps(info, allow_nan=False)) == info


# --- the real MNIST test split ---------------------------------------------------------------


@needs_mnist
def test_real_mnist_test_files_are_split_and_said_so() -> None:
    splits = load_dataset("mnist", root=MNIST_DIR)
    assert isinstance(splits, Splits)
    assert splits.train_inputs.shape == (8000, 1, 28, 28)
    assert splits.test_inputs.shape == (2000, 1, 28, 28)
    assert splits.train_inputs.dtype == torch.float32
    assert splits.train_labels.dtype == torch.int64
    assert splits.num_classes == 10
    assert splits.input_shape == (1, 28, 28)
    assert splits.train_inputs.min().item() == -1.0
    assert splits.train_inputs.max().item() == 1.0
    info = splits.info
    assert_jsonable(info)
    assert info["dataset"] == "mnist"
    assert info["source"] == str(MNIST_DIR.resolve())
    assert info["source_kind"] == "directory"
    assert info["split_kind"] == "from-test-files"
    assert info["split"].startswith("split from the test files only")
    assert "training files are not in" in info["split"]
    assert info["split"] in info["summary"]
    assert info["sizes"] == {"train": 8000, "test": 2000}
    assert info["available"] == {"train": None, "test": 10_000}
    assert info["seed"] == 0
    assert {entry["name"]: entry["sha256"] for entry in info["files"]} == SHARED_SHA256
    # The shared copies were recompressed: not the official bytes, and the record says so.
    assert info["files_match_official"] is False
    assert "differ byte-wise from the official downloads" in info["summary"]
    assert "(x/255 − 0.5)/0.5" in info["normalisation"]


@needs_mnist
def test_real_mnist_split_is_a_seeded_partition() -> None:
    splits = load_dataset("mnist", root=MNIST_DIR, train_size=6000, test_size=4000, seed=3)
    both = torch.cat([splits.train_labels, splits.test_labels])
    assert torch.bincount(both, minlength=10).tolist() == TEST_LABEL_COUNTS
    everything, _ = load_mnist_split(MNIST_DIR, "test")

    def rows(images: torch.Tensor) -> Counter:
        pixels = images.flatten(1).mul(0.5).add(0.5).mul(255).round().to(torch.uint8).numpy()
        return Counter(row.tobytes() for row in pixels)

    # The two parts together are exactly the 10 000 test images: disjoint, nothing invented.
    assert rows(splits.train_inputs) + rows(splits.test_inputs) == rows(everything)
    again = load_dataset("mnist", root=MNIST_DIR, train_size=6000, test_size=4000, seed=3)
    assert torch.equal(again.train_labels, splits.train_labels)
    assert torch.equal(again.test_inputs, splits.test_inputs)
    other = load_dataset("mnist", root=MNIST_DIR, train_size=6000, test_size=4000, seed=4)
    assert not torch.equal(other.train_inputs, splits.train_inputs)


@needs_mnist
def test_real_mnist_subsample_records_unused_examples() -> None:
    splits = load_dataset("mnist", root=MNIST_DIR, train_size=1000, test_size=500, seed=1)
    assert len(splits.train_labels) == 1000 and len(splits.test_labels) == 500
    assert splits.info["subsampled"] is True
    assert "8 500 examples unused" in splits.info["split"]
    assert splits.info["train_size"] == 1000 and splits.info["test_size"] == 500


# --- synthetic IDX files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_official_split_and_seeded_subsets(tmp_path, name) -> None:
    train_images, train_labels = tiny_idx(12, seed=0)
    test_images, test_labels = tiny_idx(5, seed=1)
    write_idx_set(tmp_path, train_images, train_labels, split="train")
    write_idx_set(tmp_path, test_images, test_labels, split="test", gz=False)

    full = load_dataset(name, root=tmp_path)
    assert full.info["split_kind"] == "official"
    assert full.info["split"].startswith("official train/test")
    assert full.info["subsampled"] is False
    expected = (torch.from_numpy(train_images).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(full.train_inputs[:, 0], expected)
    assert full.train_labels.tolist() == train_labels.tolist()
    assert full.test_labels.tolist() == test_labels.tolist()
    assert len(full.info["files"]) == 4
    assert all(entry["matches_official"] is False for entry in full.info["files"][:2])
    assert full.info["files"][2]["official_md5"] is None  # raw file: no official checksum
    assert_jsonable(full.info)

    sub = load_dataset(name, root=tmp_path, train_size=4, test_size=2, seed=7)
    assert sub.info["subsampled"] is True
    assert "4 of the 12 train examples and 2 of the 5 test examples" in sub.info["split"]
    rows = [
        int(np.flatnonzero((train_images == img).all(axis=(1, 2)))[0])
        for img in (
            sub.train_inputs[:, 0].mul(0.5).add(0.5).mul(255).round().to(torch.uint8).numpy()
        )
    ]
    assert rows == sorted(rows) and len(set(rows)) == 4  # a subset, in file order
    assert sub.train_labels.tolist() == train_labels[rows].tolist()
    again = load_dataset(name, root=tmp_path, train_size=4, test_size=2, seed=7)
    assert torch.equal(again.train_inputs, sub.train_inputs)
    assert torch.equal(again.test_labels, sub.test_labels)


def test_dtype_option(tmp_path) -> None:
    write_idx_set(tmp_path, *tiny_idx(6, seed=0), split="test")
    splits = load_dataset("mnist", root=tmp_path, dtype=torch.float64)
    assert splits.train_inputs.dtype == torch.float64
    assert splits.train_labels.dtype == torch.int64
    with pytest.raises(DataError, match="floating dtype"):
        load_dataset("mnist", root=tmp_path, dtype=torch.int32)


def test_single_set_split_sizes(tmp_path) -> None:
    write_idx_set(tmp_path, *tiny_idx(10, seed=0), split="test")
    default = load_dataset("mnist", root=tmp_path)
    assert default.info["sizes"] == {"train": 8, "test": 2}
    only_train = load_dataset("mnist", root=tmp_path, train_size=3)
    assert only_train.info["sizes"] == {"train": 3, "test": 7}
    only_test = load_dataset("mnist", root=tmp_path, test_size=6)
    assert only_test.info["sizes"] == {"train": 4, "test": 6}
    labels = torch.cat([only_test.train_labels, only_test.test_labels]).sort().values
    assert labels.tolist() == list(range(10))  # disjoint parts covering all ten examples
    with pytest.raises(DataError, match=r"into 6 train and 5 test .* at most 10"):
        load_dataset("mnist", root=tmp_path, train_size=6, test_size=5)
    with pytest.raises(DataError, match="at most 10"):
        load_dataset("mnist", root=tmp_path, train_size=10)


def test_split_from_training_files_only(tmp_path) -> None:
    write_idx_set(tmp_path, *tiny_idx(10, seed=0), split="train")
    splits = load_dataset("fashion-mnist", root=tmp_path, train_size=5, test_size=5)
    assert splits.info["split_kind"] == "from-train-files"
    assert splits.info["split"].startswith("split from the train files only")
    assert splits.info["class_names"][0] == "T-shirt/top"


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("train_size", 0, "train_size must be a positive integer"),
        ("test_size", -3, "test_size must be a positive integer"),
        ("train_size", 2.5, "positive integer"),
        ("test_size", True, "positive integer"),
        ("seed", "1", "seed must be an integer"),
    ],
)
def test_bad_arguments(tmp_path, keyword, value, message) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", root=tmp_path, **{keyword: value})


def test_oversized_subset(tmp_path) -> None:
    write_idx_set(tmp_path, *tiny_idx(4, seed=0), split="train")
    write_idx_set(tmp_path, *tiny_idx(3, seed=1), split="test")
    with pytest.raises(DataError, match="train_size = 5 exceeds the 4 examples"):
        load_dataset("mnist", root=tmp_path, train_size=5)


def test_unknown_dataset_and_aliases(tmp_path) -> None:
    with pytest.raises(DataError, match="unknown data set 'svhn'; known: digits, mnist"):
        load_dataset("svhn")
    write_idx_set(tmp_path, *tiny_idx(4, seed=0), split="test")
    assert load_dataset("Fashion_MNIST", root=tmp_path).info["dataset"] == "fashion-mnist"
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10")


def test_missing_files_say_how_to_get_them(tmp_path) -> None:
    with pytest.raises(DataError) as caught:
        load_dataset("mnist", root=tmp_path / "nowhere")
    message = str(caught.value)
    assert "nowhere does not exist" in message
    assert "t10k-images-idx3-ubyte[.gz]" in message
    assert "download=True" in message and "--download" in message
    assert "--data-dir" in message
    assert "test files (t10k-*) alone are enough" in message
    with pytest.raises(DataError, match="holds none of its files"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_one_file_of_a_pair_missing_is_named(tmp_path) -> None:
    write_idx_set(tmp_path, *tiny_idx(4, seed=0), split="test")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"MNIST file t10k-labels-idx1-ubyte \(or .*\.gz\) not"):
        load_dataset("mnist", root=tmp_path)


def test_truncated_file_is_named(tmp_path) -> None:
    images, labels = tiny_idx(4, seed=0)
    write_idx_set(tmp_path, images, labels, split="test")
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images)[:-50]))
    with pytest.raises(DataError, match=r"MNIST file .*t10k-images-idx3-ubyte.gz is truncated"):
        load_dataset("mnist", root=tmp_path)


def test_corrupt_files_are_named(tmp_path) -> None:
    images, labels = tiny_idx(4, seed=0)
    write_idx_set(tmp_path, images, labels, split="test")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match=r"Fashion-MNIST file .*t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(labels, magic=0x0D01))
    )
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz has magic number 0x00000d01"):
        load_dataset("mnist", root=tmp_path)


def test_default_root_is_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MINSHARP_DATA", str(tmp_path / "data"))
    assert default_data_root("mnist") == tmp_path / "data" / "mnist"
    write_idx_set(tmp_path / "data" / "mnist", *tiny_idx(5, seed=0), split="test")
    splits = load_dataset("mnist")
    assert splits.info["source_kind"] == "cache"
    assert splits.info["source"] == str((tmp_path / "data" / "mnist").resolve())
    monkeypatch.delenv("MINSHARP_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_root("cifar-10") == tmp_path / "xdg" / "minsharp" / "cifar10"


def test_download_fills_the_missing_files(tmp_path, monkeypatch) -> None:
    """download=True fetches only what is missing (here over file:// URLs)."""
    source = tmp_path / "server"
    train, test = tiny_idx(6, seed=0), tiny_idx(4, seed=1)
    write_idx_set(source, *train, split="train")
    write_idx_set(source, *test, split="test")
    resources = tuple(
        Resource(path.name, hashlib.md5(path.read_bytes()).hexdigest(), (path.as_uri(),))
        for path in sorted(source.iterdir())
    )
    monkeypatch.setitem(download.RESOURCES, "mnist", resources)
    cache = tmp_path / "cache"
    write_idx_set(cache, *test, split="test")  # already there: not fetched again
    splits = load_dataset("mnist", root=cache, download=True)
    assert sorted(splits.info["downloaded"]) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    assert splits.info["split_kind"] == "official"
    assert splits.train_labels.tolist() == train[1].tolist()
    assert splits.info["files_match_official"] is True
    assert load_dataset("mnist", root=cache, download=True).info["downloaded"] == []


# --- digits ---------------------------------------------------------------------------------------


def test_digits_is_the_builtin_default() -> None:
    splits = load_dataset("digits", train_size=300, test_size=100, seed=2)
    assert splits.train_inputs.shape == (300, 64)
    assert splits.test_inputs.shape == (100, 64)
    assert splits.train_inputs.min() >= 0.0 and splits.train_inputs.max() <= 1.0
    info = splits.info
    assert_jsonable(info)
    assert info["source_kind"] == "bundled"
    assert info["available"] == {"train": 1348, "test": 449}
    assert info["subsampled"] is True
    assert "300 of the 1 348 train examples" in info["split"]
    full = load_dataset("digits", seed=2)
    assert full.info["sizes"] == {"train": 1348, "test": 449}
    assert torch.equal(
        load_dataset("digits", train_size=300, seed=2).train_labels, splits.train_labels
    )


# --- CIFAR-10 binary ------------------------------------------------------------------------------


def test_cifar_batches_official_split_and_normalisation(tmp_path) -> None:
    written = write_cifar(tmp_path / cifar.FOLDER)
    splits = load_dataset("cifar10", root=tmp_path)
    assert splits.train_inputs.shape == (15, 3, 32, 32)
    assert splits.test_inputs.shape == (3, 3, 32, 32)
    assert splits.info["split_kind"] == "official"
    images, labels = written["data_batch_1.bin"]
    mean = torch.tensor(cifar.MEAN).view(3, 1, 1)
    std = torch.tensor(cifar.STD).view(3, 1, 1)
    expected = (torch.from_numpy(images[0]).float() / 255 - mean) / std
    torch.testing.assert_close(splits.train_inputs[0], expected)
    assert splits.train_labels[:3].tolist() == labels.tolist()
    assert splits.test_labels.tolist() == written["test_batch.bin"][1].tolist()
    assert splits.info["class_names"][0] == "airplane"
    assert [entry["name"] for entry in splits.info["files"]][-1] == "test_batch.bin"
    assert_jsonable(splits.info)


def test_cifar_channel_order_is_red_green_blue(tmp_path) -> None:
    record = bytes([4]) + bytes([255] * 1024) + bytes([0] * 2048)
    (tmp_path / "test_batch.bin").write_bytes(record * 4)  # batches directly in root
    splits = load_dataset("cifar10", root=tmp_path, train_size=2, test_size=2)
    red = (1 - cifar.MEAN[0]) / cifar.STD[0]
    assert splits.train_inputs[0, 0].allclose(torch.full((32, 32), red))
    assert splits.train_inputs[0, 2].allclose(torch.full((32, 32), -cifar.MEAN[2] / cifar.STD[2]))
    assert splits.info["split_kind"] == "from-test-files"
    assert "test_batch.bin" in splits.info["split"]


def test_cifar_partial_training_batches(tmp_path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "data_batch_4.bin").unlink()
    with pytest.raises(DataError, match=r"training batches data_batch_4.bin are missing"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_truncated_and_corrupt_batches(tmp_path) -> None:
    write_cifar(tmp_path)
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"data_batch_2.bin is truncated or not a binary batch"):
        load_dataset("cifar10", root=tmp_path)
    path.write_bytes(bytes([11]) + bytes(3072))
    with pytest.raises(DataError, match=r"data_batch_2.bin has 1 labels outside 0..9"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_missing(tmp_path) -> None:
    with pytest.raises(DataError, match=r"CIFAR-10 data not found: .* holds none of its files"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_archive_is_verified_then_extracted(tmp_path, monkeypatch) -> None:
    written = write_cifar(tmp_path / "source")
    archive = tmp_path / "root" / cifar.ARCHIVE
    archive.parent.mkdir()
    md5 = cifar_archive(archive, tmp_path / "source")
    with pytest.raises(DataError) as caught:  # not the official archive
        load_dataset("cifar10", root=archive.parent)
    message = str(caught.value)
    assert "checksum mismatch" in message and cifar.ARCHIVE in message
    assert "c32a1d4ab5d03f1284b67883e8d87530" in message and md5 in message
    assert "--data-dir" in message
    assert not (archive.parent / cifar.FOLDER).exists()

    monkeypatch.setitem(
        download.RESOURCES, "cifar10", (Resource(cifar.ARCHIVE, md5, (archive.as_uri(),)),)
    )
    splits = load_dataset("cifar10", root=archive.parent)
    assert splits.test_labels.tolist() == written["test_batch.bin"][1].tolist()
    assert sorted(path.name for path in (archive.parent / cifar.FOLDER).iterdir()) == sorted(
        written
    )
    assert splits.info["files"][0]["matches_official"] is True

    cache = tmp_path / "cache"  # and the same archive through the downloader
    fetched = load_dataset("cifar10", root=cache, download=True)
    assert fetched.info["downloaded"] == [cifar.ARCHIVE]
    assert torch.equal(fetched.train_inputs, splits.train_inputs)


def _tar_with(path: Path, member: tarfile.TarInfo, content: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        if member.isfile():
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
        else:
            tar.addfile(member)
    return path


@pytest.mark.parametrize(
    ("name", "kind", "why"),
    [
        ("../test_batch.bin", tarfile.REGTYPE, "climbs out"),
        ("cifar-10-batches-bin/../../evil", tarfile.REGTYPE, "climbs out"),
        ("/tmp/test_batch.bin", tarfile.REGTYPE, "absolute path"),
        ("cifar-10-batches-bin/test_batch.bin", tarfile.SYMTYPE, "is a link"),
        ("cifar-10-batches-bin/data_batch_1.bin", tarfile.LNKTYPE, "is a link"),
    ],
)
def test_cifar_extraction_refuses_unsafe_members(tmp_path, name, kind, why) -> None:
    member = tarfile.TarInfo(name)
    member.type = kind
    if kind != tarfile.REGTYPE:
        member.linkname = "/etc/passwd"
    archive = _tar_with(tmp_path / "evil.tar.gz", member)
    target = tmp_path / "out"
    with pytest.raises(DataError, match=f"refused to extract .*{why}"):
        cifar.extract(archive, target)
    assert not target.exists()
    assert not (tmp_path / "test_batch.bin").exists()


def test_cifar_extraction_of_a_damaged_archive(tmp_path) -> None:
    write_cifar(tmp_path / "source")
    archive = tmp_path / cifar.ARCHIVE
    cifar_archive(archive, tmp_path / "source")
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(DataError, match="not a complete gzipped tar file"):
        cifar.extract(archive, tmp_path / "out")
    with tarfile.open(archive := tmp_path / "other.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "source" / "test_batch.bin", arcname="cifar-10-batches-bin/x.bin")
    with pytest.raises(DataError, match=r"lacks data_batch_1\.bin"):
        cifar.extract(archive, tmp_path / "out")


# --- the one data-spec parser ------------------------------------------------------------------


def test_data_spec_forms(tmp_path) -> None:
    from minsharp.data import parse_data_spec

    assert parse_data_spec("digits").dataset == "digits"
    assert parse_data_spec("digits").location is None
    assert parse_data_spec(f"CIFAR-10:{tmp_path}").dataset == "cifar10"
    assert parse_data_spec(f"file:{tmp_path}/x.pt").location == tmp_path / "x.pt"
    assert parse_data_spec("mnist").location is None
    for bad, message in (
        ("svhn", "unknown data set 'svhn'; known: digits, mnist"),
        ("mnist:", "the folder is empty"),
        ("digits:/tmp", "digits is bundled"),
        ("file:", "file:PATH"),
    ):
        with pytest.raises(DataError, match=message):
            parse_data_spec(bad)


def test_load_dataset_reads_a_spec_with_its_folder(tmp_path) -> None:
    write_idx_set(tmp_path, *tiny_idx(6, seed=0), split="test")
    by_spec = load_dataset(f"mnist:{tmp_path}", train_size=3, seed=1)
    by_root = load_dataset("mnist", root=tmp_path, train_size=3, seed=1)
    assert torch.equal(by_spec.train_inputs, by_root.train_inputs)
    assert by_spec.info == by_root.info
    with pytest.raises(DataError, match="give the folder once"):
        load_dataset(f"mnist:{tmp_path}", root=tmp_path)
    with pytest.raises(DataError, match="read_labelled_file"):
        load_dataset(f"file:{tmp_path}/x.pt")


def test_former_cli_names_resolve_from_their_new_homes() -> None:
    import minsharp.cli
    from minsharp.cli import loading, measure
    from minsharp.data import sources

    assert minsharp.cli.make_model is loading.make_model
    assert minsharp.cli.parse_value is measure.parse_value
    assert minsharp.cli.load_data is sources.load_examples
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        minsharp.cli.nothing  # noqa: B018

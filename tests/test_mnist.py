"""The MNIST IDX reader: the real test split, and malformed files written on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.idx import write_idx

from minsharp.data import load_mnist_split
from minsharp.errors import DataError

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"the MNIST test split is not at {MNIST_DIR} (only present in the shared workspace)",
)


def write_split(
    folder: Path, images: np.ndarray, labels: np.ndarray, *, split: str = "test", gz: bool = True
) -> Path:
    prefix = "t10k" if split == "test" else "train"
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


@pytest.fixture
def small_arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = np.array([7, 0, 9], dtype=np.uint8)
    return images, labels


# --- the real test split ------------------------------------------------------------------


@needs_mnist
def test_real_test_split_shapes_dtypes_and_counts() -> None:
    images, labels = load_mnist_split(MNIST_DIR, "test")
    assert images.shape == (10_000, 1, 28, 28)
    assert images.dtype == torch.float32
    assert labels.shape == (10_000,)
    assert labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == TEST_LABEL_COUNTS
    assert images.min().item() == -1.0
    assert images.max().item() == 1.0


@needs_mnist
def test_real_test_split_unnormalized_lies_in_unit_interval() -> None:
    raw, labels = load_mnist_split(MNIST_DIR, "test", normalize=False)
    normalized, same_labels = load_mnist_split(MNIST_DIR)
    assert raw.min().item() == 0.0
    assert raw.max().item() == 1.0
    # MNIST test pixels average about 0.1325 (mostly black background).
    assert 0.12 < raw.mean().item() < 0.14
    torch.testing.assert_close(normalized, (raw - 0.5) / 0.5)
    assert torch.equal(labels, same_labels)


# --- small synthetic files ----------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split", ["test", "train"])
def test_reads_small_files_exactly(tmp_path, small_arrays, gz, split) -> None:
    images, labels = small_arrays
    write_split(tmp_path, images, labels, split=split, gz=gz)
    pixels, read_labels = load_mnist_split(tmp_path, split, normalize=False)
    assert pixels.shape == (3, 1, 28, 28)
    torch.testing.assert_close(pixels[:, 0], torch.from_numpy(images).float() / 255)
    assert read_labels.tolist() == [7, 0, 9]
    normalized, _ = load_mnist_split(tmp_path, split)
    assert normalized[0, 0, 0, 0].item() == -1.0
    assert normalized[0, 0, 0, 1].item() == 1.0


def test_missing_file_names_it(tmp_path, small_arrays) -> None:
    images, labels = small_arrays
    write_split(tmp_path, images, labels)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte .*not found"):
        load_mnist_split(tmp_path)


def test_missing_directory(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_mnist_split(tmp_path / "nowhere")


def test_unknown_split(tmp_path) -> None:
    with pytest.raises(DataError, match="split must be 'test' or 'train'"):
        load_mnist_split(tmp_path, "validation")


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file(tmp_path, small_arrays, gz) -> None:
    images, labels = small_arrays
    write_split(tmp_path, images, labels, gz=gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    write_idx(tmp_path / name, images, cut=100)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.* is truncated"):
        load_mnist_split(tmp_path)


def test_overlong_file(tmp_path, small_arrays) -> None:
    images, labels = small_arrays
    write_split(tmp_path, images, labels, gz=False)
    with (tmp_path / "t10k-labels-idx1-ubyte").open("ab") as stream:
        stream.write(b"\x00")
    with pytest.raises(DataError, match="longer than its header says"):
        load_mnist_split(tmp_path)


def test_cut_gzip_stream(tmp_path, small_arrays) -> None:
    images, labels = small_arrays
    write_split(tmp_path, images, labels)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="not a complete gzip stream"):
        load_mnist_split(tmp_path)


def test_bad_magic(tmp_path, small_arrays) -> None:
    images, labels = small_arrays
    write_split(tmp_path, images, labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, magic=0x0D03)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz has magic number 0x00000d03"):
        load_mnist_split(tmp_path)


def test_swapped_files_are_caught_by_magic(tmp_path, small_arrays) -> None:
    images, labels = small_arrays
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", labels)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", images)
    with pytest.raises(DataError, match="magic number 0x00000801"):
        load_mnist_split(tmp_path)


def test_count_mismatch(tmp_path, small_arrays) -> None:
    images, labels = small_arrays
    write_split(tmp_path, images, labels[:2])
    with pytest.raises(DataError, match=r"holds 3 images but .* holds 2 labels"):
        load_mnist_split(tmp_path)


def test_labels_out_of_range(tmp_path, small_arrays) -> None:
    images, _ = small_arrays
    write_split(tmp_path, images, np.array([3, 10, 200], dtype=np.uint8))
    with pytest.raises(DataError, match=r"2 labels outside 0\.\.9"):
        load_mnist_split(tmp_path)


def test_raw_file_is_preferred_over_gz(tmp_path, small_arrays) -> None:
    images, labels = small_arrays
    write_split(tmp_path, images, labels, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 3], dtype=np.uint8))
    _, read_labels = load_mnist_split(tmp_path)
    assert read_labels.tolist() == [1, 2, 3]

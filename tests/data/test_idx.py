"""Tests for the idx reader and the Fashion-MNIST loader (synthetic files only)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from adaround_lightning.data.idx import load_fashion_mnist, read_idx


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Build an idx file independently: magic ``00 00 TT NN``, big-endian sizes, data."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes(order="C")


def _write(path: Path, array: np.ndarray, type_code: int = 0x08) -> Path:
    data = _idx_bytes(array, type_code)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_read_idx_labels_roundtrip(tmp_path: Path, name: str) -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=37, dtype=np.uint8)
    out = read_idx(_write(tmp_path / name, labels))
    assert out.dtype == np.uint8
    assert out.shape == (37,)
    np.testing.assert_array_equal(out, labels)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_images_roundtrip(tmp_path: Path, name: str) -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(5, 28, 27), dtype=np.uint8)
    out = read_idx(str(_write(tmp_path / name, images)))
    assert out.dtype == np.uint8
    assert out.shape == (5, 28, 27)
    np.testing.assert_array_equal(out, images)


def test_read_idx_wider_dtypes(tmp_path: Path) -> None:
    ints = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    floats = np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(read_idx(_write(tmp_path / "i.idx", ints, 0x0C)), ints)
    np.testing.assert_array_equal(read_idx(_write(tmp_path / "f.idx", floats, 0x0D)), floats)


def test_read_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(struct.pack(">BBBB", 1, 2, 0x08, 1) + struct.pack(">I", 3) + b"\x00" * 3)
    with pytest.raises(ValueError, match="bad magic number"):
        read_idx(path)


def test_read_idx_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x42, 1) + struct.pack(">I", 3) + b"\x00" * 3)
    with pytest.raises(ValueError, match="bad-idx1-ubyte"):
        read_idx(path)


@pytest.mark.parametrize("name", ["trunc-idx3-ubyte", "trunc-idx3-ubyte.gz"])
def test_read_idx_truncated(tmp_path: Path, name: str) -> None:
    data = _idx_bytes(np.zeros((4, 3, 3), dtype=np.uint8))[:-5]
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def _write_split(root: Path, prefix: str, n: int, gz: bool, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    _write(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
    _write(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


def test_load_fashion_mnist_synthetic(tmp_path: Path) -> None:
    train_images, train_labels = _write_split(tmp_path, "train", 12, gz=True, seed=2)
    test_images, test_labels = _write_split(tmp_path, "t10k", 7, gz=False, seed=3)

    images, labels = load_fashion_mnist(tmp_path, "train")
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (12,) and labels.dtype == np.int64
    np.testing.assert_array_equal(images, train_images)
    np.testing.assert_array_equal(labels, train_labels.astype(np.int64))

    images, labels = load_fashion_mnist(str(tmp_path), "test")
    assert images.shape == (7, 28, 28) and labels.dtype == np.int64
    np.testing.assert_array_equal(images, test_images)
    np.testing.assert_array_equal(labels, test_labels.astype(np.int64))


def test_load_fashion_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        load_fashion_mnist(tmp_path, "test")
    assert "t10k-images-idx3-ubyte" in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_load_fashion_mnist_bad_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(tmp_path, "validation")

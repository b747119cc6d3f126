"""Readers for the idx file format used by (Fashion-)MNIST.

The idx format is a tiny binary container: a 4-byte magic number
``0x00 0x00 <dtype code> <ndim>``, followed by ``ndim`` big-endian uint32 sizes and
then the raw, big-endian array data in C order. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["FASHION_MNIST_DEFAULT_ROOT", "FASHION_MNIST_FILES", "load_fashion_mnist", "read_idx"]

#: Mapping from the idx dtype code (third magic byte) to a big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: Base file names (without ``.gz``) of the Fashion-MNIST splits: ``(images, labels)``.
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Where the Debian-style ``dataset-fashion-mnist`` package installs the files.
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")


def _read_bytes(path: Path) -> bytes:
    """Read a file's content, transparently un-gzipping it.

    Args:
        path: File to read; gzip is detected from its magic bytes, not its suffix.

    Returns:
        The (decompressed) bytes.

    Raises:
        ValueError: If the file looks gzipped but the stream is corrupt or truncated.
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"idx file {path}: corrupt or truncated gzip stream ({exc})") from exc
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (plain or gzip-compressed) into a numpy array.

    The dtype code and the number of dimensions are parsed from the magic number and the
    big-endian sizes that follow it. Single-byte types are returned as they are (``uint8``
    for (Fashion-)MNIST images and labels); wider types are converted to native byte order.

    Args:
        path: Path to the ``.idx``/``-ubyte`` file, optionally ending in ``.gz``.

    Returns:
        The array, with the shape stored in the file header.

    Raises:
        ValueError: On a bad magic number, an unknown dtype code, or a truncated file.

    Example:
        >>> images = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
        >>> images.shape, images.dtype
        ((10000, 28, 28), dtype('uint8'))
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"idx file {path}: truncated, only {len(data)} bytes (no magic number)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES:
        raise ValueError(
            f"idx file {path}: bad magic number 0x{data[:4].hex()} "
            "(expected 0x0000TTNN with a known type code TT)"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"idx file {path}: truncated header, {len(data)} bytes for {ndim} dimensions"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    count = int(np.prod(shape, dtype=np.int64))
    expected = header_len + count * dtype.itemsize
    if len(data) < expected:
        raise ValueError(
            f"idx file {path}: truncated, {len(data)} bytes but shape {shape} of {dtype.name} "
            f"needs {expected}"
        )
    if len(data) > expected:
        logger.warning("idx file %s: %d trailing bytes ignored", path, len(data) - expected)
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header_len).reshape(shape)
    # Native byte order and a writable copy (frombuffer over bytes is read-only).
    return array.astype(dtype.newbyteorder("="), copy=True)


def _find_file(root: Path, name: str) -> Path:
    """Return ``root/name.gz`` or ``root/name``, whichever exists (gz preferred).

    Args:
        root: Directory to search.
        name: Base file name without ``.gz``.

    Returns:
        The existing path.

    Raises:
        FileNotFoundError: If neither variant exists.
    """
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {name}[.gz] expected in {root} but not found; "
        f"`apt-get install dataset-fashion-mnist` provides it at {FASHION_MNIST_DEFAULT_ROOT}"
    )


def load_fashion_mnist(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of Fashion-MNIST from the original idx files.

    Both gzip-compressed (``*.gz``) and uncompressed file names are accepted in ``root``.

    Args:
        root: Directory holding the idx files (e.g. ``/usr/share/datasets/fashion-mnist``).
        split: ``"train"`` (60 000 images) or ``"test"`` (the 10 000 ``t10k`` images).

    Returns:
        ``(images, labels)``: images as ``(N, 28, 28)`` uint8, labels as ``(N,)`` int64.

    Raises:
        ValueError: On an unknown split, a malformed file, or mismatched image/label counts.
        FileNotFoundError: If the split's files are missing from ``root``.

    Example:
        >>> images, labels = load_fashion_mnist("/usr/share/datasets/fashion-mnist", "test")
        >>> images.shape, labels.dtype
        ((10000, 28, 28), dtype('int64'))
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected 'train' or 'test'")
    root = Path(root)
    image_name, label_name = FASHION_MNIST_FILES[split]
    image_path = _find_file(root, image_name)
    label_path = _find_file(root, label_name)
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST {split} files in {root} are inconsistent: images {images.shape}, "
            f"labels {labels.shape}"
        )
    logger.debug("loaded Fashion-MNIST %s split from %s: %s", split, root, images.shape)
    return images.astype(np.uint8, copy=False), labels.astype(np.int64)

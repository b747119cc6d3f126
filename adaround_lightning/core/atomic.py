"""Atomic file writes: a temporary name in the same folder, then a rename.

A crash or SIGKILL at any moment leaves either the old file or the complete new one under the
final name, never a partial file. The file gets the mode an ordinary new file would (``0666``
less the umask), not the ``0600`` of the temporary name, so others on a shared machine can read
results when the umask lets them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text"]


def _umask() -> int:
    # The only portable way to read the umask is to set it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` for a temporary file next to ``path``, then rename it to ``path``.

    Example:
        >>> atomic_write(Path("/tmp/_atomic.txt"), lambda tmp: Path(tmp).write_text("ok"))
        >>> Path("/tmp/_atomic.txt").read_text()
        'ok'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))

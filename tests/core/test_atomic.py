"""Atomic writes: all or nothing, with the mode of an ordinary new file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from adaround_lightning.core.atomic import atomic_write, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_the_file_honours_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "results.json", "{}")
        (tmp_path / "plain.txt").write_text("{}")  # what an ordinary file gets
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "results.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path: Path) -> None:
    def broken(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        atomic_write(tmp_path / "model.pt", broken)
    assert list(tmp_path.iterdir()) == []

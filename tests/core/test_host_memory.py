"""Keeping freed host memory: applied once, reported, and harmless to the numbers."""

from __future__ import annotations

import sys

import pytest
import torch

from adaround_lightning.core import host_memory


def test_it_is_applied_once_and_says_whether_it_took(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_memory, "_applied", None)
    first = host_memory.keep_freed_host_memory()
    assert first == sys.platform.startswith("linux")  # glibc on the Linux machines we run on
    assert host_memory.keep_freed_host_memory() is first  # once per process


def test_large_blocks_still_hold_what_was_written_after_reuse() -> None:
    host_memory.keep_freed_host_memory()
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):  # freed and served again from the heap
        values = torch.randn(64, 1024, 256, generator=generator)  # 64 MiB
        assert torch.equal(values.clone(), values)
        assert torch.isfinite(values.sum())

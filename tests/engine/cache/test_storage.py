"""Cache tiers: exact round trips, placement under a budget, the disk check, identical integers."""

from __future__ import annotations

import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from torch import nn

from adaround_lightning import AdaroundConfig, EngineConfig, QuantConfig, adaround
from adaround_lightning.core.errors import UserError
from adaround_lightning.engine.cache import storage
from adaround_lightning.engine.cache.storage import CacheAllocator

CPU = {"accelerator": "cpu", "devices": 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["accelerator", "cpu", "disk"])
def test_every_tier_returns_what_was_written(mode: str, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(10, 3, 4, generator=generator)
    allocator = CacheAllocator(torch.device("cpu"), mode, dtype=dtype)
    buffer = allocator.allocate((10, 3, 4))
    for start in range(0, 10, 4):
        buffer.write(start, values[start : start + 4])
    expected = values.to(dtype).float()  # the storage dtype's rounding, then float32 again
    assert buffer[2:7].dtype == torch.float32 and torch.equal(buffer[2:7], expected[2:7])
    index = torch.tensor([[9, 0], [3, 3]])
    assert torch.equal(buffer[index], expected[index])
    assert buffer.tier == ("cpu" if mode == "accelerator" else mode)  # a CPU run
    allocator.free(buffer)
    allocator.close()


@pytest.mark.parametrize("written_channels_last", [False, True])
@pytest.mark.parametrize("mode", ["cpu", "disk"])
def test_channels_last_buffers_return_the_same_values_in_nhwc_order(
    mode: str, written_channels_last: bool
) -> None:
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(7, 3, 4, 5, generator=generator)
    if written_channels_last:  # what a channels-last convolution hands the cache
        values = values.contiguous(memory_format=torch.channels_last)
    allocator = CacheAllocator(torch.device("cpu"), mode, channels_last=True)
    buffer = allocator.allocate((7, 3, 4, 5))
    for start in range(0, 7, 3):
        buffer.write(start, values[start : start + 3])
    rows, index = buffer[1:6], torch.tensor([6, 0, 2, 2])
    for read, expected in ((rows, values[1:6]), (buffer[index], values[index])):
        assert torch.equal(read, expected)
        assert read.is_contiguous(memory_format=torch.channels_last)
    grouped = buffer[torch.tensor([[1, 2], [3, 4]])]  # (K, batch, C, H, W) for K steps
    assert torch.equal(grouped, values[torch.tensor([[1, 2], [3, 4]])])
    allocator.close()


def test_auto_fills_the_accelerator_then_host_memory_then_disk() -> None:
    # A faked accelerator of 1000 bytes (the meta device holds no memory), a 3000-byte budget.
    allocator = CacheAllocator(torch.device("meta"), "auto", 3000, accelerator_bytes=1000)
    tiers = [allocator.allocate((100, 2)).tier for _ in range(4)]  # 800 bytes each
    assert tiers == ["accelerator", "cpu", "cpu", "disk"]
    assert allocator.usage.in_memory() == 2400 <= 3000
    assert allocator.usage.peak == {"accelerator": 800, "cpu": 1600, "disk": 800}
    allocator.close()


def test_a_fixed_tier_over_its_budget_names_the_fix() -> None:
    allocator = CacheAllocator(torch.device("cpu"), "cpu", 1000)
    allocator.allocate((100, 2))
    with pytest.raises(UserError, match=r"cache_budget_gb.*cache_device=auto"):
        allocator.allocate((100, 2))


def test_disk_buffers_leave_no_files(tmp_path: Path) -> None:
    allocator = CacheAllocator(torch.device("cpu"), "disk", folder=tmp_path)
    buffer = allocator.allocate((4, 2))
    assert len(list(tmp_path.rglob("*.bin"))) == 1
    allocator.free(buffer)
    assert not list(tmp_path.rglob("*.bin"))
    allocator.close()
    assert not list(tmp_path.iterdir())


def _run(model: nn.Module, images: torch.Tensor, **settings: object) -> dict[str, torch.Tensor]:
    config, engine = (
        AdaroundConfig(iters=6, batch_size=16),
        EngineConfig(steps_per_batch=1, **settings),
    )
    result = adaround(
        model, images, QuantConfig(weight_bits=3), config, CPU, progress=False, engine=engine
    )
    return {name: q.integer_weight() for name, q in result.quantizers.items()}


def test_cpu_and_disk_and_a_tiny_budget_give_identical_integers(
    tiny_cnn: nn.Module, images: torch.Tensor
) -> None:
    reference = _run(tiny_cnn, images, cache_device="cpu")
    on_disk = _run(tiny_cnn, images, cache_device="disk")
    spilled = _run(tiny_cnn, images, cache_device="auto", cache_budget_gb=1e-6)
    assert reference.keys() == on_disk.keys() == spilled.keys()
    for name, integers in reference.items():
        assert torch.equal(integers, on_disk[name]), name
        assert torch.equal(integers, spilled[name]), name


def test_a_tiny_budget_spills_to_disk_and_stays_under_it(
    tiny_cnn: nn.Module, images: torch.Tensor
) -> None:
    budget = 40_000  # bytes: one block input of the tiny CNN fits, not the whole cache
    config, engine = (
        AdaroundConfig(iters=4, batch_size=16),
        EngineConfig(cache_budget_gb=budget / 2**30),
    )
    result = adaround(tiny_cnn, images, config=config, trainer=CPU, progress=False, engine=engine)
    assert result.cache is not None
    assert result.cache.peak_bytes.get("disk", 0) > 0
    in_memory = sum(n for tier, n in result.cache.peak_bytes.items() if tier != "disk")
    assert in_memory <= budget


def test_a_full_disk_is_an_error_before_anything_is_lost(
    tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "checkpoints"
    settings = {"config": AdaroundConfig(iters=4, batch_size=16), "trainer": CPU}
    settings["engine"] = EngineConfig(cache_device="disk")
    reference = adaround(tiny_cnn, images, **settings)
    Usage = namedtuple("Usage", "total used free")
    real_usage, calls = shutil.disk_usage, []

    def filling_up(path: object) -> Usage:
        calls.append(path)
        return Usage(*real_usage(path)) if len(calls) < 6 else Usage(10**12, 10**12, 1000)

    monkeypatch.setattr(storage.shutil, "disk_usage", filling_up)
    with pytest.raises(UserError, match="not enough disk space"):
        adaround(
            tiny_cnn,
            images,
            **settings,
            checkpoint=checkpoint,
            checkpoint_tag="t",
        )
    assert (checkpoint / "progress.json").is_file()  # the finished layers are kept
    assert not list((tmp_path / "cache").rglob("*.bin"))  # and no cache file is left
    monkeypatch.setattr(storage.shutil, "disk_usage", real_usage)
    resumed = adaround(
        tiny_cnn,
        images,
        **settings,
        checkpoint=checkpoint,
        checkpoint_tag="t",
    )
    for name, quantizer in reference.quantizers.items():
        assert torch.equal(quantizer.integer_weight(), resumed.quantizers[name].integer_weight())


@pytest.mark.gpu
def test_auto_keeps_the_cache_on_the_gpu_when_it_fits(
    tiny_cnn: nn.Module, images: torch.Tensor
) -> None:
    config = AdaroundConfig(iters=4, batch_size=16)
    gpu = {"accelerator": "gpu", "devices": 1}
    result = adaround(tiny_cnn, images, config=config, trainer=gpu, progress=False)
    assert result.cache is not None and set(result.cache.peak_bytes) == {"accelerator"}
    spilled = adaround(
        tiny_cnn,
        images,
        config=AdaroundConfig(iters=4, batch_size=16),
        engine=EngineConfig(cache_budget_gb=40_000 / 2**30),
        trainer=gpu,
        progress=False,
    )
    assert spilled.cache is not None and spilled.cache.peak_bytes.get("disk", 0) > 0


def test_folders_of_dead_processes_are_removed_on_the_next_run(tmp_path: Path) -> None:
    import socket

    host = socket.gethostname()
    stale = tmp_path / f"adaround-cache-{host}-999999999-abc"  # no such process
    stale.mkdir()
    (stale / "activations-x.bin").write_bytes(b"0" * 16)
    live = tmp_path / f"adaround-cache-{host}-{os.getpid()}-def"  # this process: kept
    live.mkdir()
    allocator = CacheAllocator(torch.device("cpu"), "disk", folder=tmp_path)
    allocator.allocate((2, 2))
    assert not stale.exists() and live.exists()
    allocator.close()


def test_the_temporary_folder_is_cleaned_of_dead_processes_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the Python API's disk tier
    stale = tmp_path / f"adaround-cache-{socket.gethostname()}-999999999-abc"
    stale.mkdir()
    allocator = CacheAllocator(torch.device("cpu"), "disk")
    allocator.allocate((2, 2))
    assert not stale.exists() and allocator.folder().parent == tmp_path
    allocator.close()

"""Where cached activations live: the accelerator, host memory or disk, under a byte budget.

A :class:`CacheAllocator` hands out :class:`CachedTensor` buffers of shape ``(N, ...)``. Each is
filled chunk by chunk (``write``), read back in chunks (``read``) and sampled in random batches
(``gather``); reads always arrive on the compute device in float32, whatever the storage dtype.

Tiers (``engine.cache_device``):

* ``accelerator``: on the compute device (reported as ``cpu`` when Lightning runs on the CPU);
* ``cpu``: host memory, pinned when the compute device is a GPU, so batches reach it with
  non-blocking copies;
* ``disk``: a file per buffer in a temporary folder (the run dir's ``cache/`` in the app), written
  and read with ``pwrite``/``pread``: no memory map, so cached bytes never count in the
  process's resident memory. Free space is checked before a buffer is created; the files are
  removed when the buffer is freed and the folder when the calibration ends.
* ``auto``: the accelerator while the buffers fit its share (by default half of its free memory;
  on the CPU the host share), then host memory up to its share (by default half of the
  available RAM), then disk. ``engine.cache_budget_gb`` caps the memory tiers together.

The budget is never exceeded: a buffer goes to the first tier with room for all of it.

Example:
    >>> allocator = CacheAllocator(torch.device("cpu"), CacheDevice.DISK)
    >>> buffer = allocator.allocate((4, 3), torch.float32)
    >>> buffer.write(0, torch.arange(12.0).reshape(4, 3))
    >>> buffer.gather(torch.tensor([3, 0])).tolist()
    [[9.0, 10.0, 11.0], [0.0, 1.0, 2.0]]
    >>> allocator.close()
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adaround_lightning.core.choices import Choice
from adaround_lightning.core.errors import UserError

__all__ = [
    "FORWARD_SHARE",
    "CacheAllocator",
    "CacheDevice",
    "CacheDtype",
    "CacheUsage",
    "CachedTensor",
    "DiskTensor",
    "MemoryTensor",
    "in_layout",
]

log = logging.getLogger(__name__)

#: Share of the free accelerator memory, and of the available host memory, that ``auto`` uses.
MEMORY_SHARE = 0.5
#: Share of ``engine.cache_budget_gb`` that the transient tensors of one forward chunk, or of
#: one training step's stacked batches, may take besides the cache.
FORWARD_SHARE = 0.25
#: Disk space kept free beyond a buffer's size.
DISK_MARGIN_BYTES = 256 * 2**20


class CacheDevice(Choice):
    """Where the activation cache lives (``engine.cache_device``)."""

    AUTO = "auto"
    ACCELERATOR = "accelerator"
    CPU = "cpu"
    DISK = "disk"


class CacheDtype(Choice):
    """Storage dtype of the cache (``engine.cache_dtype``); compute stays float32."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"

    @property
    def torch_dtype(self) -> torch.dtype:
        """The matching ``torch.dtype``."""
        return getattr(torch, self.value)


def _channels_last(shape: tuple[int, ...], enabled: bool) -> bool:
    return enabled and len(shape) == 4


def in_layout(values: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``values`` channels-last when asked and 4-D (no copy when it already is), else as is.

    Example:
        >>> nhwc = in_layout(torch.zeros(2, 3, 4, 5), True)
        >>> nhwc.is_contiguous(memory_format=torch.channels_last), nhwc.shape
        (True, torch.Size([2, 3, 4, 5]))
    """
    if channels_last and values.dim() == 4:
        return values.contiguous(memory_format=torch.channels_last)
    return values


def _empty_rows(
    shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool, **kwargs: object
) -> torch.Tensor:
    """An ``(N, C, H, W)`` tensor stored ``(N, H, W, C)`` when ``channels_last``, else plain.

    The NHWC storage is a permuted view, so any row range of it is one contiguous block and it
    works with ``pin_memory`` (``torch.empty`` takes no memory format together with pinning).
    """
    if not channels_last:
        return torch.empty(shape, dtype=dtype, **kwargs)  # type: ignore[arg-type]
    n, c, h, w = shape
    return torch.empty((n, h, w, c), dtype=dtype, **kwargs).permute(0, 3, 1, 2)  # type: ignore[arg-type]


class CachedTensor:
    """A cached ``(N, ...)`` buffer: filled by chunks, read by chunks or random rows.

    With ``channels_last``, a 4-D buffer is stored and read in NHWC order: the convolutions
    that read it then run channels-last, and so does everything they compute (oneDNN on the
    CPU runs MobileNet-style blocks about 1.5x faster that way than in NCHW).
    """

    tier: str = ""

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        channels_last: bool = False,
    ) -> None:
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = device  # where reads arrive
        self.channels_last = _channels_last(self.shape, channels_last)
        self.nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()

    def _arrive(self, values: torch.Tensor) -> torch.Tensor:
        # On the compute device in float32 and in the buffer's layout: no copy when it is.
        return in_layout(values.to(self.device, non_blocking=True).float(), self.channels_last)

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        """Elements of the whole buffer (like ``Tensor.numel``)."""
        return math.prod(self.shape)

    def __getitem__(self, key: slice | torch.Tensor) -> torch.Tensor:
        """``buffer[a:b]`` reads rows, ``buffer[index]`` gathers them (like a tensor)."""
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise ValueError("cached buffers are read in contiguous row ranges")
            return self.read(start, stop)
        return self.gather(key)

    def write(self, start: int, values: torch.Tensor) -> None:
        """Store ``values`` (``(n, ...)``) at rows ``start .. start + n``."""
        raise NotImplementedError

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start .. stop`` on the compute device, float32."""
        raise NotImplementedError

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` (any shape of row numbers) on the compute device, float32."""
        raise NotImplementedError

    def free(self) -> None:
        """Release the storage."""


class MemoryTensor(CachedTensor):
    """A buffer in memory: on the compute device, or in (pinned) host memory."""

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        tier: str,
        channels_last: bool = False,
    ) -> None:
        super().__init__(shape, dtype, device, channels_last)
        self.tier = tier
        where = device if tier == CacheDevice.ACCELERATOR else torch.device("cpu")
        pin = tier == CacheDevice.CPU and device.type == "cuda"
        self.data = _empty_rows(self.shape, dtype, self.channels_last, device=where, pin_memory=pin)

    def write(self, start: int, values: torch.Tensor) -> None:
        self.data[start : start + values.shape[0]].copy_(values, non_blocking=True)

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self._arrive(self.data[start:stop])

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        return self._arrive(self.data[index.to(self.data.device)])

    def free(self) -> None:
        self.data = torch.empty(0)

    @classmethod
    def wrap(cls, data: torch.Tensor, channels_last: bool = False) -> MemoryTensor:
        """A view of an existing tensor on the compute device (no copy, not accounted).

        With ``channels_last``, 4-D reads arrive channels-last (each read chunk is converted).
        """
        view = cls.__new__(cls)
        CachedTensor.__init__(view, tuple(data.shape), data.dtype, data.device, channels_last)
        view.tier, view.data, view.nbytes = "input", data, 0
        return view


class DiskTensor(CachedTensor):
    """A buffer in a file, row by row (``pwrite``/``pread``, no memory map)."""

    tier = CacheDevice.DISK.value

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        folder: Path,
        channels_last: bool = False,
    ) -> None:
        super().__init__(shape, dtype, device, channels_last)
        self.row_bytes = self.nbytes // max(1, shape[0])
        handle, name = tempfile.mkstemp(dir=folder, prefix="activations-", suffix=".bin")
        self.path = Path(name)
        self.fd = handle
        os.ftruncate(self.fd, self.nbytes)

    def write(self, start: int, values: torch.Tensor) -> None:
        stored = values.detach().to("cpu", self.dtype)
        # NHWC rows: a channels-last chunk is already that order (no copy).
        stored = (stored.permute(0, 2, 3, 1) if self.channels_last else stored).contiguous()
        # The tensor's own bytes, no copy: pwrite takes any buffer.
        os.pwrite(self.fd, stored.view(torch.uint8).numpy().data, start * self.row_bytes)

    def _rows(self, count: int) -> torch.Tensor:
        return _empty_rows((count, *self.shape[1:]), self.dtype, self.channels_last)

    def _read_into(self, rows: torch.Tensor, offset: int) -> None:
        if self.channels_last:
            rows = rows.permute(0, 2, 3, 1) if rows.dim() == 4 else rows.permute(1, 2, 0)
        view = memoryview(rows.view(torch.uint8).numpy()).cast("B")
        done = 0
        while done < len(view):  # pread may return fewer bytes than asked
            done += os.preadv(self.fd, [view[done:]], offset + done)

    def read(self, start: int, stop: int) -> torch.Tensor:
        rows = self._rows(stop - start)
        self._read_into(rows, start * self.row_bytes)
        return self._arrive(rows)

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        flat = index.reshape(-1).tolist()
        rows = self._rows(len(flat))
        for position, row in enumerate(flat):
            self._read_into(rows[position], row * self.row_bytes)
        return self._arrive(rows).reshape(*index.shape, *self.shape[1:])

    def free(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.path.unlink(missing_ok=True)


@dataclass
class CacheUsage:
    """Bytes held per tier, now and at the peak, and how many buffers went where."""

    current: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    buffers: dict[str, int] = field(default_factory=dict)

    def add(self, tier: str, nbytes: int) -> None:
        """Account for a new buffer."""
        self.current[tier] = self.current.get(tier, 0) + nbytes
        self.peak[tier] = max(self.peak.get(tier, 0), self.current[tier])
        self.buffers[tier] = self.buffers.get(tier, 0) + 1

    def remove(self, tier: str, nbytes: int) -> None:
        """Account for a freed buffer."""
        self.current[tier] = self.current.get(tier, 0) - nbytes

    def in_memory(self) -> int:
        """Bytes held now outside the disk tier."""
        return sum(n for tier, n in self.current.items() if tier != CacheDevice.DISK)


_FOLDER_PREFIX = "adaround-cache-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_folders(parent: Path) -> None:
    """Remove cache folders left in ``parent`` by dead processes of this host."""
    host = socket.gethostname()
    for folder in parent.glob(f"{_FOLDER_PREFIX}{host}-*"):
        pid = folder.name[len(_FOLDER_PREFIX) + len(host) + 1 :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by a process that ended without cleaning up", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _available_host_bytes() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def _free_device_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return _available_host_bytes()


class CacheAllocator:
    """Places each new buffer in a tier and keeps the tiers' byte counts.

    Args:
        device: The compute device (where reads arrive).
        mode: The tier policy (:class:`CacheDevice`).
        budget_bytes: Cap of the memory tiers together (None: their default shares).
        dtype: Storage dtype of every buffer.
        folder: Where the disk tier writes (None: a new temporary folder).
        channels_last: Store 4-D buffers in NHWC order (reads arrive channels-last).
        accelerator_bytes: The accelerator's share (None: half of its free memory); tests use it
            to fake a small device.
    """

    def __init__(
        self,
        device: torch.device,
        mode: CacheDevice | str = CacheDevice.AUTO,
        budget_bytes: int | None = None,
        dtype: CacheDtype | str | torch.dtype = CacheDtype.FLOAT32,
        folder: Path | None = None,
        accelerator_bytes: int | None = None,
        channels_last: bool = False,
    ) -> None:
        self.device = device
        self.channels_last = channels_last
        self.mode = CacheDevice.parse(mode, "engine.cache_device")
        if isinstance(dtype, torch.dtype):
            self.dtype = dtype
        else:
            self.dtype = CacheDtype.parse(dtype, "engine.cache_dtype").torch_dtype
        self.budget_bytes = budget_bytes
        self.usage = CacheUsage()
        self._parent = folder
        self._folder: Path | None = None
        on_accelerator = device.type != "cpu"
        share = int(MEMORY_SHARE * _free_device_bytes(device)) if on_accelerator else 0
        self.accelerator_bytes = accelerator_bytes if accelerator_bytes is not None else share
        self.host_bytes = int(MEMORY_SHARE * _available_host_bytes())

    # ------------------------------------------------------------------ placement
    def _fits_memory(self, nbytes: int) -> bool:
        return self.budget_bytes is None or self.usage.in_memory() + nbytes <= self.budget_bytes

    def _tier_for(self, nbytes: int) -> str:
        mode, used = self.mode, self.usage.current
        if mode == CacheDevice.DISK:
            return CacheDevice.DISK
        if mode in (CacheDevice.ACCELERATOR, CacheDevice.CPU):
            if not self._fits_memory(nbytes):
                raise UserError(
                    f"the activation cache needs {nbytes / 2**30:.2f} GiB more than "
                    f"engine.cache_budget_gb={self.budget_bytes / 2**30:.2f} allows on "
                    f"engine.cache_device={mode}: raise the budget, or use cache_device=auto "
                    "(spills to disk)"
                )
            return mode
        accelerator = self.device.type != "cpu"
        room = used.get(CacheDevice.ACCELERATOR, 0) + nbytes <= self.accelerator_bytes
        if accelerator and room and self._fits_memory(nbytes):
            return CacheDevice.ACCELERATOR
        host_room = used.get(CacheDevice.CPU, 0) + nbytes <= self.host_bytes
        if host_room and self._fits_memory(nbytes):
            return CacheDevice.CPU
        return CacheDevice.DISK

    def folder(self) -> Path:
        """The disk tier's folder (created on first use), named by host and process.

        A process killed without cleaning up (SIGKILL, or SIGTERM, which Python does not turn
        into an exception) leaves its folder behind; the next run on the same host that writes
        there (the run dir's ``cache/`` or the temporary folder) removes the folders of
        processes no longer alive.
        """
        if self._folder is None:
            if self._parent is not None:
                self._parent.mkdir(parents=True, exist_ok=True)
            # The temporary folder too: a killed Python API run leaves its cache there.
            _remove_stale_folders(self._parent or Path(tempfile.gettempdir()))
            prefix = f"{_FOLDER_PREFIX}{socket.gethostname()}-{os.getpid()}-"
            self._folder = Path(tempfile.mkdtemp(prefix=prefix, dir=self._parent))
        return self._folder

    def _check_disk(self, nbytes: int) -> None:
        free = shutil.disk_usage(self.folder()).free
        if free < nbytes + DISK_MARGIN_BYTES:
            raise UserError(
                f"not enough disk space for the activation cache in {self.folder()}: "
                f"{nbytes / 2**30:.2f} GiB needed, {free / 2**30:.2f} GiB free; free some space, "
                "lower adaround.num_samples, or raise engine.cache_budget_gb"
            )

    def allocate(self, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> CachedTensor:
        """A new buffer of ``shape`` in the first tier with room for all of it."""
        dtype = self.dtype if dtype is None else dtype
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        tier = self._tier_for(nbytes)
        if tier == CacheDevice.ACCELERATOR and self.device.type == "cpu":
            tier = CacheDevice.CPU  # a CPU run: its device memory is host memory
        buffer: CachedTensor
        if tier == CacheDevice.DISK:
            self._check_disk(nbytes)
            buffer = DiskTensor(shape, dtype, self.device, self.folder(), self.channels_last)
        else:
            buffer = MemoryTensor(shape, dtype, self.device, str(tier), self.channels_last)
        self.usage.add(buffer.tier, buffer.nbytes)
        return buffer

    def free(self, buffer: CachedTensor | None) -> None:
        """Release ``buffer`` (None is ignored)."""
        if buffer is not None and buffer.nbytes >= 0:
            buffer.free()
            self.usage.remove(buffer.tier, buffer.nbytes)
            buffer.nbytes = -1  # freed once

    def close(self) -> None:
        """Remove the disk tier's folder."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

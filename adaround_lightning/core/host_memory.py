"""Keep freed host memory for reuse instead of handing it back to the kernel on every free.

glibc's ``malloc`` serves blocks above its mmap threshold (128 KiB, raised adaptively to at most
32 MiB) with a fresh ``mmap`` and unmaps them on ``free``. Every activation of a 224 px batch is
larger than that, so every forward pass maps new pages, and the kernel faults and zeroes each
4 KiB page of them: on this project's 2-core machine a ResNet50 ``layer1`` pass on 27 images
spent 2.45 s in the kernel against 3.0 s of compute, and 0.3 s once freed blocks are kept
(``benchmarks`` in BENCHMARKS.md). :func:`keep_freed_host_memory` raises the mmap threshold and
the trim threshold with ``mallopt``, so large blocks come from the heap and stay there for the
next pass. Kept blocks of mixed sizes fragment the heap, so the process's memory would creep
up pass after pass (a ResNet50 walk on 1024 images went from 2.4 to 3.8 GiB in two minutes):
:func:`release_freed_host_memory` hands the free pages back (``malloc_trim``) and the walk calls
it after every pass over the calibration set, so a pass reuses its own blocks and the next pass
starts from what is live.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

__all__ = ["keep_freed_host_memory", "release_freed_host_memory"]

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks below this come from the heap (1 GiB: every activation chunk of the walk).
_MMAP_THRESHOLD = 1 << 30
#: Free memory at the top of the heap kept, not trimmed (the most glibc takes: 2 GiB - 1).
_TRIM_THRESHOLD = (1 << 31) - 1

_applied: bool | None = None
_libc: ctypes.CDLL | None = None


def keep_freed_host_memory() -> bool:
    """Make glibc serve large blocks from its heap and keep them when freed (once per process).

    Returns:
        Whether it is in effect (False off Linux/glibc, where nothing is changed).

    Example:
        >>> keep_freed_host_memory() in (True, False)
        True
    """
    global _applied, _libc
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    if _applied:
        _libc = libc
        log.info(
            "host memory: freed blocks up to %d MiB are kept for reuse (mallopt), so forward "
            "passes do not fault in fresh pages; engine.reuse_host_memory=false turns it off",
            _MMAP_THRESHOLD >> 20,
        )
    return _applied


def release_freed_host_memory() -> None:
    """Return the heap's free pages to the system (``malloc_trim``; a no-op off glibc).

    Also without :func:`keep_freed_host_memory`: glibc keeps the free space between live
    blocks of its heap, and a language model's walk, which frees a block's buffers and keeps
    its quantizers, grew by a third that way.

    Example:
        >>> release_freed_host_memory()
    """
    libc = _libc or _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, for ``malloc_trim`` even where :func:`keep_freed_host_memory` was not called."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 (musl has none)
    except (OSError, AttributeError):
        return None
    return libc

"""Resident memory that stays bounded when images of many sizes pass through the process.

glibc's malloc serves a block of at least its *mmap threshold* with a private mapping, given back to the system
as soon as it is freed; smaller blocks come from arenas (one per allocating thread, up to eight per core), whose
freed memory mostly stays resident. The threshold starts at 128 KiB but, unless it is set explicitly, rises to
the size of every mapped block freed, up to 32 MiB. After the first large upload the request bodies, decoded
pixels and resize buffers of every later one (megabytes each) are carved out of the arenas of the event loop, the
decoding threads and ONNX Runtime's threads, and each arena keeps what its largest moment needed: resident memory
climbed by hundreds of MiB under mixed traffic, all of it free to malloc and released by ``malloc_trim``.

Setting the threshold pins it: large buffers are mapped and returned on free, and arenas only hold small
objects, which are reused. 1 MiB keeps the per-request arrays of the model's crop (a few hundred KiB, the same
size every time and so reused) in the arenas, where they cost no system call.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 1 << 20  # bytes
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def glibc() -> ctypes.CDLL | None:
    """The process's C library where it is glibc (whose malloc this is about), else None."""
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def chosen_by_environment() -> bool:
    """Whether the operator set the threshold for glibc themselves, which then wins."""
    return "MALLOC_MMAP_THRESHOLD_" in os.environ or "glibc.malloc.mmap_threshold" in os.environ.get(
        "GLIBC_TUNABLES", ""
    )


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for the whole process; return whether it was set.

    Nothing is changed off glibc, or where the environment already sets the threshold.
    """
    libc = glibc()
    if libc is None or chosen_by_environment():
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if libc.mallopt(_M_MMAP_THRESHOLD, threshold) != 1:
        raise RuntimeError(f"glibc refused an mmap threshold of {threshold} bytes")
    log.debug("malloc: blocks of %d bytes and more are mapped and returned when freed", threshold)
    return True

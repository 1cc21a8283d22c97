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

Pinning it also freezes the *trim threshold*, the free memory at the top of an arena that glibc lets it keep, where
it stands (128 KiB at first; left alone, it rises with the mmap threshold). A large upload arrives in pieces of up
to 256 KiB, each a block under 1 MiB at the arena's top: with the trim threshold that low the arena gave those pages
back after every such request and faulted them in again for the next one (about 400 page faults for a photo of
0.83 MiB). 8 MiB keeps them; a block of 1 MiB or more may then also be carved out of that free top instead of being
mapped, and either way an arena keeps at most 8 MiB free at its top.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 1 << 20  # bytes
TRIM_THRESHOLD = 8 << 20  # bytes
# mallopt's parameter numbers (glibc's malloc.h), and the names under which the environment may set each.
_PARAMETERS = {
    "mmap_threshold": (-3, "MALLOC_MMAP_THRESHOLD_"),
    "trim_threshold": (-1, "MALLOC_TRIM_THRESHOLD_"),
}


def glibc() -> ctypes.CDLL | None:
    """The process's C library where it is glibc (whose malloc this is about), else None."""
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def chosen_by_environment(name: str) -> bool:
    """Whether the operator set glibc's ``name`` (``mmap_threshold`` or ``trim_threshold``) themselves, which then
    wins."""
    variable = _PARAMETERS[name][1]
    return variable in os.environ or f"glibc.malloc.{name}" in os.environ.get("GLIBC_TUNABLES", "")


def pin_thresholds(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> list[str]:
    """Fix glibc's mmap and trim thresholds (bytes) for the whole process; return the names of those set.

    Nothing is changed off glibc; a threshold the environment sets is left alone.
    """
    libc = glibc()
    if libc is None:
        return []
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    pinned = []
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if chosen_by_environment(name):
            continue
        if libc.mallopt(_PARAMETERS[name][0], value) != 1:
            raise RuntimeError(f"glibc refused an {name.replace('_', ' ')} of {value} bytes")
        pinned.append(name)
    log.debug("malloc: %s pinned (mmap threshold %d, trim threshold %d bytes)", pinned, mmap_threshold, trim_threshold)
    return pinned

"""Once the service has started, large blocks are mapped and go back to the system when freed."""

from __future__ import annotations

import ctypes

import pytest
from fastapi.testclient import TestClient

from service.memory import MMAP_THRESHOLD, glibc, pin_mmap_threshold


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``; ``hblks`` counts the blocks malloc holds as their own mappings."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@pytest.fixture
def libc() -> ctypes.CDLL:
    lib = glibc()
    assert lib is not None, "these tests are about glibc's malloc; the service images run on glibc"
    lib.malloc.restype, lib.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    lib.free.restype, lib.free.argtypes = None, [ctypes.c_void_p]
    lib.mallinfo2.restype = MallInfo2
    return lib


def test_a_large_block_is_mapped_even_after_a_larger_one_was_freed(client: TestClient, libc: ctypes.CDLL) -> None:
    # Left to itself, glibc raises its threshold to the size of a mapped block freed (here 16 MiB), and later
    # blocks up to that size stay resident in the arenas; the started service pins it.
    libc.free(libc.malloc(16 << 20))
    before = libc.mallinfo2().hblks
    block = libc.malloc(2 * MMAP_THRESHOLD)
    try:
        assert libc.mallinfo2().hblks == before + 1
    finally:
        libc.free(block)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MALLOC_MMAP_THRESHOLD_", "65536"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")],
)
def test_a_threshold_chosen_in_the_environment_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert pin_mmap_threshold() is False

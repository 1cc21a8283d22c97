"""Once the service has started, large blocks are mapped and go back to the system when freed, and the small ones
of a large request stay in the arena for the next one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.memory import MMAP_THRESHOLD, TRIM_THRESHOLD, glibc, pin_thresholds

# Run in a fresh interpreter: in a process whose heap many tests have fragmented, a large request can be served
# from a free chunk already in an arena, and no threshold decides anything.
PROBE = """
import ctypes, json, sys, time


class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2; hblks counts the blocks held as their own mappings
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in names.split()]


libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] != "-":
    from fastapi.testclient import TestClient
    from service.app import create_app
    from service.settings import Settings
    client = TestClient(create_app(Settings(model_path=sys.argv[1]))).__enter__()
    while client.get("/readyz").status_code != 200:
        time.sleep(0.05)
libc.free(libc.malloc(16 << 20))  # left to itself, glibc now raises its threshold to 16 MiB
libc.malloc_trim(0)  # an arena with no free room at its top, which would otherwise serve the next block
before = libc.mallinfo2().hblks
block = libc.malloc(2 << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
# The pieces of a large body: blocks under the mmap threshold at the arena's top, all freed once it is answered.
pieces = [libc.malloc(256 << 10) for _ in range(24)]
held = libc.mallinfo2().arena
for piece in reversed(pieces):
    libc.free(piece)
print(json.dumps({"mapped": mapped, "released": held - libc.mallinfo2().arena}))
"""


def _probe(model: str, **env: str) -> dict[str, int]:
    """In a fresh process (with the service started unless ``model`` is ``-``): how many new mappings a 2 MiB block
    made after a 16 MiB one was freed, and how many bytes the arena gave back when 6 MiB of 256 KiB blocks at its top
    were freed."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, model], capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, **env},
    )  # fmt: skip
    return json.loads(done.stdout.splitlines()[-1])


def test_a_large_block_is_mapped_even_after_a_larger_one_was_freed(model_path: Path) -> None:
    assert glibc() is not None, "this is about glibc's malloc; the service images run on glibc"
    assert MMAP_THRESHOLD < 2 << 20
    assert _probe("-")["mapped"] == 0  # without the service, the 2 MiB block comes from the arena and stays resident
    assert _probe(str(model_path))["mapped"] == 1  # once the service has started, it is mapped and returned when freed


def test_the_pieces_of_a_large_request_stay_in_the_arena_for_the_next_one(model_path: Path) -> None:
    assert 6 << 20 < TRIM_THRESHOLD
    assert _probe(str(model_path))["released"] == 0  # pinned: kept at the arena's top, no page faults next time
    # Set by the operator, the threshold is theirs: at 128 KiB (glibc's start) the arena gives the pages back.
    assert _probe(str(model_path), MALLOC_TRIM_THRESHOLD_=str(128 << 10))["released"] >= 5 << 20


@pytest.mark.parametrize(
    ("variable", "value", "pinned"),
    [
        ("MALLOC_MMAP_THRESHOLD_", "65536", ["trim_threshold"]),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536", ["trim_threshold"]),
        ("MALLOC_TRIM_THRESHOLD_", "131072", ["mmap_threshold"]),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072", ["mmap_threshold"]),
    ],
)
def test_a_threshold_chosen_in_the_environment_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, pinned: list[str]
) -> None:
    monkeypatch.setenv(variable, value)
    assert pin_thresholds() == pinned

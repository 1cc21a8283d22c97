"""Once the service has started, large blocks are mapped and go back to the system when freed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.memory import MMAP_THRESHOLD, glibc, pin_mmap_threshold

# Run in a fresh interpreter: in a process whose heap many tests have fragmented, a large request can be served
# from a free chunk already in an arena, and no threshold decides anything.
PROBE = """
import ctypes, sys, time


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
before = libc.mallinfo2().hblks
block = libc.malloc(2 << 20)
print(libc.mallinfo2().hblks - before)
"""


def _mapped(model: str) -> int:
    """How many new mappings a 2 MiB block made after a 16 MiB one was freed, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", PROBE, model], capture_output=True, text=True, timeout=120, check=True)
    return int(done.stdout.split()[-1])


def test_a_large_block_is_mapped_even_after_a_larger_one_was_freed(model_path: Path) -> None:
    assert glibc() is not None, "this is about glibc's malloc; the service images run on glibc"
    assert MMAP_THRESHOLD < 2 << 20
    assert _mapped("-") == 0  # without the service, the 2 MiB block comes from the arena and stays resident
    assert _mapped(str(model_path)) == 1  # once the service has started, it is mapped and returned when freed


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MALLOC_MMAP_THRESHOLD_", "65536"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")],
)
def test_a_threshold_chosen_in_the_environment_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert pin_mmap_threshold() is False

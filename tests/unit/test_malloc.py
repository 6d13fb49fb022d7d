"""glibc's malloc settings of ``docxy serve``: megabyte buffers come from the heap."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# A fresh interpreter counts the mmapped regions (mallinfo2's hblks) a 2 MiB buffer adds.
PROBE = textwrap.dedent(
    """
    import ctypes, sys

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "tuned":
        from docxy.heap import tune_malloc
        assert tune_malloc()
    before = libc.mallinfo2().hblks
    buffer = bytearray(2 * 1024 * 1024)
    print(libc.mallinfo2().hblks - before)
    """
)


def mapped_regions(mode: str, env: dict[str, str] | None = None) -> int:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_megabyte_buffers_come_from_the_heap_not_a_fresh_mapping_each() -> None:
    assert mapped_regions("default") == 1  # glibc's own threshold starts at 128 KiB
    assert mapped_regions("tuned") == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_the_environment_wins_over_the_built_in_thresholds() -> None:
    assert mapped_regions("tuned", {"MALLOC_MMAP_THRESHOLD_": str(1024 * 1024)}) == 1

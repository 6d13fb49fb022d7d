"""What a part needs from the machine: a binary on PATH, root, a static busybox.

Each check returns what was found or raises `lab.Unavailable` naming what is missing.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

from lab import Unavailable


def binary(name: str) -> str:
    """The path of `name` on PATH."""
    path = shutil.which(name)
    if path is None:
        raise Unavailable(f"{name} not found on PATH")
    return path


def root(reason: str) -> None:
    """Nothing, when running as root; `reason` says what root is needed for."""
    if os.geteuid() != 0:
        raise Unavailable(reason)


def _is_static_elf(path: Path) -> bool:
    with path.open("rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit only
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    pt_interp = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


def static_busybox(path: Path) -> Path:
    """`path`, if it is a statically linked busybox (the payload of the test images)."""
    if not path.is_file() or not _is_static_elf(path):
        raise Unavailable(
            f"{path} is not a static busybox: install the Debian package busybox-static"
        )
    return path

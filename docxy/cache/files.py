"""Crash-safe small-file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: Path, data: bytes, tmp_dir: Path, *, sync: bool = True) -> None:
    """Write ``data`` to a temp file in ``tmp_dir`` (same file system), fsync, rename it."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{secrets.token_hex(6)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


def clear_dir(directory: Path) -> int:
    """Remove the files directly in ``directory`` (creating it if needed); returns how many."""
    directory.mkdir(parents=True, exist_ok=True)
    removed = 0
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False) or entry.is_symlink():
            unlink_quietly(Path(entry.path))
            removed += 1
    return removed


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

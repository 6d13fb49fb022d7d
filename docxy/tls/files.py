"""Files written atomically, with the standard library only (the idle renewer imports this
without loading cryptography)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_files_atomic(files: list[tuple[Path, bytes, int]]) -> None:
    """Write each (path, data, mode) beside its target, then rename them all in a row.

    Readers see old or new files, never half-written ones; staging every file before the first
    rename keeps the moment where a new certificate sits beside an old key as short as possible.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, data, mode in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            staged.append((tmp, path))
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)

"""Progress of long CLI work (``docxy warm``): a live bar on a terminal, plain lines elsewhere.

On a terminal the bar is drawn by ``rich``; in a log or a pipe there are no control codes,
just a line per update at most once a second, and the last one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from docxy.cli.cache import human_size

TTY_INTERVAL = 0.1
PLAIN_INTERVAL = 1.0


def progress_line(label: str, done: int, total: int | None, width: int = 24) -> str:
    """``sha256:0123456789ab [#####.....] 1.0 MiB / 2.0 MiB  50%``; no bar without a total."""
    if not total:
        return f"{label}  {human_size(done)}"
    percent = min(100, done * 100 // total)
    filled = min(width, done * width // total)
    bar = "#" * filled + "." * (width - filled)
    return f"{label} [{bar}] {human_size(done)} / {human_size(total)} {percent:3d}%"


class TransferProgress:
    """One download's progress on ``stream``; use as a context manager so a bar always stops."""

    def __init__(
        self,
        stream: TextIO,
        label: str,
        total: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.label = label
        self.total = total
        self.tty = stream.isatty()
        self._clock = clock
        self._interval = TTY_INTERVAL if self.tty else PLAIN_INTERVAL
        self._last = clock()
        self._shown = -1
        self._bar: Progress | None = None
        self._task = TaskID(0)
        if self.tty:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TextColumn("{task.fields[note]}"),
                console=Console(file=stream),
                auto_refresh=False,  # redrawn from update(): no thread of its own
            )
            self._task = self._bar.add_task(label, total=total, note="")
            self._bar.start()

    def update(self, done: int) -> None:
        now = self._clock()
        if now - self._last < self._interval or done == self._shown:
            return
        self._last, self._shown = now, done
        if not self.tty:
            self._line(progress_line(self.label, done, self.total))
        elif self._bar is not None:
            self._bar.update(self._task, completed=done, refresh=True)

    def finish(self, done: int, note: str = "") -> None:
        self._shown = done
        if not self.tty:
            self._line(progress_line(self.label, done, self.total) + (f"  {note}" if note else ""))
        elif self._bar is not None:
            self._bar.update(self._task, completed=done, note=note, refresh=True)
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def __enter__(self) -> TransferProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

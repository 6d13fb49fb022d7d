"""A CDN that can be held mid-blob: the moment "the upstream is halfway through" made to last.

`held_cdn(hold_after)` makes every blob GET the CDN serves send its headers and the first
`hold_after` bytes of the body, then wait until the test calls `gate.release()` (the rest
follows) or `gate.cut()` (the body ends there, short of its Content-Length). Blobs no larger
than `hold_after` pass untouched. It combines with `bed.faults` (a `corrupt` or `cut` fault
still applies to the bytes that follow). Waiting is bounded by `timeout`: a forgotten gate opens
by itself rather than hanging the bed.

The CDN reads blob files through `lab.bed.front._file_chunks`; the context manager swaps that
function for the duration and puts it back afterwards, so `front.py` needs no hook of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from lab.bed import front


class CdnGate:
    """Where held blob bodies wait; counts the bodies that reached the hold."""

    def __init__(self, hold_after: int, timeout: float) -> None:
        self.hold_after = hold_after
        self.timeout = timeout
        self._opened = threading.Event()
        self._cut = False
        self._lock = threading.Lock()
        self._held = 0

    @property
    def held(self) -> int:
        """How many blob bodies have reached the hold so far."""
        with self._lock:
            return self._held

    def release(self) -> None:
        """Let every held body (and every later one) run to its end."""
        self._opened.set()

    def cut(self) -> None:
        """End every held body (and every later one) at the hold: a short body."""
        self._cut = True
        self._opened.set()

    def chunks(self, handle: BinaryIO, remaining: int) -> Iterator[bytes]:
        pieces = _original_file_chunks(handle, remaining)
        if remaining <= self.hold_after:
            yield from pieces
            return
        sent = 0
        for chunk in pieces:
            if sent < self.hold_after <= sent + len(chunk):
                head, chunk = chunk[: self.hold_after - sent], chunk[self.hold_after - sent :]
                if head:
                    yield head
                    sent += len(head)
                self._hold()
                if self._cut:
                    return
            if chunk:
                yield chunk
                sent += len(chunk)

    def _hold(self) -> None:
        with self._lock:
            self._held += 1
        self._opened.wait(self.timeout)


_original_file_chunks = front._file_chunks


@contextmanager
def held_cdn(hold_after: int, timeout: float = 60.0) -> Iterator[CdnGate]:
    """Hold every CDN blob body after `hold_after` bytes until the gate opens (see module doc)."""
    gate = CdnGate(hold_after, timeout)
    front._file_chunks = gate.chunks
    try:
        yield gate
    finally:
        front._file_chunks = _original_file_chunks
        gate.release()

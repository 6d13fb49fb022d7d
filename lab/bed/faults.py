"""Fault injection for the bed's front and CDN.

A test adds a `Fault` to `bed.faults`; the next matching request(s) at that site misbehave:

    status   answer `status` (e.g. 429 with Retry-After, 500) instead of the real response
    cut      send the real headers, `after_bytes` of the body, then drop the connection
    corrupt  send the right length, but flip the byte at offset `after_bytes`
    length   declare Content-Length off by `length_delta` (short: body truncated to match;
             long: all bytes, then the connection is dropped)

`times` is how many requests a fault applies to (None: all, until `clear()`). Stopping a whole
server is `bed.front.stop()` / `bed.front.start()` (same port).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

FaultSite = Literal["front", "cdn"]
FaultKind = Literal["status", "cut", "corrupt", "length"]


@dataclass
class Fault:
    site: FaultSite
    kind: FaultKind
    path_contains: str = ""
    method: str | None = "GET"
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    after_bytes: int = 0
    length_delta: int = 0
    times: int | None = 1

    def matches(self, site: str, method: str, path: str) -> bool:
        return (
            self.site == site
            and (self.method is None or self.method == method)
            and self.path_contains in path
        )


class Faults:
    """The faults waiting to happen; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.fired: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.fired.clear()

    def take(self, site: str, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if not fault.matches(site, method, path):
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                self.fired.append(fault)
                return fault
        return None


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


class ConnectionCut(Exception):
    """Raised after a deliberately broken body; the handler must drop the connection."""


def declared_length(length: int, fault: Fault | None) -> int:
    if fault is not None and fault.kind == "length":
        return max(0, length + fault.length_delta)
    return length


def write_body(out: Writable, chunks: Iterable[bytes], length: int, fault: Fault | None) -> None:
    """Copy `chunks` (`length` bytes in all) to `out`, misbehaving as `fault` says."""
    kind = fault.kind if fault is not None else None
    limit = length
    if fault is not None and kind == "cut":
        limit = min(length, fault.after_bytes)
    elif kind == "length":
        limit = min(length, declared_length(length, fault))
    sent = 0
    for chunk in _corrupted(chunks, fault) if kind == "corrupt" else chunks:
        piece = chunk[: max(0, limit - sent)]
        if piece:
            out.write(piece)
            sent += len(piece)
        if sent >= limit:
            break
    out.flush()
    if kind == "cut" or (kind == "length" and fault is not None and fault.length_delta > 0):
        raise ConnectionCut()


def _corrupted(chunks: Iterable[bytes], fault: Fault | None) -> Iterator[bytes]:
    offset = fault.after_bytes if fault is not None else 0
    position = 0
    for chunk in chunks:
        if position <= offset < position + len(chunk):
            index = offset - position
            chunk = chunk[:index] + bytes([chunk[index] ^ 0xFF]) + chunk[index + 1 :]
        position += len(chunk)
        yield chunk

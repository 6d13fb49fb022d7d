"""The one fake upstream of the unit tests: an ``httpx.MockTransport`` handler that records.

``reply()`` builds a response as the network delivers it (a stream not yet read, so the
mirror's streaming and closing are exercised); ``Body`` counts the chunks read and whether the
mirror closed it; ``FakeUpstream`` wraps any handler and keeps every request and body.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from docxy.cache.fill import write_all as real_write_all

Handler = Callable[[httpx.Request], httpx.Response]


class Body(httpx.AsyncByteStream):
    """An upstream body in chunks that remembers how much the mirror read and if it closed it."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks
        self.read = 0
        self.closed = False

    @classmethod
    def of(cls, data: bytes, chunk: int = 65536) -> Body:
        """``data`` in ``chunk``-sized pieces, as a socket would deliver a large body."""
        return cls(*(data[start : start + chunk] for start in range(0, len(data), chunk)))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


def reply(
    status: int = 200,
    body: bytes | Body = b"",
    headers: Iterable[tuple[str, str]] | dict[str, str] = (),
    *,
    length: bool = False,
) -> httpx.Response:
    """A response not yet read; ``length`` adds the body's ``Content-Length``."""
    stream = body if isinstance(body, Body) else Body.of(body) if body else Body()
    items = list(dict(headers).items()) if isinstance(headers, dict) else list(headers)
    if length:
        items.append(("Content-Length", str(sum(len(chunk) for chunk in stream.chunks))))
    return httpx.Response(status, headers=items, stream=stream)


@dataclass
class FakeUpstream:
    """Calls ``handler`` for each request and records the request and the response body."""

    handler: Handler
    requests: list[httpx.Request] = field(default_factory=list)
    bodies: list[Body] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.handler(request)
        if isinstance(response.stream, Body):
            self.bodies.append(response.stream)
            return response
        body = Body(response.content) if response.content else Body()
        self.bodies.append(body)
        return httpx.Response(response.status_code, headers=response.headers, stream=body)

    @property
    def urls(self) -> list[str]:
        return [str(request.url) for request in self.requests]


class DiskFullAfter:
    """A ``write_all`` for ``docxy.cache.fill`` that writes ``limit`` bytes (whole calls), then
    fails with ``error``; ``written`` is what it wrote."""

    def __init__(self, limit: int, error: int = errno.ENOSPC) -> None:
        self.limit, self.error, self.written = limit, error, 0

    def __call__(self, fd: int, chunks: list[bytes]) -> None:
        size = sum(len(chunk) for chunk in chunks)
        if self.written + size > self.limit:
            raise OSError(self.error, os.strerror(self.error))
        real_write_all(fd, chunks)
        self.written += size


def utime_read_only(monkeypatch: pytest.MonkeyPatch, under: Path) -> None:
    """``os.utime`` fails with EROFS for files below ``under``, as on a cache disk the kernel
    remounted read-only (ext4 ``errors=remount-ro``); elsewhere it works."""
    real_utime = os.utime

    def read_only(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).is_relative_to(under):
            raise OSError(errno.EROFS, "Read-only file system")
        real_utime(path, *args, **kwargs)

    monkeypatch.setattr(os, "utime", read_only)

"""A small HTTP/1.1 registry of asyncio streams on loopback, for the tests that run a real httpx
connection pool against it (keep-alive, a body cut short or stalled, a slow ``GET /v2/``).

Each test module serves it on its own loopback address and ports (:func:`serving`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from docxy.upstream.client import Upstream

#: ``GET /v2/``'s plain ``200`` (the Basic login accepted there).
V2_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


def raw_answer(status: bytes, body: bytes, *headers: bytes, length: int | None = None) -> bytes:
    """A whole HTTP/1.1 response: ``status`` (``b"401 Unauthorized"``), ``headers``, a
    ``Content-Length`` of ``length`` if given (else the body's), and ``body``."""
    size = len(body) if length is None else length
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"Content-Length: "
        + str(size).encode()
        + b"\r\n\r\n"
        + body
    )


def unauthorized(body: bytes, *headers: bytes, length: int | None = None) -> bytes:
    """A Basic ``401`` with ``body`` (and a ``Content-Length`` of ``length``, if given)."""
    basic = (b"Content-Type: application/json", b'WWW-Authenticate: Basic realm="lab"')
    return raw_answer(b"401 Unauthorized", body, *basic, *headers, length=length)


@dataclass
class H1Registry:
    """An HTTP/1.1 registry (keep-alive): ``GET /v2/`` answers ``v2_answer`` after
    ``v2_delay`` seconds; any other path gets ``answer``'s bytes (a whole response, maybe cut
    short), then, if ``stall``, the connection is held ``stall`` seconds (bounded) and closed.
    ``served`` counts the requests per kind."""

    answer: bytes
    v2_answer: bytes = V2_OK
    v2_delay: float = 0.0
    stall: float = 0.0
    served: dict[str, int] = field(default_factory=lambda: {"v2": 0, "repo": 0})
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        try:
            for _ in range(100):  # requests on one connection, bounded
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b"\r\n", 1)[0].split()[1]
                if path == b"/v2/":
                    self.served["v2"] += 1
                    if self.v2_delay:
                        await asyncio.sleep(self.v2_delay)
                    writer.write(self.v2_answer)
                    await writer.drain()
                    continue
                self.served["repo"] += 1
                writer.write(self.answer)
                await writer.drain()
                if self.stall:
                    await asyncio.sleep(self.stall)
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client, or the test's end (a task cancelled: no error logged for it)
        finally:
            writer.close()


@asynccontextmanager
async def serving(registry: H1Registry, host: str, ports: range) -> AsyncIterator[Upstream]:
    """``registry`` on ``host``, the first free port of ``ports``: the upstream there with
    the Basic login ``robot:right``. At the end every connection is closed and its handler
    waited for (3 s at the most, then cancelled)."""
    server = None
    for port in ports:
        try:
            server = await asyncio.start_server(registry.handle, host, port)
            break
        except OSError:
            continue
    assert server is not None, f"no free port in {ports.start}-{ports.stop - 1} on {host}"
    try:
        yield Upstream(f"http://{host}:{port}", credentials=("robot", "right"))
    finally:
        server.close()
        for writer in registry.writers:
            writer.close()  # a connection a leaked answer held: its handler reads its end
        if registry.tasks:
            await asyncio.wait(registry.tasks, timeout=3.0)
        for task in registry.tasks:
            task.cancel()
        await server.wait_closed()


def pool(size: int, pool_timeout: float) -> httpx.AsyncClient:
    """An httpx client of ``size`` connections, waiting ``pool_timeout`` for one."""
    timeout = httpx.Timeout(3.0, pool=pool_timeout)
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=size), timeout=timeout)


async def all_connections_free(
    http: httpx.AsyncClient, upstream: Upstream, size: int
) -> list[int | str]:
    """``size`` streamed requests held open together: each gets a connection of the pool if
    none is held by an answer nobody closes (a pool timeout of 0.5 s for the one that does
    not)."""
    url = upstream.url("/v2/")

    async def hold() -> int | str:
        request = http.build_request("GET", url, timeout=httpx.Timeout(3.0, pool=0.5))
        try:
            response = await http.send(request, stream=True)
        except httpx.PoolTimeout:
            return "PoolTimeout"
        try:
            await asyncio.sleep(0.8)  # while the others ask for theirs
            return response.status_code
        finally:
            await response.aclose()

    return list(await asyncio.gather(*(hold() for _ in range(size))))

"""Review findings on the shared tier, each a test that failed before its mend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from docxy.cache.blobs import DiskBlobStore
from docxy.core.digests import Digest
from docxy.shared.objects import Bucket, ObjectStore
from docxy.shared.tier import SharedTier

HOST = "127.0.0.77"
PORTS = range(9370, 9400)  # below 10000, outside the ephemeral range
GUARD = 30.0  # seconds before a would-be hang becomes a test failure


def digest(n: int) -> Digest:
    return Digest("sha256", f"{n:064x}")


async def _held_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A ``200`` whose body starts and then waits (a big object still on its way)."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await reader.read()  # until the client closes
    finally:
        writer.close()


@asynccontextmanager
async def store_sending_slowly() -> AsyncIterator[str]:
    """A store on loopback whose every GET answer takes its time; its URL."""
    for port in PORTS:  # bounded: the first free one
        try:
            server = await asyncio.start_server(_held_body, HOST, port)
        except OSError:
            continue
        async with server:
            yield f"http://{HOST}:{port}"
            server.close()
        return
    raise AssertionError(f"no free port in {PORTS}")


async def test_a_full_pool_of_the_tiers_own_connections_is_not_the_store_in_trouble(
    tmp_path: Path,
) -> None:
    """Every miss is a fill of its own with its own connection to the store: a burst of more
    misses than the client's connections waited for one, then took the PoolTimeout for the
    store failing: ``reachable: false``, an error counted, and every miss sent upstream for
    30 s (in the very burst sharing is for). The miss goes upstream; the store stays trusted."""
    blobs = DiskBlobStore.open(tmp_path / "cache", 1 << 30, write_buffer=0)
    async with store_sending_slowly() as url:
        where = Bucket(url, "docxy-cache", "us-east-1", "docxy", "not-a-secret")
        limits = httpx.Limits(max_connections=1)
        timeout = httpx.Timeout(GUARD, pool=0.2)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
            tier = SharedTier(ObjectStore(where, http), blobs, 1)
            first = await asyncio.wait_for(tier.download(digest(1)), GUARD)
            assert first is not None  # its body holds the one connection
            try:
                assert await asyncio.wait_for(tier.download(digest(2)), GUARD) is None
                assert (tier.reachable, tier.counts.errors, tier.last_error) == (True, 0, None)
            finally:
                await first.close()
            # the connection free again, the next miss asks the store as before
            again = await asyncio.wait_for(tier.download(digest(3)), GUARD)
            assert again is not None
            await again.close()

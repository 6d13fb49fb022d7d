"""The route's side of a cache miss: send upstream bytes to the client and into the cache."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable

from docxy.cache.fill import BlobWriter


async def tee(
    writer: BlobWriter, upstream: AsyncIterable[bytes], expected_size: int | None = None
) -> AsyncGenerator[bytes, None]:
    """Yield ``upstream``'s chunks to the client while ``writer`` caches and verifies them.

    The last chunk is held back until :meth:`BlobWriter.commit` has checked length and digest,
    so on a cut or corrupt upstream the client gets an error (the raised
    :class:`~docxy.cache.errors.VerifyError` must abort its connection), never a complete-looking
    body. With a full disk the writer stops caching but the client keeps getting its bytes.
    Closing this generator early (client gone) aborts the fill.
    """
    async with writer:
        if expected_size is not None:
            writer.announce(expected_size)
        held = b""
        async for chunk in upstream:
            if not chunk:
                continue
            await writer.write(chunk)
            if held:
                yield held
            held = chunk
        await writer.commit(expected_size)
        if held:
            yield held

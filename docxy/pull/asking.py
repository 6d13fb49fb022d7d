"""The upstream questions both pull services ask the same way: a ``HEAD`` with the client's own
credentials (does this repository hold what the cache has, for this client?), and what counts
as the upstream being unable to say."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from docxy.core.errors import UpstreamUnavailable
from docxy.pull.outcome import Pull
from docxy.upstream.client import SERVER_TROUBLE, UpstreamClient


def raise_for_trouble(status: int) -> None:
    """A 429 or 5xx: the upstream cannot say now (never taken for its answer)."""
    if status in SERVER_TROUBLE:
        raise UpstreamUnavailable(f"the upstream answered {status}")


async def head_as_client(
    client: UpstreamClient, pull: Pull, extra: Sequence[tuple[str, str]] = ()
) -> httpx.Response | None:
    """A free upstream ``HEAD`` of the pull's path with the client's own ``Authorization``
    (``extra`` headers beside it), its body closed; None when the client sent none to send
    (or one the mirror issued itself, which stays here). Raises :class:`UpstreamError` when
    the upstream cannot say (down, 429/5xx)."""
    if pull.authorization is None:
        return None
    headers = [*extra, ("Authorization", pull.authorization)]
    answer = await client.send(pull.upstream, "HEAD", pull.upstream.url(pull.path), headers)
    await answer.aclose()
    raise_for_trouble(answer.status_code)
    return answer

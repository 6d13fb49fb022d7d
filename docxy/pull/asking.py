"""The upstream questions both pull services ask the same way: a ``HEAD`` with the client's own
credentials (does this repository hold what the cache has, for this client?), and what counts
as the upstream being unable to say."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from docxy.core.errors import UpstreamUnavailable
from docxy.pull.outcome import Pull
from docxy.upstream.client import SERVER_TROUBLE, UpstreamClient, same_origin


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


def answered_by(answer: httpx.Response, pull: Pull) -> str:
    """The URL whose answer ``answer`` is, redirects followed: the registry's own for the
    refusal :class:`~docxy.upstream.tokens.MirrorTokens` answers in its name (no request)."""
    try:
        return str(answer.request.url)
    except RuntimeError:
        return pull.upstream.url(pull.path)


def refused_by_registry(answer: httpx.Response, pull: Pull) -> bool:
    """A 401 or 403 from the registry itself: its word on the mirror's token. One from where
    it redirected to (a CDN's signed URL expired, a CDN rule) says nothing of the token."""
    return answer.status_code in (401, 403) and same_origin(
        answered_by(answer, pull), pull.upstream.registry
    )

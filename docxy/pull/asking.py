"""The upstream questions both pull services ask the same way: a ``HEAD`` with the client's own
credentials (does this repository hold what the cache has, for this client?), and what counts
as the upstream being unable to say."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from docxy.core.errors import UpstreamError, UpstreamUnavailable
from docxy.core.headers import kept_retry_after
from docxy.pull.outcome import Pull
from docxy.upstream.client import SERVER_TROUBLE, UpstreamClient, same_origin

#: The registry's answers to the mirror's GET of a blob or manifest that are its word on the
#: content asked in that repository (a 404 BLOB_UNKNOWN, MANIFEST_UNKNOWN or NAME_UNKNOWN, a
#: 400 DIGEST_INVALID or TAG_INVALID...), relayed to the clients asking in that repository
#: instead of each sending the same GET again. Not a 401 or 403 (the mirror's token refused:
#: the client's own credentials may read it), a 407, 408 or 429 (no word on the content), nor
#: a 416 (no Range was asked); nor any answer from where the registry redirected to (a CDN).
THE_REGISTRYS_WORD = frozenset(range(400, 500)) - {401, 403, 407, 408, 416, 429}


class UpstreamTrouble(UpstreamUnavailable):
    """The upstream answered a question of the mirror's 429 or 5xx: it cannot say now. A client
    that gets this error hears what a relayed answer would tell it
    (:func:`~docxy.http.responses.relay`): the upstream's status and its ``Retry-After``, so
    that it retries when the upstream asked, not at once on a ``502``."""

    def __init__(self, answer: httpx.Response) -> None:
        status = answer.status_code
        super().__init__(f"the upstream answered {status}", status=status)
        if status == 429:
            self.code = "TOOMANYREQUESTS"
        self.retry_after = kept_retry_after(answer.headers.multi_items())

    def headers(self) -> list[tuple[str, str]]:
        return [*super().headers(), *self.retry_after]


def raise_for_trouble(answer: httpx.Response) -> None:
    """A 429 or 5xx: the upstream cannot say now (never taken for its answer):
    :class:`UpstreamTrouble`."""
    if answer.status_code in SERVER_TROUBLE:
        raise UpstreamTrouble(answer)


async def head_as_client(
    client: UpstreamClient, pull: Pull, extra: Sequence[tuple[str, str]] = ()
) -> httpx.Response | None:
    """A free upstream ``HEAD`` of the pull's path with the client's own ``Authorization``
    (``extra`` headers beside it), its body closed; None when the client sent none to send
    (or one the mirror issued itself, which stays here). Raises :class:`UpstreamError` when
    the upstream cannot say (down, 429/5xx)."""
    if pull.authorization is None:
        return None
    if pull.logins is not None:  # a Basic login: within the failed-login limit
        pull.logins.refuse()
    headers = [*extra, ("Authorization", pull.authorization)]
    try:
        answer = await client.send(pull.upstream, "HEAD", pull.upstream.url(pull.path), headers)
    except UpstreamError:
        raise  # nothing said of the password (down, not asked)
    except BaseException:
        if pull.logins is not None:  # hung up while it was asked: the password may have gone
            pull.logins.charge()
        raise
    await answer.aclose()
    if pull.logins is not None:
        pull.logins.answered(answer.status_code, answer.headers.get_list("www-authenticate"))
    raise_for_trouble(answer)
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

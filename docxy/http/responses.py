"""Registry responses: outcomes, errors and relayed upstream answers become HTTP, in one place.

Every response of the registry API is built here, and :func:`registry_response` is the one
spot that adds ``Docker-Distribution-API-Version``. A relayed upstream answer keeps its status
and filtered headers, with a Bearer challenge re-pointed at the mirror's token endpoint; a
cached blob body that breaks off (a failed fill) raises :class:`StreamCut`, so the client sees
a cut connection, never a short success.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterable

import httpx
from quart import Response
from werkzeug.datastructures import Headers

from docxy.cache.errors import FillAborted
from docxy.cache.files import ClosedFile
from docxy.cache.fill import BlobFollower, FillState
from docxy.cache.reader import BlobReader
from docxy.core.challenge import rewrite_challenges
from docxy.core.digests import Digest
from docxy.core.errors import (
    RangeNotSatisfiable,
    RegistryError,
    StreamCut,
    Unauthorized,
    UpstreamAnswered,
    UpstreamError,
)
from docxy.core.headers import (
    API_VERSION_HEADER,
    DIGEST_HEADER,
    content_length,
    kept_retry_after,
    response_headers,
)
from docxy.core.ranges import content_range
from docxy.pull.outcome import (
    BlobContent,
    ManifestContent,
    Outcome,
    PassThrough,
    Served,
    Source,
)
from docxy.threads import on_loop, running_loop

log = logging.getLogger(__name__)

Body = bytes | AsyncIterator[bytes]


def registry_response(
    body: Body, status: int, headers: Iterable[tuple[str, str]], *, streamed: bool = False
) -> Response:
    """The one constructor of registry API responses (adds the API version header).

    ``streamed`` bodies have no time limit: a large blob takes as long as it takes.
    """
    response = Response(body, status=status, headers=Headers([*headers, API_VERSION_HEADER]))
    if streamed:
        response.timeout = None
    return response


async def empty_body() -> AsyncIterator[bytes]:
    """A body of no bytes that leaves ``Content-Length`` alone (Quart rewrites it for ``b""``)."""
    return
    yield b""  # pragma: no cover - makes this an async generator


def error_response(error: RegistryError) -> Response:
    """``{"errors": [{"code", "message", "detail"}]}`` with the error's status and headers."""
    return registry_response(error.encoded(), error.status, error.headers())


def unauthorized(*challenges: str) -> Response:
    """The ``/v2/`` answer that starts a client's token dance: one header a challenge."""
    first = challenges[0] if challenges else None
    response = error_response(Unauthorized("authentication required", first))
    for challenge in challenges[1:]:
        response.headers.add("WWW-Authenticate", challenge)
    return response


def etag_of(digest: Digest) -> str:
    """The strong ETag of a manifest or blob: its digest, quoted (content-addressed)."""
    return f'"{digest}"'


def served_response(served: Served) -> Response:
    if isinstance(served.content, BlobContent):
        return _blob(served.content)
    return _manifest(served.content)


#: The mirror's name in ``Cache-Status`` (RFC 9211), the member ``docxy warm`` reads.
CACHE_NAME = "Docxy"
#: ``Cache-Status`` parameters for each source of a served answer: from the cache as it was
#: (``hit``); forwarded because it was not there (``fwd=miss``, ``collapsed`` when it joined
#: another request's fetch, ``detail=shared`` from the shared bucket); or from the cache after
#: going upstream (``fwd=stale``: confirmed there, or served as the upstream failed).
_SOURCE_STATUS = {
    Source.HIT: "hit",
    Source.MISS: "fwd=miss",
    Source.JOINED: "fwd=miss; collapsed",
    Source.SHARED: "fwd=miss; detail=shared",
    Source.REVALIDATED: "fwd=stale; detail=revalidated",
    Source.STALE: "fwd=stale; detail=stale-if-error",
}


#: The parameter of a blob served from its fill's verified temp file, its commit still running
#: (:attr:`~docxy.pull.outcome.Served.committing`): not kept yet.
COMMITTING = "committing"


def cache_status(outcome: Outcome) -> str:
    """The mirror's ``Cache-Status`` member (RFC 9211) for ``outcome``: what the cache did,
    the access log's ``cache=``; a pass-through is ``fwd=bypass`` with its reason as the
    ``detail`` (``private``, ``cache-full``, ...: :class:`~docxy.pull.outcome.Reason`), and a
    manifest fetched but not kept ``stored=?0`` with why (``cache-unwritable``, ``evicted``), and
    a blob whose commit still runs ``committing``. The registry's answer to the mirror's own
    request relayed (its 404 of a mistyped tag: :class:`~docxy.core.errors.UpstreamAnswered`)
    is ``fwd=miss`` with the upstream's status as ``fwd-status``, and ``collapsed`` when that
    request was another client's, which this one waited for (:attr:`PassThrough.joined`)."""
    if isinstance(outcome, PassThrough) and isinstance(outcome.failed, UpstreamAnswered):
        # the registry's word on it, relayed from the mirror's own request on a miss
        said = f"{CACHE_NAME}; fwd=miss; fwd-status={outcome.failed.status}"
        collapsed = "; collapsed" if outcome.joined else ""
        return f"{said}{collapsed}; detail={outcome.reason.value}"
    if isinstance(outcome, PassThrough):
        return f"{CACHE_NAME}; fwd=bypass; detail={outcome.reason.value}"
    said = f"{CACHE_NAME}; {_SOURCE_STATUS[outcome.source]}"
    if outcome.not_kept is not None:
        return f"{said}; stored=?0; detail={outcome.not_kept.value}"
    if outcome.committing:
        return f"{said}; {COMMITTING}"
    return said


def with_cache_status(response: Response, outcome: Outcome) -> Response:
    """``response`` with the mirror's ``Cache-Status`` member last, after any the upstream's
    answer (relayed) brought from caches before it, as RFC 9211 orders them."""
    before = ", ".join(response.headers.getlist("Cache-Status"))
    ours = cache_status(outcome)
    response.headers["Cache-Status"] = f"{before}, {ours}" if before else ours
    return response


def _manifest(content: ManifestContent) -> Response:
    headers = [
        ("Content-Type", content.media_type),
        (DIGEST_HEADER, str(content.digest)),
        ("ETag", etag_of(content.digest)),
        ("Content-Length", str(content.length)),
    ]
    body = content.body if content.body is not None else empty_body()
    return registry_response(body, 200, headers)


def _blob(content: BlobContent) -> Response:
    headers = [
        ("Content-Type", "application/octet-stream"),
        (DIGEST_HEADER, str(content.digest)),
        ("ETag", etag_of(content.digest)),
        ("Accept-Ranges", "bytes"),
        ("Cache-Control", "max-age=31536000"),
    ]
    status, length = 200, content.size
    if content.span is not None and content.size is not None:
        start, stop = content.span
        status, length = 206, stop - start
        headers.append(("Content-Range", content_range(start, stop, content.size)))
    if length is not None:
        headers.append(("Content-Length", str(length)))
    body = empty_body() if content.stream is None else _cut_on_abort(content.stream)
    return registry_response(body, status, headers, streamed=True)


async def _cut_on_abort(stream: BlobReader | BlobFollower) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except FillAborted as exc:
        # A fill that ended without its blob said why in its own line, once for all its
        # clients; each client's access line ends in ``cut``. Only a cut of this client's
        # own (its temp file shrank under it) is news here.
        told = isinstance(stream, BlobFollower) and stream.fill.state is FillState.ABORTED
        log.log(logging.DEBUG if told else logging.WARNING, "cutting the client: %s", exc)
        raise StreamCut(str(exc)) from None
    except ClosedFile:
        raise  # closed under the read (the reader's end, not the file's): as before
    except OSError as exc:
        # A read of the file failed (EIO, a file cut short): the client is cut, as for a
        # failed fill, not left to an exception out of the app (a traceback per client). A
        # cached blob's failure was said by the store (dropped, fetched again next time). A
        # follower with a ``rest`` does not get here: it goes on from the upstream instead.
        if isinstance(stream, BlobReader):
            said, level = f"cannot read the cached blob: {exc}", logging.DEBUG
        else:
            said, level = f"cannot read {stream.digest}'s temp file: {exc}", logging.WARNING
        log.log(level, "cutting the client: %s", said)
        raise StreamCut(said) from None
    finally:
        stream.close()


async def _relayed(
    upstream: httpx.Response, done: Callable[[], None], digest: Digest | None = None
) -> AsyncIterator[bytes]:
    """The upstream's body as it comes; with a ``digest``, its last byte is held back until
    the whole hashes to it: bytes that do not (wrong, short, long or none, whatever length the
    upstream said) cut the client before its last byte (:class:`StreamCut`), so it sees a
    short read, never a whole ``200`` of another blob (as a fill's clients are cut). Only a
    byte is held: the rest streams as it comes (a slow upstream's first read reaches the
    client before its next). Reads before the length the upstream announced are passed on
    whole, and only the one that reaches it is split: holding back each read's last byte
    cost a second ``send`` and a copy of every read. Without a length (chunked), the byte
    held goes out with the next read, one ``send`` each."""
    hasher = None if digest is None else digest.hasher()
    announced = content_length(upstream.headers.get("content-length"))
    passed = 0  # bytes yielded
    held = b""
    try:
        async for chunk in upstream.aiter_raw():
            if hasher is None:
                yield chunk
                continue
            if not chunk:
                continue
            hasher.update(chunk)
            out = held + chunk if held else chunk
            if announced is not None and passed + len(out) < announced:
                held = b""  # not the last: whole
            else:
                held, out = out[-1:], out[:-1]
            if out:
                passed += len(out)
                yield out
        if hasher is not None and digest is not None:
            if hasher.hexdigest() != digest.hex:
                said = f"the upstream's body is not {digest}: not relayed to its end"
                log.warning("cutting the client: %s", said)
                raise StreamCut(said)
            if held:
                yield held
    except httpx.HTTPError as exc:
        # The upstream broke the body off: the client's is cut (``cut`` in the access log),
        # not an error escaping the app (a traceback from the server for each one).
        log.info("relayed body cut: the upstream's broke off (%s)", type(exc).__name__)
        raise StreamCut(f"the upstream's body broke off ({type(exc).__name__})") from None
    finally:
        try:
            await upstream.aclose()
        finally:
            done()


async def _closed(upstream: httpx.Response, done: Callable[[], None]) -> AsyncIterator[bytes]:
    try:
        await upstream.aclose()
    finally:
        done()
    return
    yield b""  # pragma: no cover - makes this an async generator


def _nothing() -> None:
    pass


def _trouble_page(upstream: httpx.Response) -> bool:
    """A server error whose body is no registry error (not JSON). A HEAD's too: it gets the
    header fields the GET would (RFC 9110 §9.3.2), the mirror's error's type and length."""
    media = upstream.headers.get("content-type", "").split(";")[0].strip().lower()
    is_json = media == "application/json" or media.endswith("+json")
    return upstream.status_code >= 500 and not is_json


def _unsatisfiable(upstream: httpx.Response, method: str) -> bool:
    """A ``416`` to a ``GET``: its body says nothing a client reads (the status and
    ``Content-Range`` say it all), and Distribution's (the registry's own server) announces
    the whole blob's length over a short text, then closes: relayed, a cut connection."""
    return upstream.status_code == 416 and method != "HEAD"


async def _replaced(
    upstream: httpx.Response, done: Callable[[], None], content: bytes
) -> AsyncIterator[bytes]:
    """``content`` in place of the upstream's body, which is closed unread."""
    try:
        await upstream.aclose()
    finally:
        done()
    yield content


def relay(
    upstream: httpx.Response,
    *,
    method: str,
    realm: str,
    library_prefix: bool,
    prefix: str | None = None,
    release: Callable[[], None] | None = None,
    digest: Digest | None = None,
) -> Response:
    """A streaming response mirroring ``upstream``.

    ``Content-Length`` is the upstream's, also for HEAD (an empty generator body keeps Quart
    from rewriting it to 0). A Bearer challenge is re-pointed at the mirror's token endpoint,
    its scopes named as the client names the repository (``prefix``, if it used one).
    ``release`` (a fill permit's: it must be idempotent) is called once the body is done, or
    when it is dropped unstarted (the client left before its first byte: Quart closes only a
    body it began to send). A body given a ``digest`` (a whole blob's) is hashed as it goes
    out and its last chunk held back until it verifies (:func:`_relayed`).
    """
    headers = response_headers(upstream.headers.multi_items(), head=method == "HEAD")
    offered = upstream.headers.get_list("www-authenticate")
    for challenge in rewrite_challenges(offered, realm, library_prefix, prefix=prefix):
        headers.append(("WWW-Authenticate", challenge))
    done = release or _nothing
    unsatisfiable = _unsatisfiable(upstream, method)
    replaced = _trouble_page(upstream) or unsatisfiable
    if unsatisfiable:
        # The mirror's own 416 (a whole answer, as for a cached blob), the upstream's range.
        unmet = RangeNotSatisfiable("the upstream could not satisfy the range")
        content = unmet.encoded()
        headers = [*unmet.headers(), ("Content-Length", str(len(content)))]
        headers += [("Content-Range", v) for v in upstream.headers.get_list("content-range")]
        body = _replaced(upstream, done, content)
    elif replaced:
        # A proxy's or CDN's own page (HTML) in front of a failing registry: clients parse the
        # registry's JSON errors (docker: "invalid character '<'"). The mirror's own instead.
        error = UpstreamError(
            f"the upstream answered {upstream.status_code}", status=upstream.status_code
        )
        content = error.encoded()
        headers = [*error.headers(), ("Content-Length", str(len(content)))]
        headers += kept_retry_after(upstream.headers.multi_items())
        body = _closed(upstream, done) if method == "HEAD" else _replaced(upstream, done, content)
    elif method == "HEAD":
        body = _closed(upstream, done)
    else:
        body = _relayed(upstream, done, digest)
    if release is not None:
        # Back on this loop, whatever thread the garbage collector drops the body in: a
        # permit's release counts and wakes a waiter's future, which only the loop may touch.
        weakref.finalize(body, on_loop, running_loop(), release)
    response = registry_response(body, upstream.status_code, headers, streamed=True)
    if not replaced and "content-type" not in upstream.headers:
        del response.headers["Content-Type"]  # Quart's default text/html would be a lie
    return response

"""What the pull path did with a request: a small value the HTTP layer turns into a response.

The blob and manifest services never build responses. They answer with an outcome::

    Outcome
    ├── Served          the mirror answers itself, from its cache (source: hit, miss, ...)
    │   └── content     BlobContent (a stream or a HEAD) or ManifestContent (bytes or a HEAD)
    └── PassThrough     the request goes upstream with the client's credentials, and why

``docxy.http.responses`` renders them; the route records them (access log, health) in one place.
A ``PassThrough`` always names its reason, the question an operator asks first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from docxy.cache.fill import BlobFollower
from docxy.cache.reader import BlobReader
from docxy.cache.visibility import ANONYMOUS, Identity
from docxy.core.digests import Digest
from docxy.core.errors import (
    HopTimeout,
    TokenServiceTimeout,
    UpstreamAnswered,
    UpstreamError,
    UpstreamTimeout,
)
from docxy.core.names import Reference
from docxy.upstream.client import Upstream


class Source(enum.Enum):
    """Where the bytes of a served answer came from (the access log's ``cache=``)."""

    HIT = "hit"  # the cache, without asking upstream
    MISS = "miss"  # fetched upstream just now, through the cache
    #: the blob fill (upstream or bucket), manifest GET or the mirror's manifest HEAD another
    #: request started: no fetch of its own
    JOINED = "joined"
    SHARED = "shared"  # fetched from the shared bucket ([shared]) just now, through the cache
    REVALIDATED = "revalidated"  # the cache, after an upstream HEAD said it is current
    STALE = "stale"  # the cache, because the upstream failed (stale-if-error)


class Reason(enum.Enum):
    """Why a request was passed through uncached."""

    NO_CACHE = "bypass"  # the cache is disabled
    NOT_CACHEABLE = "not-cacheable"  # a request the cache does not answer (a Range on a miss)
    PRIVATE = "private"  # the mirror's own token may not read it: the client's may
    UPSTREAM_ANSWER = "upstream-answer"  # not found, schema 1...: the client gets it verbatim
    UPSTREAM_FAILED = "upstream-failed"  # the mirror's fetch failed and nothing is cached
    CACHE_UNWRITABLE = "cache-unwritable"  # disk full or unwritable: misses go uncached
    EVICTED = "evicted"  # a manifest an eviction took out while its files were written
    CACHE_UNREADABLE = "cache-unreadable"  # a cached blob's file cannot be opened (EMFILE, EIO)
    CACHE_FULL = "cache-full"  # no room under cache.max_size (too big, or the rest is in use)
    UNCONFIRMED = "unconfirmed"  # a cached blob the upstream did not confirm in this repository


class LoginLimit(Protocol):
    """The failed-login limit (``docxy.access.logins``) for one client's login, where the
    mirror sends it upstream on the client's behalf: a registry that checks Basic passwords
    itself sees every guess come from the mirror's address."""

    def refuse(self) -> None:
        """Raise ``429`` before the login goes, when the client is out of wrong guesses."""

    def charge(self) -> None:
        """Spend a place: the client hung up while its login was being asked."""

    def answered(self, status: int, challenges: list[str]) -> None:
        """The upstream's answer to the login: a ``401`` offering no Bearer challenge refused
        the password (a token registry answers any Basic login so, right or not)."""


@dataclass(frozen=True, slots=True)
class Pull:
    """One read request on the pull path, as the services see it.

    ``name`` is the repository as the upstream knows it (``library/`` added on Docker Hub);
    ``identity`` is who asks (anonymous until the mirror has users of its own);
    ``authorization`` the client's own ``Authorization`` header, for the upstream checks made on
    its behalf (a blob cached from another repository, confirmed with the client's token);
    ``anonymous_token`` if that is a token the mirror's token endpoint relayed for an
    anonymous pull, expired or not (:meth:`~docxy.upstream.anonymous.AnonymousTokens.anonymous`:
    up to 10 minutes past), or the mirror's own offline or mirror-only token: no credential of
    the client's own.
    """

    upstream: Upstream
    name: str
    reference: Reference
    method: str = "GET"
    accept: tuple[str, ...] = ()
    range: str | None = None
    identity: Identity = ANONYMOUS
    authorization: str | None = field(default=None, repr=False)
    anonymous_token: bool = False
    #: the client sent a Bearer token the mirror does not know, kept back until it can tell
    #: whose it is (``docxy.upstream.issuers.may_go_to``): a pass-through asks then
    untold_token: bool = False
    #: the failed-login limit for the client's own login, where a check sends it upstream
    #: (:func:`~docxy.pull.asking.head_as_client`); None: none (the pure core's tests)
    logins: LoginLimit | None = field(default=None, repr=False, compare=False)

    @property
    def credentialed(self) -> bool:
        """Whether the client's request, passed through, carries a credential of its own for
        the upstream (a login, or a token got with one), which may read what the mirror's own
        token is refused or told does not exist. Not so without ``authorization`` (none sent,
        or one that stays at the mirror: users mode) nor with a token relayed for an anonymous
        pull (a while past its expiry too), nor the mirror's own offline token. A Bearer token
        the mirror does not know (relayed before a restart, or got elsewhere) counts as the
        client's own: wrongly so, it costs one more upstream request; the other way, it would
        fail a private pull. So does one not told yet (:attr:`untold_token`): a pass-through
        may find it the client's own for this upstream."""
        if self.untold_token:
            return True
        return self.authorization is not None and not self.anonymous_token

    @property
    def head(self) -> bool:
        return self.method == "HEAD"

    @property
    def path(self) -> str:
        """The upstream path of this request."""
        return f"/v2/{self.name}/{self.reference.kind.value}/{self.reference.ref}"


@dataclass(frozen=True, slots=True)
class BlobContent:
    """A blob to send: all of it, or ``span`` (start, stop exclusive) of ``size`` bytes.

    ``size`` is None while a fill does not know it (the upstream sent no length); ``stream``
    is None for a HEAD.
    """

    digest: Digest
    size: int | None
    stream: BlobReader | BlobFollower | None
    span: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class ManifestContent:
    """A manifest to send; ``body`` None answers a HEAD (``length`` bytes upstream)."""

    digest: Digest
    media_type: str
    length: int
    body: bytes | None


@dataclass(frozen=True, slots=True)
class Served:
    source: Source
    content: BlobContent | ManifestContent
    #: Fetched through the cache just now, and not kept: why (its disk refused the write, an
    #: eviction took it out meanwhile). None: kept, or not fetched just now.
    not_kept: Reason | None = None
    #: A blob served from its fill's verified temp file while the commit (sync, rename) still
    #: runs: every byte is there, but it is not kept until the commit ends well (one that fails
    #: leaves it uncached). ``Cache-Status`` says ``committing``: ``docxy warm`` asks again.
    committing: bool = False

    @property
    def kept(self) -> bool:
        return self.not_kept is None


@dataclass(frozen=True, slots=True)
class PassThrough:
    reason: Reason
    detail: str = ""
    #: A blob GET that started or joined a fill, which ended in this pass-through (no room,
    #: the fill failed): let in under the fill caps already, its upstream download waits for
    #: a permit rather than be refused (the fill's own may not be given back yet).
    admitted: bool = False
    #: A blob GET that joined another request's fill (free: not counted for its client),
    #: which ended in this pass-through: its upstream download waits for a permit under
    #: ``fills_total`` as an admitted one's does, but is first held to
    #: ``limits.fills_per_client`` as a new fill is. Also a manifest GET that waited for
    #: another request's upstream GET, which failed. Either way, one answered with the
    #: registry's word (``failed``) from that request sent none of its own: ``Cache-Status``
    #: says ``collapsed``.
    joined: bool = False
    #: Not sent upstream after all: the mirror's own request found the registry silent (a
    #: timeout), and the client's would wait as long again; or the registry answered it with
    #: its word on the blob (a 404 BLOB_UNKNOWN), which it would only say again; or it sent
    #: bytes that are not the blob (a ``502``), which it would only send again, as a ``200``.
    #: It is answered with this error (the upstream's status and registry error, for the
    #: second).
    failed: UpstreamError | None = None


def upstream_failed(
    exc: UpstreamError, pull: Pull, detail: str | None = None, *, joined: bool = False
) -> PassThrough:
    """The mirror's own request failed (``exc``) and nothing cached can stand in: ``pull``
    goes upstream itself (it gets the upstream's own answer, asked with its own credentials),
    unless the registry sent nothing in time, when asking again would only wait as long: then
    it gets that ``504`` at once. Not so for a host it redirected to (a CDN: the next may be
    another), nor for a silent token service on another host than the registry's, unless the
    client's request would go without a credential of its own (users mode, or none sent): it
    would ask that token service again, for the mirror. The registry's own word on a blob in
    the pull's repository (a 404 BLOB_UNKNOWN: :class:`UpstreamAnswered`) is the client's
    answer too, at once: asked again, the registry would only say it again (one asked in
    another repository, whose fill this pull joined, says nothing of this one's). Not so for
    a client with credentials of its own (:attr:`Pull.credentialed`): a registry that hides a
    private repository from those who may not read it answers the mirror's token ``404``
    (Artifactory, some Nexus and Quay set-ups, GitLab), and the client's own ``200``; its
    request passes through, the registry's answer to it relayed. ``joined``: ``exc`` is the
    failure of another request's upstream GET that ``pull`` waited for
    (:attr:`PassThrough.joined`)."""
    said = exc.message if detail is None else detail
    if isinstance(exc, UpstreamAnswered) and exc.name == pull.name:
        if pull.credentialed:  # its word to the mirror's token: the client's may read it
            # Per client, even for clients that waited for one GET: each credential may read
            # what another may not (test_review_pull5). Two clients sending the same one would
            # be answered alike, but sharing that would mean coalescing their pass-throughs
            # (streamed, each with its own Authorization): each costs the upstream what its
            # pull would cost it without the mirror.
            return PassThrough(Reason.UPSTREAM_ANSWER, said, joined=joined)
        return PassThrough(Reason.UPSTREAM_ANSWER, said, joined=joined, failed=exc)
    silent = (
        isinstance(exc, UpstreamTimeout)
        and not isinstance(exc, HopTimeout)
        and (not isinstance(exc, TokenServiceTimeout) or pull.authorization is None)
    )
    failed = exc if silent else None
    return PassThrough(Reason.UPSTREAM_FAILED, said, joined=joined, failed=failed)


Outcome = Served | PassThrough

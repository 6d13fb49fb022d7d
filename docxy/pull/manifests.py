"""Manifests on the pull path: by digest forever, by tag for ``cache.tag_ttl``, then a HEAD.

The mirror fetches manifests with its own upstream token and asks for every manifest type, so
what it stores is public and fits any client. A tag older than its TTL is revalidated with an
upstream ``HEAD`` — free against Docker Hub's pull limit — and the cached manifest is served if
the digest did not change. When the upstream or its auth service is down, slow, or answers
429/5xx, a cached tag is served stale (logged); one it answers 404 for is forgotten. A GET of
the mirror's the registry answers with its word on the manifest (a 404 MANIFEST_UNKNOWN for a
mistyped tag, a 400: ``THE_REGISTRYS_WORD``) is the answer of its clients, relayed (an
:class:`~docxy.core.errors.UpstreamAnswered`), not asked again by passing them through; so is
the registry's 404 to the mirror's HEAD (a client's HEAD, a stale tag's revalidation), and its
400 to a client's HEAD. Not so for a client with credentials of its own
(:attr:`~docxy.pull.outcome.Pull.credentialed`): a registry hiding private repositories behind
a 404 says it to the mirror's token only. Content
the mirror cannot read with its own token, or will not cache (schema 1), passes through with
the client's credentials, uncached.

A manifest is served under a repository only where the mirror knows that repository holds it,
as a blob is (``docxy.pull.blobs``): one cached for another repository of the same upstream is
first confirmed there by a free upstream ``HEAD`` with the mirror's token, then served from the
cache, and recorded there (a tag noted before its manifest was cached elsewhere, too). Where
that ``HEAD`` finds nothing (a private repository: the mirror's token is refused there), a pull
by digest is checked with the client's own credentials, as a blob's is: confirmed, it is served
from the cache to that request only, recorded nowhere. Unconfirmed, the request passes through.

A client that takes no multi-platform type (``INDEX_TYPES``) missing a manifest is first
looked up with a free ``HEAD``: one of a type it does not take (an index) is passed through at
once, for the upstream to answer it as it does such a client (:meth:`ManifestService.
_look_first`), not fetched by the mirror (a counted pull it could not serve) and then again.

Clients missing one manifest at once share one upstream GET (a counted pull on Docker Hub), and
the mirror's own upstream HEADs of one manifest at once are shared likewise (a fleet revalidating
a tag whose TTL ran out, or resolving a new tag by HEAD). A client's HEAD the cache cannot answer
is answered from the mirror's own upstream HEAD, made with the mirror's credentials (the client
may hold none for this upstream); one that names the digest but no length or type, from the
manifest the mirror then GETs, as Distribution answers a HEAD. A HEAD with a client's own
credentials (passed through, or :meth:`ManifestService._theirs`) is never shared: its answer
depends on who asks.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, replace

import httpx

from docxy.cache import (
    CachedManifest,
    ManifestStore,
    RepoKey,
    TagEntry,
    TagState,
    VerifyError,
    may_serve,
)
from docxy.core.digests import Digest, parse_digest
from docxy.core.errors import DigestInvalid, UpstreamAnswered, UpstreamError
from docxy.core.headers import ACCEPT_IDENTITY, content_length
from docxy.pull.asking import (
    THE_REGISTRYS_WORD,
    answered_by,
    head_as_client,
    raise_for_trouble,
    refused_by_registry,
)
from docxy.pull.outcome import (
    ManifestContent,
    Outcome,
    PassThrough,
    Pull,
    Reason,
    Served,
    Source,
    upstream_failed,
)
from docxy.tasks import Coalesced
from docxy.upstream.client import MAX_SMALL_BODY, AnswerTooLarge, read_small, same_origin
from docxy.upstream.tokens import MirrorTokens, sent_authorization

log = logging.getLogger(__name__)

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
ACCEPT_ALL = ", ".join(MANIFEST_TYPES)
#: The multi-platform types: a client that takes neither (an old one, a script naming the
#: single-platform types) is answered by the upstream for an image whose tag is one of them.
INDEX_TYPES = MANIFEST_TYPES[:2]


def acceptable(media_type: str, accept_values: list[str]) -> bool:
    """Whether a client that sent these ``Accept`` values takes ``media_type``: no ``Accept``
    takes any; else the most specific range naming it (the type, ``type/*``, ``*/*``) decides,
    and a weight of 0 (``q=0``) is "not acceptable" (RFC 9110 §12.4.2). A range named twice
    counts with its highest weight; an unreadable weight is taken as none (1)."""
    weights: dict[str, float] = {}
    for value in accept_values:
        for part in value.split(","):
            name, *params = part.split(";")
            name = name.strip().lower()
            if name:
                weights[name] = max(weights.get(name, 0.0), _weight(params))
    if not weights:
        return True
    kind = media_type.lower()
    for name in (kind, kind.split("/")[0] + "/*", "*/*"):
        if name in weights:
            return weights[name] > 0
    return False


def _weight(params: list[str]) -> float:
    """The ``q`` of a media range's parameters (1 when it has none, or none readable)."""
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                weight = float(value.strip())
            except ValueError:
                return 1.0
            return weight if 0 <= weight <= 1 else 1.0
    return 1.0


def _takes_an_index(pull: Pull) -> bool:
    """Whether the client takes a multi-platform manifest (an ``Accept`` naming none takes
    any)."""
    return any(acceptable(media_type, list(pull.accept)) for media_type in INDEX_TYPES)


def encoded(answer: httpx.Response) -> bool:
    """Whether ``answer`` names a content coding (its length is then not the manifest's)."""
    coding = answer.headers.get("content-encoding", "").strip().lower()
    return coding not in ("", "identity")


def _content(manifest: CachedManifest, pull: Pull) -> ManifestContent:
    body = None if pull.head else manifest.content
    return ManifestContent(manifest.digest, manifest.media_type, len(manifest.content), body)


def _served(source: Source, manifest: CachedManifest, pull: Pull) -> Served:
    not_kept = None if manifest.not_kept is None else Reason(manifest.not_kept.value)
    return Served(source, _content(manifest, pull), not_kept=not_kept)


@dataclass(frozen=True, slots=True)
class Head:
    """The upstream's answer to the mirror's HEAD of a manifest: ``found`` if it answered 200,
    ``digest`` if that answer named the manifest's, ``content`` if it also named its length
    and type (what a client's HEAD is answered with; the digest alone confirms a cached tag).
    ``answered`` if the registry itself answered with its word on the manifest (a 404, a 400:
    :data:`THE_REGISTRYS_WORD`), the client's answer then (:meth:`ManifestService._not_found`).
    ``joined`` if this request waited for another's HEAD (it cost the upstream nothing)."""

    found: bool
    content: ManifestContent | None = None
    digest: Digest | None = None
    answered: UpstreamAnswered | None = None
    joined: bool = False


def _head_refused(head: Head) -> bool:
    """The registry's own word on the mirror's ``HEAD`` is no ``404`` (a ``405``, a ``400``): it
    refuses the method, not the tag, and may answer a ``GET`` all the same (a front that serves
    no ``HEAD``). A stale tag is then revalidated with the mirror's ``GET``, as when its
    ``HEAD`` names no digest; passed through instead, every pull would cost a ``HEAD`` and the
    client's counted ``GET``, and the tag would never move. A ``401`` or ``403`` to the
    mirror's token is no such word (:meth:`ManifestService._note_refusal`)."""
    answered = head.answered
    return answered is not None and answered.status != 404


class FetchFailed(Exception):
    """The mirror's upstream GET of a manifest failed with ``error``: its own, or, ``joined``,
    another request's that this one waited for (:attr:`PassThrough.joined`)."""

    def __init__(self, error: UpstreamError, joined: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.joined = joined

    def outcome(self, pull: Pull) -> PassThrough:
        """What ``pull`` is answered (:func:`upstream_failed`)."""
        return upstream_failed(self.error, pull, joined=self.joined)


UNCACHED = PassThrough(Reason.UPSTREAM_ANSWER, "the mirror's fetch got no manifest it caches")
NOT_ACCEPTED = PassThrough(Reason.NOT_CACHEABLE, "the client does not accept the cached type")
NOT_TAKEN = PassThrough(Reason.NOT_CACHEABLE, "the client does not accept the upstream's type")
PRIVATE = PassThrough(Reason.PRIVATE, "the mirror's token was refused lately")
TOO_LARGE = PassThrough(Reason.NOT_CACHEABLE, f"the manifest is over {MAX_SMALL_BODY} bytes")
#: The code of the mirror's own error for the registry's 404 of a manifest without a body of
#: its own to relay (a HEAD's).
UNKNOWN = "MANIFEST_UNKNOWN"
#: Tags found moved by a client's HEAD, kept until the GET by digest that follows (the oldest
#: forgotten first: such a tag then moves at its next GET by tag, as before).
MOVES_KEPT = 1024
#: Tags kept as moving to one manifest (the oldest forgotten first, as above).
TAGS_MOVING_KEPT = 64


class ManifestService:
    """``get(pull)`` → an outcome; ``store`` None means the cache is off."""

    def __init__(self, store: ManifestStore | None, tokens: MirrorTokens) -> None:
        self.store = store
        self.tokens = tokens
        #: upstream GETs in flight, one per (upstream, repository, reference)
        self._fetching: Coalesced[tuple[str, str, str], CachedManifest | None] = Coalesced(
            UpstreamError
        )
        #: the mirror's own upstream HEADs in flight, one per (upstream, repository, reference,
        #: "HEAD"): made with the mirror's token, their answer is the same for every client.
        #: Never a HEAD with a client's own credentials (:func:`head_as_client`, a pass-through):
        #: its answer depends on who asks.
        self._heading: Coalesced[tuple[str, str, str, str], Head] = Coalesced(UpstreamError)
        #: tags a client's HEAD found moved to a manifest not cached yet: (repository, new
        #: digest) → each such tag's record then, moved once that manifest is served by digest
        #: if the record is still the same (:meth:`_moved_in`); several tags can move to one
        #: image (``latest`` and ``3``)
        self._moving: OrderedDict[tuple[RepoKey, Digest], dict[str, TagEntry]] = OrderedDict()

    @property
    def fetches_joined(self) -> int:
        """Misses that waited for another's upstream GET of the manifest instead of sending
        their own."""
        return self._fetching.joined

    @property
    def heads_joined(self) -> int:
        """Requests that waited for another's upstream HEAD of the manifest (a revalidation, a
        client's HEAD the cache could not answer) instead of sending their own."""
        return self._heading.joined

    async def get(self, pull: Pull) -> Outcome:
        if self.store is None:
            return PassThrough(Reason.NO_CACHE)
        repo = RepoKey(pull.upstream.host, pull.name)
        digest = pull.reference.digest
        if digest is None:
            return await self._get_tag(self.store, repo, pull)
        cached = await self.store.get(repo, digest)
        if cached is not None and may_serve(cached.visibility, pull.identity):
            if not acceptable(cached.media_type, list(pull.accept)):
                return NOT_ACCEPTED  # fetching it again would change nothing (immutable)
            await self._moved_in(repo, cached)
            return _served(Source.HIT, cached, pull)
        head: Head | None = None
        if cached is not None:  # not known here (or privately only): does this repository hold it?
            try:
                head = await self._head(repo, pull)
            except UpstreamError as exc:
                return upstream_failed(exc, pull)
            if head.digest == digest:
                return await self._confirmed(self.store, repo, pull, cached)
            if not head.found:  # refused, or not here: the client's own credentials, maybe
                return await self._theirs(pull, cached)
        if pull.head:  # containerd resolves a digest-pinned image so
            return await self._answer_head(self.store, repo, pull, head)
        if self._private(pull):
            return PRIVATE
        if head is None and not _takes_an_index(pull):
            looked = await self._look_first(repo, pull)
            if not isinstance(looked, Head):
                return looked
        try:
            fetched, source = await self._fetch(repo, pull, digest)
        except FetchFailed as failed:
            return failed.outcome(pull)
        if fetched is None:
            return self._uncached(pull)
        await self._moved_in(repo, fetched)
        if not self._servable(fetched, pull):
            return NOT_ACCEPTED
        return _served(source, fetched, pull)

    def _moving_to(self, repo: RepoKey, digest: Digest, record: TagEntry) -> None:
        """A client's HEAD found the tag of `record` moved to `digest`, not cached yet: the tag
        keeps that record (an outage now still serves its image) until the GET by digest that
        follows caches the new manifest (:meth:`_moved_in`)."""
        tags = self._moving.setdefault((repo, digest), {})
        tags[record.tag] = record
        while len(tags) > TAGS_MOVING_KEPT:
            del tags[next(iter(tags))]
        self._moving.move_to_end((repo, digest))
        while len(self._moving) > MOVES_KEPT:
            self._moving.popitem(last=False)

    async def _moved_in(self, repo: RepoKey, manifest: CachedManifest) -> None:
        """Served by digest: a tag found moved to it (:meth:`_moving_to`) now names it, if its
        record is the one the HEAD saw. Else, after an outage, the tag served the old image
        stale, though the new one was cached; and a tag set since (moved on, or revalidated)
        is left alone: a late GET of that digest does not move it back. A manifest the disk
        refused (not kept) moves nothing."""
        if self.store is None or not manifest.kept:  # not cached: the tag waits for one that is
            return
        for seen in self._moving.pop((repo, manifest.digest), {}).values():
            if (await self.store.resolve_tag(repo, seen.tag)).entry == seen:
                await self.store.set_tag(repo, seen.tag, manifest.digest, public=True)

    async def _confirmed(
        self, store: ManifestStore, repo: RepoKey, pull: Pull, cached: CachedManifest
    ) -> Outcome:
        """The ``cached`` manifest, which the mirror's upstream ``HEAD`` in ``repo`` just named:
        recorded as held there (:meth:`ManifestStore.confirm`) and served from the cache, so
        a manifest cached for one repository costs another of the same upstream a free
        ``HEAD``, not a counted ``GET``. The ``HEAD`` is the access check: a digest alone
        unlocks nothing, so a private repository's manifest never leaks through another's
        cache (the mirror's token cannot read it there: that ``HEAD`` is a 401)."""
        held = await store.confirm(repo, cached)
        if not self._servable(held, pull):
            return NOT_ACCEPTED
        return _served(Source.REVALIDATED, held, pull)

    async def _theirs(self, pull: Pull, cached: CachedManifest) -> Outcome:
        """The ``cached`` manifest, asked by digest in a repository where the mirror's token
        found nothing (a private one), if the client's own ``Authorization`` reads it there: a
        free upstream ``HEAD`` with it, as for a blob (``docxy.pull.blobs``). Served from the
        cache to this request only and recorded nowhere: the next pull asks again, and no
        other identity ever gets it through this repository. Unconfirmed (no credentials of
        the client's to send, or a token the mirror issued itself, which stays here), the
        request passes through, as a GET would be answered so too."""
        try:
            answer = await head_as_client(self.tokens.client, pull, [("Accept", ACCEPT_ALL)])
        except UpstreamError as exc:
            return upstream_failed(exc, pull)
        if answer is None:
            return UNCACHED
        header = answer.headers.get("docker-content-digest")
        try:  # none named: by digest, it is the one asked
            named = parse_digest(header) if header else cached.digest
        except DigestInvalid:
            named = None
        if answer.status_code != 200 or named != cached.digest:
            return UNCACHED
        if not acceptable(cached.media_type, list(pull.accept)):
            return NOT_ACCEPTED
        return _served(Source.REVALIDATED, cached, pull)

    def _private(self, pull: Pull) -> bool:
        """The mirror's token was refused for the repository lately (:meth:`_note_refusal`)."""
        return self.tokens.refused(pull.upstream, pull.name)

    def _uncached(self, pull: Pull) -> PassThrough:
        """The mirror's fetch got nothing it caches: its token refused (private to it), or
        another answer."""
        return PRIVATE if self._private(pull) else UNCACHED

    def _not_found(self, pull: Pull, head: Head) -> PassThrough:
        """The mirror's ``HEAD`` found nothing: the registry's own 404 is the client's answer
        (a mistyped or deleted tag: its request, passed through, would only be told the same,
        a counted ``GET`` on Docker Hub); a refusal passes it through (:meth:`_uncached`). Its
        other word (a 400 TAG_INVALID...) answers a client's ``HEAD`` (the same request, as
        a ``GET``'s 400 answers the ``GET``s: :meth:`_fetch_once`), not a ``GET`` the mirror
        looked up first: a front may refuse a ``HEAD`` it answers as a ``GET``."""
        answered = head.answered
        if answered is not None and (pull.head or answered.status == 404):
            return upstream_failed(answered, pull)
        return self._uncached(pull)

    @staticmethod
    def _servable(manifest: CachedManifest, pull: Pull) -> bool:
        return may_serve(manifest.visibility, pull.identity) and acceptable(
            manifest.media_type, list(pull.accept)
        )

    async def _get_tag(self, store: ManifestStore, repo: RepoKey, pull: Pull) -> Outcome:
        tag = str(pull.reference.tag)
        found = await store.resolve_tag(repo, tag)
        stale = found.manifest
        elsewhere = None
        if stale is not None and not may_serve(stale.visibility, pull.identity):
            # The tag was noted from a HEAD, its manifest cached since for another repository
            # only: confirmed here by the HEAD below (then served from the cache), else fetched.
            elsewhere, stale = stale, None
        if stale is not None and not self._servable(stale, pull):
            return NOT_ACCEPTED
        if found.state is TagState.FRESH and stale is not None:
            return _served(Source.HIT, stale, pull)
        head: Head | None = None
        if (found.state is TagState.STALE and stale is not None) or elsewhere is not None:
            try:
                head = await self._head(repo, pull)
            except UpstreamError as exc:
                if stale is None:  # nothing confirmed here to serve: the client sees the error
                    return upstream_failed(exc, pull)
                log.warning("serving %s:%s stale: %s", repo.repo, tag, exc.message)
                return _served(Source.STALE, stale, pull)
            current = head.digest
            if stale is not None and current == stale.digest:
                await store.set_tag(repo, tag, stale.digest, public=True)
                return _served(Source.REVALIDATED, stale, pull)
            if not head.found and not _head_refused(head):
                return self._not_found(pull, head)
            # Moved, noted for a manifest cached elsewhere, or found without a digest to compare
            # (a GET below tells): confirmed here if the digest the HEAD names is cached.
            moved = await store.get(repo, current) if current is not None else None
            if moved is not None:  # cached already, maybe for another repository only
                await store.set_tag(repo, tag, moved.digest, public=True)
                return await self._confirmed(store, repo, pull, moved)
        if pull.head:
            return await self._answer_head(store, repo, pull, head, found.entry)
        if self._private(pull):
            return PRIVATE
        if head is None and not _takes_an_index(pull):
            looked = await self._look_first(repo, pull)
            if not isinstance(looked, Head):
                return looked
            head = looked
            cached = await store.get(repo, head.digest) if head.digest is not None else None
            if cached is not None:  # cached already, maybe for another repository only
                await store.set_tag(repo, tag, cached.digest, public=True)
                return await self._confirmed(store, repo, pull, cached)
        if head is not None and head.content is not None and head.content.length > MAX_SMALL_BODY:
            return TOO_LARGE  # a GET of the mirror's would stop at the cap: one the client's
        try:
            fetched, source = await self._fetch(repo, pull, None)
        except FetchFailed as failed:
            # An answer is no outage: the tag is gone (forgotten), or mistyped. Nothing stale:
            # pass through, the client sees the upstream's own answer.
            if isinstance(failed.error, UpstreamAnswered) or stale is None:
                return failed.outcome(pull)
            log.warning("serving %s:%s stale: %s", repo.repo, tag, failed.error.message)
            return _served(Source.STALE, stale, pull)
        if fetched is None:
            return self._uncached(pull)
        if fetched.kept:  # else the tag keeps its record: an outage still serves that stale
            await store.set_tag(repo, tag, fetched.digest, public=True)
        if not self._servable(fetched, pull):
            return NOT_ACCEPTED
        return _served(source, fetched, pull)

    async def _look_first(self, repo: RepoKey, pull: Pull) -> Head | Outcome:
        """A miss of a client that takes no index (:func:`_takes_an_index`): the mirror's free
        ``HEAD`` first, as the mirror's counted ``GET`` (every type) may only bring an index
        this client cannot take, and its own request passed through then be a second counted
        ``GET``. A manifest of a type the client does not take is passed through at once: the
        upstream answers that client as it answers it (Distribution, by tag: a manifest list's
        linux/amd64 manifest, ``404 MANIFEST_UNKNOWN`` for an OCI index), one counted ``GET``
        in all; the private repository's refusal, likewise. None found (the registry's
        ``404``) is the client's answer at once (:meth:`_not_found`): no ``GET`` at all. The
        ``Head`` when the mirror's ``GET`` goes on (a type the client takes, or none named)."""
        try:
            head = await self._head(repo, pull)
        except UpstreamError as exc:
            return upstream_failed(exc, pull)
        if not head.found:
            return self._not_found(pull, head)
        found = head.content
        if found is not None and not acceptable(found.media_type, list(pull.accept)):
            return NOT_TAKEN
        return head

    async def _answer_head(
        self,
        store: ManifestStore,
        repo: RepoKey,
        pull: Pull,
        head: Head | None,
        record: TagEntry | None = None,
    ) -> Outcome:
        """A client's HEAD of a manifest the cache cannot answer, answered from the mirror's
        own upstream HEAD (``head``, or one made now): free against pull limits, and made with
        the mirror's credentials, which the client may not hold for this upstream (Basic auth).

        containerd and dockerd resolve a tag by HEAD, then GET by digest. A tag with no
        ``record`` yet is noted now, or an outage leaves an image pulled a minute ago
        unresolvable; a cached tag that moved keeps its ``record`` until the new manifest is
        cached (that GET by digest: :meth:`_moving_to`), so an outage before then still finds
        the old one.

        A digest the cache holds (for this repository or another: the ``HEAD``, made in this
        one, says it holds it too) is answered from the cache, its length and type included,
        which some upstreams' ``HEAD`` leaves out, and recorded as held here, so the GET by
        digest that follows is a hit (:meth:`_confirmed`).
        """
        tag = pull.reference.tag
        note = tag is not None and record is None
        if head is None:
            try:
                head = await self._head(repo, pull)
            except UpstreamError as exc:
                return upstream_failed(exc, pull)
        if head.digest is not None:
            cached = await store.get(repo, head.digest)
            if cached is not None:  # for this repository, or held here too: the HEAD says so
                if note:
                    await store.set_tag(repo, str(tag), cached.digest, public=True)
                return await self._confirmed(store, repo, pull, cached)
        found = head.content
        if found is None:
            if head.found and head.digest is not None:  # no length or type: what a GET tells
                # (the client's GET by digest is next, and a hit then: one counted pull either
                # way; without a digest, the client's own HEAD, uncounted, as before)
                return await self._head_by_get(store, repo, pull)
            if head.found:
                return PassThrough(Reason.NOT_CACHEABLE, "the upstream's HEAD names no digest")
            return self._not_found(pull, head)
        if not acceptable(found.media_type, list(pull.accept)):
            return NOT_ACCEPTED
        if note:
            await store.set_tag(repo, str(tag), found.digest, public=True)
        elif record is not None:
            self._moving_to(repo, found.digest, record)
        return Served(Source.JOINED if head.joined else Source.MISS, found)

    async def _head_by_get(self, store: ManifestStore, repo: RepoKey, pull: Pull) -> Outcome:
        """A client's HEAD the upstream's own HEAD cannot answer: it found the manifest and
        named its digest, but no length or type (some fronts drop them). Answered, as Distribution
        answers a HEAD, from the manifest itself: fetched with the mirror's token (the GET the
        client would send next, which is then a hit) and cached, a tag noted as by a GET.
        containerd takes the media type from a HEAD; it was sent an empty ``Content-Type``."""
        try:
            fetched, source = await self._fetch(repo, pull, pull.reference.digest)
        except FetchFailed as failed:
            return failed.outcome(pull)
        if fetched is None:
            return self._uncached(pull)
        tag = pull.reference.tag
        if tag is not None and fetched.kept:
            await store.set_tag(repo, str(tag), fetched.digest, public=True)
        await self._moved_in(repo, fetched)
        if not self._servable(fetched, pull):
            return NOT_ACCEPTED
        return _served(source, fetched, pull)

    async def _head(self, repo: RepoKey, pull: Pull) -> Head:
        """An upstream HEAD of the tag or digest with the mirror's token and every manifest
        type. A 404 for a tag forgets it (:meth:`_gone`). Concurrent requests for one manifest
        (a fleet revalidating a tag whose TTL ran out, or resolving a new tag by HEAD) share
        one: asked with the mirror's credentials, not the client's, its answer is everyone's,
        as the shared GET's is (:meth:`_fetch`)."""
        if self._private(pull):
            return Head(found=False)  # its answer stands a while: not asked again at once
        ref = pull.reference.ref
        head, joined = await self._heading.share(
            (repo.upstream, repo.repo, ref, "HEAD"),
            f"manifest HEAD {repo.upstream} {repo.repo}:{ref}",
            lambda: self._head_once(repo, pull),
        )
        return replace(head, joined=True) if joined else head

    async def _head_once(self, repo: RepoKey, pull: Pull) -> Head:
        tag, asked = pull.reference.tag, pull.reference.digest
        path = f"/v2/{repo.repo}/manifests/{pull.reference.ref}"
        # Identity: a HEAD's length is that of the body a GET with its headers would get, and
        # the shared client asks for gzip; a registry that zips said the zipped length, which
        # a client's HEAD was answered with (containerd then reads the manifest as too long).
        headers = [("Accept", ACCEPT_ALL), ACCEPT_IDENTITY]
        answer = await self.tokens.send(pull.upstream, "HEAD", repo.repo, path, headers)
        await answer.aclose()
        raise_for_trouble(answer)
        self._note_refusal(pull, answer)
        if answer.status_code == 404 and tag is not None:
            await self._gone(repo, tag)
        status = answer.status_code
        if status in THE_REGISTRYS_WORD and same_origin(
            answered_by(answer, pull), pull.upstream.registry
        ):  # its word on the manifest (no body: a HEAD's), not on the mirror's token
            return Head(found=False, answered=UpstreamAnswered(status, b"", repo.repo, UNKNOWN))
        if answer.status_code != 200:
            return Head(found=False)
        header = answer.headers.get("docker-content-digest")
        try:  # the spec's SHOULD: some registries name no digest (by digest, it is the one asked)
            digest = parse_digest(header) if header else asked
        except DigestInvalid:
            digest = None
        if digest is None or asked not in (None, digest):
            return Head(found=True)
        length = content_length(answer.headers.get("content-length"))
        # Enough to confirm a cached tag, not to answer a HEAD with (nor is a zipped length,
        # should the registry zip all the same).
        if encoded(answer) or length is None:
            return Head(found=True, digest=digest)
        media_type = answer.headers.get("content-type", "").split(";")[0].strip()
        if not media_type:  # enough to confirm a cached tag, not to answer a HEAD with
            return Head(found=True, digest=digest)
        return Head(True, ManifestContent(digest, media_type, length, None), digest)

    def _note_refusal(self, pull: Pull, answer: httpx.Response) -> None:
        """A 401 or 403 from the registry to the mirror's own token (after its one fresh
        token): the repository is private to it. Its manifests pass through a while without
        the mirror asking first (three requests each: a GET, a new token, the GET again), as
        its blobs do. One from where the registry redirected to is no word on the token."""
        if refused_by_registry(answer, pull):
            self.tokens.mark_refused(pull.upstream, pull.name)

    async def _gone(self, repo: RepoKey, tag: str) -> None:
        """The upstream answered the mirror's own request for ``tag`` with 404: the tag was
        deleted (or moved out of the mirror's sight). Forget it, so that an outage never brings
        it back as a stale answer; the manifests stay cached by digest. A disk that refuses
        (read-only, EIO) keeps the tag, as it keeps one it cannot write: the pull goes on, and
        its client gets the upstream's 404, never a 500."""
        assert self.store is not None  # get() checked
        try:
            forgotten = await self.store.forget_tag(repo, tag)
        except OSError as exc:
            log.warning(
                "cache: cannot forget tag %s:%s, gone upstream (404): %s", repo.repo, tag, exc
            )
            return
        if forgotten:
            log.info("cache: %s:%s is gone upstream (404), tag forgotten", repo.repo, tag)

    async def _fetch(
        self, repo: RepoKey, pull: Pull, digest: Digest | None
    ) -> tuple[CachedManifest | None, Source]:
        """The manifest fetched with the mirror's token and stored; None if it is not one the
        mirror may cache. Concurrent misses of one manifest share one upstream GET (a counted
        pull on Docker Hub): the first starts it as a named task (:attr:`Source.MISS`), the
        others wait for it (:attr:`Source.JOINED`: no fetch of their own), and a client going
        away cancels only its own wait. Its failure raises :class:`FetchFailed`, which says
        whether it was this request's own GET (a registry's 404 relayed to a client that
        waited for another's is ``collapsed`` too)."""
        ref = pull.reference.ref
        key = (repo.upstream, repo.repo, ref)
        joined = self._fetching.running(key)  # share() checks the same before its first wait
        try:
            fetched, joined = await self._fetching.share(
                key,
                f"manifest {repo.upstream} {repo.repo}:{ref}",
                lambda: self._fetch_once(repo, pull, digest),
            )
        except UpstreamError as exc:
            raise FetchFailed(exc, joined) from exc
        return fetched, Source.JOINED if joined else Source.MISS

    async def _fetch_once(
        self, repo: RepoKey, pull: Pull, digest: Digest | None
    ) -> CachedManifest | None:
        path = f"/v2/{repo.repo}/manifests/{pull.reference.ref}"
        answer = await self.tokens.send(
            pull.upstream, "GET", repo.repo, path, [("Accept", ACCEPT_ALL)]
        )
        try:
            body = await read_small(answer)
        except AnswerTooLarge as exc:  # not the upstream's trouble: a stale tag is no answer
            raise_for_trouble(answer)
            log.info("manifest %s from upstream not cached: %s", pull.path, exc.message)
            return None
        raise_for_trouble(answer)
        self._note_refusal(pull, answer)
        if answer.status_code == 404 and digest is None:
            await self._gone(repo, str(pull.reference.tag))
        if answer.status_code in THE_REGISTRYS_WORD and same_origin(
            answered_by(answer, pull), pull.upstream.registry
        ):  # its word on the manifest (a mistyped tag): the clients', not asked again
            sent = self.tokens.secrets(pull.upstream, repo.repo, [sent_authorization(answer)])
            raise UpstreamAnswered(answer.status_code, body, repo.repo, UNKNOWN, sent)
        if answer.status_code != 200:
            return None
        media_type = answer.headers.get("content-type", "").split(";")[0].strip()
        if media_type not in MANIFEST_TYPES:
            return None  # schema 1 and the unknown are passed through, not cached
        expected = digest
        header = answer.headers.get("docker-content-digest")
        if expected is None and header:
            try:
                expected = parse_digest(header)
            except DigestInvalid:
                expected = None
        try:
            assert self.store is not None  # get() checked
            return await self.store.put(repo, body, media_type, public=True, digest=expected)
        except VerifyError as exc:
            log.error("manifest %s from upstream does not match its digest: %s", pull.path, exc)
            return None

"""Manifests through the cache: by digest forever, by tag for ``cache.tag_ttl``, then a HEAD.

The mirror fetches manifests with its own upstream token and asks for every manifest type, so
what it stores is public and fits any client. A tag older than its TTL is revalidated with an
upstream ``HEAD`` — free against Docker Hub's pull limit — and the cached manifest is served if
the digest did not change. When the upstream or its auth service is down, slow, or answers
429/5xx, a cached tag is served stale (logged). Content the mirror cannot read with its own
token returns ``None``: the route then passes the request through with the client's
credentials, uncached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from quart import Response
from werkzeug.datastructures import Headers

from docxy.cache import (
    ANONYMOUS,
    CachedManifest,
    ManifestStore,
    RepoKey,
    TagState,
    VerifyError,
    may_serve,
)
from docxy.cache.digests import Digest, parse_digest
from docxy.errors import DigestInvalid, UpstreamError, UpstreamUnavailable
from docxy.names import Reference
from docxy.proxy import API_VERSION_HEADER, empty_body, read_small
from docxy.upstream import SERVER_TROUBLE, Upstream, UpstreamClient
from docxy.upstream_auth import MirrorTokens

log = logging.getLogger(__name__)

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
ACCEPT_ALL = ", ".join(MANIFEST_TYPES)


def acceptable(media_type: str, accept_values: list[str]) -> bool:
    """Whether a client that sent these ``Accept`` values takes ``media_type``."""
    offered = {
        part.split(";")[0].strip().lower() for value in accept_values for part in value.split(",")
    }
    offered.discard("")
    return not offered or "*/*" in offered or media_type.lower() in offered


def _raise_for_trouble(status: int) -> None:
    if status in SERVER_TROUBLE:
        raise UpstreamUnavailable(f"the upstream answered {status}")


def manifest_response(manifest: CachedManifest, method: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", manifest.media_type),
            ("Docker-Content-Digest", str(manifest.digest)),
            ("ETag", f'"{manifest.digest}"'),
            ("Content-Length", str(len(manifest.content))),
            API_VERSION_HEADER,
        ]
    )
    if method == "HEAD":
        response = Response(empty_body(), status=200, headers=headers)
    else:
        response = Response(manifest.content, status=200, headers=headers)
    return response


@dataclass(frozen=True, slots=True)
class HeadAnswer:
    """What an upstream manifest HEAD said: enough to answer a client's HEAD."""

    digest: Digest
    media_type: str
    length: int

    def response(self) -> Response:
        headers = Headers(
            [
                ("Content-Type", self.media_type),
                ("Docker-Content-Digest", str(self.digest)),
                ("ETag", f'"{self.digest}"'),
                ("Content-Length", str(self.length)),
                API_VERSION_HEADER,
            ]
        )
        return Response(empty_body(), status=200, headers=headers)


class ManifestCache:
    def __init__(self, store: ManifestStore, client: UpstreamClient, tokens: MirrorTokens) -> None:
        self.store = store
        self.client = client
        self.tokens = tokens

    async def serve(
        self, upstream: Upstream, name: str, reference: Reference, method: str, accept: list[str]
    ) -> tuple[Response, str] | None:
        """``(response, cache outcome)``, or ``None`` to pass the request through."""
        repo = RepoKey(upstream.host, name)
        if reference.digest is not None:
            digest = reference.digest
            cached = await self.store.get(repo, digest)
            if cached is not None and self._servable(cached, accept):
                return manifest_response(cached, method), "hit"
            if method == "HEAD":
                return None
            try:
                fetched = await self._fetch(upstream, repo, reference, digest)
            except UpstreamError:
                return None
            if fetched is None or not self._servable(fetched, accept):
                return None
            return manifest_response(fetched, method), "miss"
        return await self._serve_tag(upstream, repo, reference, method, accept)

    @staticmethod
    def _servable(manifest: CachedManifest, accept: list[str]) -> bool:
        return may_serve(manifest.visibility, ANONYMOUS) and acceptable(manifest.media_type, accept)

    async def _serve_tag(
        self,
        upstream: Upstream,
        repo: RepoKey,
        reference: Reference,
        method: str,
        accept: list[str],
    ) -> tuple[Response, str] | None:
        tag = str(reference.tag)
        found = await self.store.resolve_tag(repo, tag)
        stale = found.manifest
        if stale is not None and not self._servable(stale, accept):
            return None
        if found.state is TagState.FRESH and stale is not None:
            return manifest_response(stale, method), "hit"
        if found.state is TagState.STALE and stale is not None:
            try:
                current = await self._head_digest(upstream, repo, tag)
            except UpstreamError as exc:
                log.warning("serving %s:%s stale: %s", repo.repo, tag, exc.message)
                return manifest_response(stale, method), "stale"
            if current == stale.digest:
                await self.store.set_tag(repo, tag, stale.digest, public=True)
                return manifest_response(stale, method), "revalidated"
            if current is None:
                return None
            moved = await self.store.get(repo, current)
            if moved is not None and self._servable(moved, accept):
                await self.store.set_tag(repo, tag, moved.digest, public=True)
                return manifest_response(moved, method), "revalidated"
        if method == "HEAD":
            if found.state is not TagState.MISSING:
                return None
            # containerd and dockerd resolve a tag by HEAD, then GET by digest: remember the
            # tag now (from a free upstream HEAD, never a counted GET), or an outage leaves an
            # image pulled a minute ago unresolvable.
            try:
                head = await self._head(upstream, repo, tag)
            except UpstreamError:
                return None
            if head is None or not acceptable(head[1].media_type, accept):
                return None
            await self.store.set_tag(repo, tag, head[0], public=True)
            return head[1].response(), "miss"
        try:
            fetched = await self._fetch(upstream, repo, reference, None)
        except UpstreamError as exc:
            if stale is None:
                return None  # pass through: the client sees the upstream's own answer
            log.warning("serving %s:%s stale: %s", repo.repo, tag, exc.message)
            return manifest_response(stale, method), "stale"
        if fetched is None:
            return None
        await self.store.set_tag(repo, tag, fetched.digest, public=True)
        if not self._servable(fetched, accept):
            return None
        return manifest_response(fetched, method), "miss"

    async def _head_digest(self, upstream: Upstream, repo: RepoKey, tag: str) -> Digest | None:
        """The tag's current digest by an upstream HEAD; ``None`` if the mirror may not see it."""
        head = await self._head(upstream, repo, tag)
        return head[0] if head is not None else None

    async def _head(
        self, upstream: Upstream, repo: RepoKey, tag: str
    ) -> tuple[Digest, HeadAnswer] | None:
        """An upstream HEAD of the tag with the mirror's token and every manifest type."""
        path = f"/v2/{repo.repo}/manifests/{tag}"
        answer = await self.tokens.send(upstream, "HEAD", repo.repo, path, [("Accept", ACCEPT_ALL)])
        await answer.aclose()
        _raise_for_trouble(answer.status_code)
        if answer.status_code != 200:
            return None
        try:
            digest = parse_digest(answer.headers.get("docker-content-digest", ""))
        except DigestInvalid:
            return None
        length = answer.headers.get("content-length", "")
        if not length.isdigit():
            return None
        media_type = answer.headers.get("content-type", "").split(";")[0].strip()
        return digest, HeadAnswer(digest, media_type, int(length))

    async def _fetch(
        self, upstream: Upstream, repo: RepoKey, reference: Reference, digest: Digest | None
    ) -> CachedManifest | None:
        path = f"/v2/{repo.repo}/manifests/{reference.ref}"
        answer = await self.tokens.send(upstream, "GET", repo.repo, path, [("Accept", ACCEPT_ALL)])
        body = await read_small(answer)
        _raise_for_trouble(answer.status_code)
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
            return await self.store.put(repo, body, media_type, public=True, digest=expected)
        except VerifyError as exc:
            log.error("manifest %s from upstream does not match its digest: %s", reference.ref, exc)
            return None

"""Which repository holds which cached blob: the mirror serves a blob only where it knows.

A blob is stored once per digest, but a registry scopes it to repositories: Distribution
serves ``/v2/<name>/blobs/<digest>`` only if ``<name>`` holds it. A mirror that answered any
name from its cache would be an oracle for what was pulled, and would hand a blob fetched with
the mirror's upstream account (a private repository) to anyone naming a public one. So a
cached blob is served under a repository only once the mirror knows that repository holds it:

- a cached manifest needing the blob was served for the repository
  (:meth:`ManifestStore.blob_visibility`: on disk, bounded by the cache, kept across restarts);
- or the mirror fetched the blob from that repository, or an upstream ``HEAD`` confirmed it:
  remembered here, in memory, for at most ``capacity`` pairings (after a restart one free
  ``HEAD`` confirms them again).

Everything else is checked upstream before a byte is served (``docxy.pull.blobs``).
"""

from __future__ import annotations

from docxy.cache.manifests import ManifestStore
from docxy.cache.visibility import RepoKey, Visibility
from docxy.core.bounded import LruDict
from docxy.core.digests import Digest

#: Confirmed (repository, blob) pairings kept in memory: about 300 bytes each, a few MB at most.
MAX_PAIRINGS = 16384


class BlobPairings:
    """``visibility(repo, digest)``: how a blob is known in a repository, or None (unknown)."""

    def __init__(self, manifests: ManifestStore | None, capacity: int = MAX_PAIRINGS) -> None:
        self.manifests = manifests
        self._confirmed: LruDict[tuple[RepoKey, Digest], bool] = LruDict(capacity)

    def __len__(self) -> int:
        return len(self._confirmed)

    def visibility(self, repo: RepoKey, digest: Digest) -> Visibility | None:
        public = self._confirmed.get((repo, digest))
        if public is not None:
            return Visibility(repo, public)
        found = None
        if self.manifests is not None:
            found = self.manifests.blob_visibility(repo, digest)
        if found is not None:
            self.confirm(repo, digest, public=found.public)
        return found

    def confirm(self, repo: RepoKey, digest: Digest, *, public: bool) -> None:
        """Remember that ``repo`` holds ``digest``; a public pairing is never made private."""
        key = (repo, digest)
        self._confirmed.set(key, public or bool(self._confirmed.get(key)))

"""Who may read what: the sharing policy and the per-repository record it is applied to.

Content fetched with an anonymous upstream token is *public* and shared by every client. Content
that needed a client's own credentials is *private*: it is served from cache only to an identity
the route has (recently) seen authorized upstream for that repository. Blobs and manifests are
content-addressed and shared across repositories, so visibility is recorded per
(upstream, repository, digest): knowing a digest never unlocks it through another repository.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from docxy.cache.files import write_atomic
from docxy.core.digests import Digest


@dataclass(frozen=True, slots=True)
class RepoKey:
    """A repository at one upstream registry, e.g. ("registry-1.docker.io", "library/alpine")."""

    upstream: str
    repo: str

    def __post_init__(self) -> None:
        if not self.upstream or not self.repo:
            raise ValueError("RepoKey needs a non-empty upstream and repository")

    def hashed(self, *extra: str) -> str:
        """A file-name-safe key for this repository (plus ``extra`` parts); never the raw names."""
        encoded = json.dumps([self.upstream, self.repo, *extra]).encode()
        return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True, slots=True)
class Visibility:
    """How a cached item became known in one repository."""

    repo: RepoKey
    public: bool


@dataclass(frozen=True, slots=True)
class Identity:
    """The client asking. ``name`` None is anonymous; ``authorized`` lists the repositories the
    route has verified upstream for this identity (with the client's own credentials)."""

    name: str | None = None
    authorized: frozenset[RepoKey] = field(default_factory=frozenset)


ANONYMOUS = Identity()


def may_serve(entry: Visibility | None, identity: Identity) -> bool:
    """Whether a cached item with visibility ``entry`` may be sent to ``identity``.

    None (never seen in this repository) is never served: the route must first check upstream
    that the item exists in the repository for this client, then :meth:`AccessIndex.record` it.
    """
    if entry is None:
        return False
    return entry.public or entry.repo in identity.authorized


class AccessIndex:
    """Which digests were seen in which repository, and whether publicly.

    Layout: ``<root>/<sha256 of repo key>/<algo>/<hex>.public|.private`` (empty marker files,
    created atomically), plus ``repo.json`` naming the repository for listings. A public record
    is never downgraded by a later private one.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _marker(self, repo: RepoKey, digest: Digest, public: bool) -> Path:
        suffix = "public" if public else "private"
        return self.root / repo.hashed() / digest.algorithm / f"{digest.hex}.{suffix}"

    def record(self, repo: RepoKey, digest: Digest, *, public: bool) -> None:
        """Remember that ``digest`` was fetched in ``repo`` anonymously (public) or not."""
        marker = self._marker(repo, digest, public)
        if marker.exists():
            return
        if not marker.parent.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            repo_json = marker.parent.parent / "repo.json"
            write_atomic(repo_json, _repo_json(repo), repo_json.parent, sync=False)
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)

    def visibility(self, repo: RepoKey, digest: Digest) -> Visibility | None:
        """Public if ever seen publicly in ``repo``, private if seen only privately, else None."""
        if self._marker(repo, digest, True).exists():
            return Visibility(repo, public=True)
        if self._marker(repo, digest, False).exists():
            return Visibility(repo, public=False)
        return None

    def forget(self, repo: RepoKey, digest: Digest) -> None:
        for public in (True, False):
            try:
                os.unlink(self._marker(repo, digest, public))
            except FileNotFoundError:
                pass

    def repositories(self) -> list[RepoKey]:
        """Every repository with a record (for ``docxy cache ls``)."""
        found = []
        if self.root.is_dir():
            for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
                try:
                    data = json.loads(Path(entry.path, "repo.json").read_text())
                    found.append(RepoKey(str(data["upstream"]), str(data["repo"])))
                except (OSError, ValueError, KeyError, TypeError):
                    continue
        return found


def _repo_json(repo: RepoKey) -> bytes:
    return json.dumps({"upstream": repo.upstream, "repo": repo.repo}).encode()

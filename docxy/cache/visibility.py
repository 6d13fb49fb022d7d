"""Who may read what: the sharing policy and the per-repository record it is applied to.

Content fetched with an anonymous upstream token is *public* and shared by every client. Content
that needed a client's own credentials is *private*: it is served from cache only to an identity
the route has (recently) seen authorized upstream for that repository. Blobs and manifests are
content-addressed and shared across repositories, so visibility is recorded per
(upstream, repository, digest): knowing a digest never unlocks it through another repository.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from docxy.cache.files import globbed, unlink_quietly, write_atomic
from docxy.core.digests import Digest
from docxy.core.errors import DigestInvalid


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
    """Which manifests were seen in which repository, and whether publicly.

    Layout: ``<root>/by-digest/<sha256 of upstream>/<algo>/<xx>/<hex>/<sha256 of repo key>.public``
    (or ``.private``): a marker file holding the repository's names, for listings, written
    atomically. A public record is never downgraded by a later private one. The records of a
    manifest live as long as it does: the manifest store drops them all with
    :meth:`forget_digest` when it forgets the manifest. :meth:`migrate` moves records of the
    earlier layout, ``<root>/<sha256 of repo key>/<algo>/<hex>.public`` beside a ``repo.json``.
    """

    def __init__(self, root: Path, tmp_dir: Path | None = None) -> None:
        self.root = Path(root)
        #: Where records are written before they are renamed into place: the manifest store's
        #: ``tmp/`` for the cache (cleared at start, tidied by gc), never a record's own folder,
        #: where a temp file left by a kill would be seen by nothing.
        self.tmp_dir = Path(tmp_dir) if tmp_dir is not None else self.root / "tmp"

    def _digest_dir(self, upstream: str, digest: Digest) -> Path:
        """``upstream`` is the store's key of the upstream (:func:`upstream_key`)."""
        return self.root / "by-digest" / upstream / digest.algorithm / digest.hex[:2] / digest.hex

    def _marker(self, repo: RepoKey, digest: Digest, public: bool) -> Path:
        suffix = "public" if public else "private"
        directory = self._digest_dir(upstream_key(repo.upstream), digest)
        return directory / f"{repo.hashed()}.{suffix}"

    def record(self, repo: RepoKey, digest: Digest, *, public: bool) -> None:
        """Remember that ``digest`` was fetched in ``repo`` anonymously (public) or not."""
        marker = self._marker(repo, digest, public)
        if not marker.exists():
            write_atomic(marker, _repo_json(repo), self.tmp_dir, sync=False)

    def visibility(self, repo: RepoKey, digest: Digest) -> Visibility | None:
        """Public if ever seen publicly in ``repo``, private if seen only privately, else None."""
        if self._marker(repo, digest, True).exists():
            return Visibility(repo, public=True)
        if self._marker(repo, digest, False).exists():
            return Visibility(repo, public=False)
        return None

    def forget(self, repo: RepoKey, digest: Digest) -> None:
        for public in (True, False):
            unlink_quietly(self._marker(repo, digest, public))

    def forget_digest(self, upstream: str, digest: Digest) -> None:
        """Drop every repository's record of ``digest`` at ``upstream`` (the store's key). One
        the disk keeps raises (the caller keeps the manifest: records never outlive it)."""
        shutil.rmtree(self._digest_dir(upstream, digest), onerror=_missing_ok)

    def markers(self) -> Iterator[tuple[str, Digest, Path]]:
        """Every record as ``(upstream key, digest, marker path)`` (administration)."""
        base = self.root / "by-digest"
        for path in globbed(base, "*/*/*/*/*.*"):
            upstream, algorithm, _, hex_, _name = path.relative_to(base).parts
            try:
                yield upstream, Digest(algorithm, hex_), path
            except DigestInvalid:
                continue

    def digest_dirs(self) -> Iterator[tuple[str, Digest, Path]]:
        """Every manifest's folder of records as ``(upstream key, digest, folder)`` (gc)."""
        base = self.root / "by-digest"
        for path in globbed(base, "*/*/*/*"):
            upstream, algorithm, _, hex_ = path.relative_to(base).parts
            try:
                digest = Digest(algorithm, hex_)
            except DigestInvalid:
                continue
            if path.is_dir():
                yield upstream, digest, path

    def repositories(self) -> list[RepoKey]:
        """Every repository with a record (for ``docxy cache ls``)."""
        found: set[RepoKey] = set()
        for _, _, path in self.markers():
            if path.suffix in (".public", ".private"):
                repo = _parse_repo_json(path)
                if repo is not None:
                    found.add(repo)
        return sorted(found, key=lambda r: (r.upstream, r.repo))

    def upstream_of(self, key: str) -> str | None:
        """The upstream whose key (:func:`upstream_key`) is ``key``, as one of its records names
        it; None if it has none."""
        base = self.root / "by-digest" / key
        for marker in globbed(base, "*/*/*/*.*"):
            repo = _parse_repo_json(marker)
            if repo is not None and upstream_key(repo.upstream) == key:
                return repo.upstream
        return None

    def respell(self, old: str, new: str) -> int:
        """Record again under upstream ``new`` what was recorded under ``old``, the same registry
        spelled as keys spelled it before (:func:`docxy.core.hosts.earlier_spellings`), and drop
        the old records; returns how many moved."""
        base = self.root / "by-digest" / upstream_key(old)
        moved = 0
        for marker in globbed(base, "*/*/*/*.*"):
            algorithm, _, hex_, _name = marker.relative_to(base).parts
            repo = _parse_repo_json(marker)
            if repo is None or repo.upstream != old or marker.suffix not in (".public", ".private"):
                continue
            try:
                digest = Digest(algorithm, hex_)
            except DigestInvalid:
                continue
            self.record(RepoKey(new, repo.repo), digest, public=marker.suffix == ".public")
            moved += 1
        shutil.rmtree(base, ignore_errors=True)
        return moved

    def migrate(self, keep: Callable[[str, Digest], bool]) -> int:
        """Move the records of the earlier layout into this one, dropping those whose manifest
        ``keep(upstream key, digest)`` says is no longer cached; returns how many moved."""
        moved = 0
        if not self.root.is_dir():
            return moved
        for old in os.scandir(self.root):
            repo = _parse_repo_json(Path(old.path, "repo.json")) if old.is_dir() else None
            if repo is None:
                continue
            for marker in Path(old.path).glob("*/*.*"):
                hex_, _, suffix = marker.name.partition(".")
                try:
                    digest = Digest(marker.parent.name, hex_)
                except DigestInvalid:
                    continue
                if suffix in ("public", "private") and keep(upstream_key(repo.upstream), digest):
                    self.record(repo, digest, public=suffix == "public")
                    moved += 1
            shutil.rmtree(old.path, ignore_errors=True)
        return moved


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a record's temp file as earlier versions left them in the record's
    own folder (``<key>.public.<hex>``), cut by a kill before its rename."""
    parts = name.split(".")
    return len(parts) == 3 and parts[1] in ("public", "private")


def _missing_ok(_func: object, path: str, exc_info: tuple[type, BaseException, object]) -> None:
    """For ``shutil.rmtree``: a file gone meanwhile (another process removed it) is fine;
    another error is raised naming the whole path (rmtree's names only the file)."""
    exc = exc_info[1]
    if isinstance(exc, FileNotFoundError):
        return
    if isinstance(exc, OSError) and exc.errno == errno.ENOTEMPTY:
        # A record renamed into the folder meanwhile (a put or a confirm racing the delete):
        # that writer's, not a record the disk kept; a manifest then left uncached with it is
        # a leftover the next start or gc removes, and a put of it forgets it first.
        return
    if isinstance(exc, OSError):
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
    raise exc


def upstream_key(upstream: str) -> str:
    """How the cache names an upstream on disk: never the raw host."""
    return hashlib.sha256(upstream.encode()).hexdigest()


def _repo_json(repo: RepoKey) -> bytes:
    return json.dumps({"upstream": repo.upstream, "repo": repo.repo}).encode()


def _parse_repo_json(path: Path) -> RepoKey | None:
    try:
        data = json.loads(path.read_bytes())
        return RepoKey(str(data["upstream"]), str(data["repo"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None

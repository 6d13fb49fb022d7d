"""Content digests: the only thing in the cache that ever becomes a file name.

A :class:`Digest` can only be built from a validated algorithm and lowercase hex string, so any
path derived from one (:func:`blob_relpath`) has no separators, dots or traversal in it. Every
malformed digest, from a client's path or an upstream's header, raises the one
:class:`~docxy.core.errors.DigestInvalid` (400 ``DIGEST_INVALID`` at the boundary).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from docxy.core.errors import DigestInvalid

#: Accepted algorithms and the length of their hex encoding.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}

_HEX = {name: re.compile(f"[0-9a-f]{{{length}}}") for name, length in ALGORITHMS.items()}


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated ``<algorithm>:<hex>`` digest; constructing one with bad parts raises."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        pattern = _HEX.get(self.algorithm) if isinstance(self.algorithm, str) else None
        if pattern is None:
            raise DigestInvalid(
                "unsupported digest algorithm", {"algorithm": str(self.algorithm)[:80]}
            )
        if not isinstance(self.hex, str) or pattern.fullmatch(self.hex) is None:
            raise DigestInvalid(
                f"invalid {self.algorithm} digest: expected "
                f"{ALGORITHMS[self.algorithm]} lower-case hex characters",
                {"digest": f"{self.algorithm}:{str(self.hex)[:200]}"},
            )

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def relpath(self) -> PurePosixPath:
        """``<algorithm>/<first two hex>/<hex>``: spreads entries over 256 directories."""
        return PurePosixPath(self.algorithm, self.hex[:2], self.hex)


def parse_digest(text: str) -> Digest:
    """Parse ``sha256:<64 hex>`` or ``sha512:<128 hex>``; raise :class:`DigestInvalid` otherwise."""
    if not isinstance(text, str):
        raise DigestInvalid(f"digest must be a string, not {type(text).__name__}")
    algorithm, sep, hex_ = text.partition(":")
    if not sep:
        raise DigestInvalid("invalid digest: no algorithm prefix", {"digest": text[:200]})
    return Digest(algorithm, hex_)


def is_digest(text: str) -> bool:
    """Whether ``text`` is a digest this cache accepts (e.g. to tell a tag from a digest)."""
    try:
        parse_digest(text)
    except DigestInvalid:
        return False
    return True


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    """The digest of ``data``."""
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())


def blob_relpath(digest: Digest) -> PurePosixPath:
    """Where a committed blob lives under the cache root: ``blobs/sha256/ab/abcdef...``."""
    return PurePosixPath("blobs") / digest.relpath()


def digest_from_relpath(parts: tuple[str, ...]) -> Digest | None:
    """Inverse of :meth:`Digest.relpath` for a scanned file: ``(algo, xx, hex)`` → digest.

    Returns None for anything that :meth:`Digest.relpath` could not have produced.
    """
    if len(parts) != 3:
        return None
    algorithm, prefix, hex_ = parts
    try:
        digest = Digest(algorithm, hex_)
    except DigestInvalid:
        return None
    return digest if prefix == hex_[:2] else None

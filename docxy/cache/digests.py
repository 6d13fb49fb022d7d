"""Content digests: the only thing in the cache that ever becomes a file name.

A :class:`Digest` can only be built from a validated algorithm and lowercase hex string, so any
path derived from one (:func:`blob_relpath`) has no separators, dots or traversal in it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from docxy.cache.errors import InvalidDigest

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
            raise InvalidDigest(f"unsupported digest algorithm {self.algorithm!r}")
        if not isinstance(self.hex, str) or pattern.fullmatch(self.hex) is None:
            raise InvalidDigest(
                f"{self.algorithm} digest must be {ALGORITHMS[self.algorithm]} lowercase hex digits"
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
    """Parse ``sha256:<64 hex>`` or ``sha512:<128 hex>``; raise :class:`InvalidDigest` otherwise."""
    if not isinstance(text, str):
        raise InvalidDigest(f"digest must be a string, not {type(text).__name__}")
    algorithm, sep, hex_ = text.partition(":")
    if not sep:
        raise InvalidDigest(f"digest {text[:80]!r} has no algorithm prefix")
    return Digest(algorithm, hex_)


def is_digest(text: str) -> bool:
    """Whether ``text`` is a digest this cache accepts (e.g. to tell a tag from a digest)."""
    try:
        parse_digest(text)
    except InvalidDigest:
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
    except InvalidDigest:
        return None
    return digest if prefix == hex_[:2] else None

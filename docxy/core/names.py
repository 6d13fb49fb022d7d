"""Pure parsing of registry API paths, repository names, tags and digests.

The grammar is the OCI distribution spec's: a name is path components of lower-case
alphanumerics separated by ``.``, ``_``, ``__`` or runs of ``-``, joined by ``/``; a tag is
``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}``; a digest is ``algorithm:encoded``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from docxy.core.digests import Digest, parse_digest
from docxy.core.errors import NameInvalid, NotFound, RegistryError, TagInvalid

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
MAX_NAME_LENGTH = 255


class Kind(Enum):
    MANIFEST = "manifests"
    BLOB = "blobs"


@dataclass(frozen=True, slots=True)
class Reference:
    """One ``/v2/<name>/<kind>/<reference>`` request target."""

    name: str
    kind: Kind
    tag: str | None = None
    digest: Digest | None = None

    @property
    def ref(self) -> str:
        return str(self.digest) if self.digest is not None else str(self.tag)


def validate_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_LENGTH:
        raise NameInvalid("invalid repository name", {"name": name[:MAX_NAME_LENGTH]})
    for component in name.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise NameInvalid(
                "invalid repository name: components are lower-case letters, digits and "
                "single separators (. _ __ -), joined by /",
                {"name": name},
            )
    return name


def validate_tag(text: str) -> str:
    if not _TAG.fullmatch(text):
        raise TagInvalid("invalid tag", {"tag": text[:200]})
    return text


def parse_v2_path(raw_path: str) -> Reference | None:
    """Parse a raw (still percent-encoded) request path below ``/v2/``.

    Returns ``None`` for ``/v2/`` itself; raises ``NotFound`` for paths the API does not have,
    and ``NameInvalid``/``DigestInvalid``/``TagInvalid`` for bad parts. Percent-encoding is
    never decoded: no valid name, tag or digest contains ``%``, so ``%2F`` or ``%2e%2e`` cannot
    smuggle a separator or a traversal past the grammar.
    """
    if not raw_path.startswith("/v2/"):
        raise NotFound("unknown path")
    rest = raw_path[len("/v2/") :]
    if rest == "":
        return None
    parts = rest.split("/")
    if len(parts) < 3 or parts[-2] not in ("manifests", "blobs"):
        raise NotFound("unknown registry API path", {"path": raw_path[:200]})
    kind = Kind(parts[-2])
    name = validate_name("/".join(parts[:-2]))
    ref = parts[-1]
    if kind is Kind.BLOB:
        return Reference(name, kind, digest=parse_digest(ref))
    if ":" in ref:
        return Reference(name, kind, digest=parse_digest(ref))
    return Reference(name, kind, tag=validate_tag(ref))


def upstream_name(name: str, library_prefix: bool) -> str:
    """Docker Hub keeps official images under ``library/``: ``redis`` → ``library/redis``."""
    if library_prefix and "/" not in name:
        return f"library/{name}"
    return name


# --- image references: what a person types (`docker pull redis:7`) -------------------

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?")
DOCKER_HUB = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True, slots=True)
class ImageRef:
    """``[domain/]name[:tag][@digest]`` as Docker reads it; ``domain`` None means Docker Hub."""

    domain: str | None
    name: str
    tag: str | None
    digest: Digest | None

    @property
    def ref(self) -> str:
        """What goes after ``/manifests/``: the digest if given, else the tag."""
        return str(self.digest) if self.digest is not None else str(self.tag)

    def __str__(self) -> str:
        text = f"{self.domain}/{self.name}" if self.domain else self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def on_hub(self) -> bool:
        return self.domain is None or self.domain in DOCKER_HUB


def parse_image_ref(text: str, *, library_prefix: bool = True) -> ImageRef:
    """Parse an image reference; raise ValueError with a readable message when it is not one.

    ``redis`` → ``library/redis:latest``; ``ghcr.io/a/b@sha256:...``; ``localhost:5000/x:1``.
    The ``library/`` prefix is added to one-component names on Docker Hub only.
    """
    rest, _, digest_text = text.strip().partition("@")
    digest = None
    if digest_text:
        try:
            digest = parse_digest(digest_text)
        except RegistryError as exc:
            raise ValueError(f"{text!r}: {exc.message}") from None
    domain = None
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, rest = first, remainder
        if not _DOMAIN.fullmatch(domain):
            raise ValueError(f"{text!r}: invalid registry host {domain!r}")
    name, colon, tag = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        validate_name(name)
        if colon:
            validate_tag(tag)
    except RegistryError as exc:
        raise ValueError(f"{text!r}: {exc.message}") from None
    if domain in DOCKER_HUB or domain is None:
        name = upstream_name(name, library_prefix)
    if not colon and digest is None:
        tag = "latest"
    return ImageRef(domain, name, tag or None, digest)

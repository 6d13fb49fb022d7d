"""Pure handling of the Bearer token protocol: challenges and scopes.

A registry answers ``401`` with ``WWW-Authenticate: Bearer realm="...",service="...",scope="..."``.
The mirror replaces the realm with its own token endpoint so that clients only ever talk to
the mirror, and rewrites one-component repository names in scopes to Docker Hub's ``library/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# One ``key=value`` of a challenge; the empty list elements before it (``a="1", , b="2"``),
# which RFC 9110 5.6.1 has recipients skip, are skipped with it.
_PARAM = re.compile(
    r'(?:\s*,)*\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?'
)


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    def render(self) -> str:
        parts = []
        for key, value in self.params.items():
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{key}="{escaped}"')
        return f"{self.scheme} {','.join(parts)}" if parts else self.scheme


def _read_params(rest: str) -> tuple[dict[str, str], bool]:
    """The ``key=value`` pairs at the start of ``rest``, and whether they were all of it."""
    params, used = _params_at(rest)
    return params, used == len(rest)


def _params_at(rest: str) -> tuple[dict[str, str], int]:
    """The ``key=value`` pairs at the start of ``rest``, and how many characters they took."""
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        param = _PARAM.match(rest, position)
        if param is None or param.end() == position:
            break
        quoted, bare = param.group(2), param.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else (bare or "")
        params[param.group(1).lower()] = value
        position = param.end()
    return params, position


def _scheme(header: str) -> tuple[str, str] | None:
    """The scheme at the start of `header` and what follows it. A scheme with no parameters
    may be followed by the next challenge at once (``Negotiate, Bearer realm="..."``)."""
    match = re.match(r"([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$|(?=,))", header)
    return None if match is None else (match.group(1), header[match.end() :])


def parse_challenge(header: str) -> Challenge | None:
    """Parse one ``WWW-Authenticate`` value; ``None`` when it is not ``scheme params``."""
    found = _scheme(header.strip())
    if found is None:
        return None
    params, whole = _read_params(found[1])
    return Challenge(found[0], params) if whole else None


def rewrite_challenge(
    header: str, realm: str, library_prefix: bool, *, prefix: str | None = None
) -> str:
    """Point a Bearer challenge at the mirror's token endpoint; other schemes pass unchanged.

    ``prefix`` (``ghcr.io``) is put back in front of scope names for a client that pulls by
    path prefix, so the scope names the repository the way the client does.
    """
    found = _scheme(header.strip())
    if found is None or found[0].lower() != "bearer":
        return header
    # A Bearer challenge never leaves with the upstream's realm, even one this parser cannot
    # read to the end (another challenge after it, an odd parameter): what it read is kept.
    params, _ = _read_params(found[1])
    params["realm"] = realm
    if "scope" in params:
        params["scope"] = " ".join(
            prefix_scope(rewrite_scope(s, library_prefix), prefix) for s in params["scope"].split()
        )
    return Challenge("Bearer", params).render()


def with_error(header: str, error: str) -> str:
    """A Bearer challenge (one, as :func:`rewrite_challenges` makes them) with the RFC 6750
    §3.1 ``error`` parameter ``error`` added; one that names an error already, or of another
    scheme, unchanged."""
    found = _scheme(header.strip())
    if found is None or found[0].lower() != "bearer":
        return header
    params, whole = _read_params(found[1])
    if not whole or "error" in params:
        return header
    params["error"] = error
    return Challenge(found[0], params).render()


def split_challenges(header: str) -> list[str]:
    """The challenges of one ``WWW-Authenticate`` value, each as its own text.

    RFC 7235 lets one value hold several (``Basic realm="r", Bearer realm="..."``), and a
    client joining repeated headers (httpx does) makes one of them. Empty list elements, leading
    ones too (``, Bearer realm="..."``), are skipped (RFC 9110 5.6.1). A piece that reads as no
    challenge (no scheme) ends the list: it is dropped, never passed on.
    """
    found: list[str] = []
    rest = header.strip().lstrip(" \t,")
    while rest:
        scheme = _scheme(rest)
        if scheme is None:
            break
        after = scheme[1]
        _, used = _params_at(after)
        end = len(rest) - len(after) + used
        found.append(rest[:end].strip().rstrip(",").strip())
        rest = rest[end:].lstrip(" \t,")
    return found


def bearer_challenge(values: list[str]) -> Challenge | None:
    """The first Bearer challenge with a realm among ``WWW-Authenticate`` values (each may
    hold several challenges)."""
    for value in values:
        for text in split_challenges(value):
            parsed = parse_challenge(text)
            if parsed is not None and parsed.scheme.lower() == "bearer" and parsed.realm:
                return parsed
    return None


def rewrite_challenges(
    values: list[str], realm: str, library_prefix: bool, *, prefix: str | None = None
) -> list[str]:
    """The ``WWW-Authenticate`` values to relay for an upstream's: one a challenge.

    When the upstream offers a Bearer challenge (alone, or beside Basic, in one value or in
    several), the client gets the Bearer ones only, each pointed at the mirror's token
    endpoint: the mirror speaks tokens to its clients, and an upstream's realm never reaches
    them. (Docker's client answers every scheme it was offered, in its own order: a Basic
    challenge beside the mirror's Bearer would have it send Basic to the mirror, or fail
    for want of a password.) Without one (a Basic-only registry), the values pass unchanged.
    """
    challenges = [text for value in values for text in split_challenges(value)]
    # The scheme as parse_challenge reads it (``Bearer,realm=...`` is Bearer to it too).
    bearers = [text for text in challenges if _is_bearer(text)]
    if not bearers:
        return list(values)
    return [rewrite_challenge(text, realm, library_prefix, prefix=prefix) for text in bearers]


def offers_bearer(values: list[str]) -> bool:
    """Whether ``WWW-Authenticate`` ``values`` offer a Bearer challenge (a token service's)."""
    return any(_is_bearer(text) for value in values for text in split_challenges(value))


def _is_bearer(text: str) -> bool:
    found = _scheme(text.strip())
    return found is not None and found[0].lower() == "bearer"


def _repository_scope(scope: str) -> tuple[str, str] | None:
    """``repository:a/b:pull`` → (``a/b``, ``pull``); None for other scopes."""
    parts = scope.split(":")
    if len(parts) < 3 or parts[0] != "repository":
        return None
    return ":".join(parts[1:-1]), parts[-1]


def scope_repository(scope: str) -> str | None:
    """The repository a ``repository:<name>:<actions>`` scope names, else None."""
    found = _repository_scope(scope)
    return found[0] if found is not None else None


def prefix_scope(scope: str, prefix: str | None) -> str:
    """``repository:owner/img:pull`` → ``repository:ghcr.io/owner/img:pull``."""
    found = _repository_scope(scope)
    if prefix is None or found is None or not found[0]:
        return scope
    return f"repository:{prefix}/{found[0]}:{found[1]}"


def unprefix_scope(scope: str, prefix: str) -> str:
    """``repository:ghcr.io/owner/img:pull`` → ``repository:owner/img:pull``; others unchanged."""
    found = _repository_scope(scope)
    if found is None or not found[0].startswith(prefix + "/"):
        return scope
    return f"repository:{found[0][len(prefix) + 1 :]}:{found[1]}"


def rewrite_scope(scope: str, library_prefix: bool) -> str:
    """``repository:redis:pull`` → ``repository:library/redis:pull`` (Docker Hub only).

    Other resource types and multi-component names pass unchanged. A scope's name may carry a
    tag-like suffix in the form ``repository:name:tag:pull`` only in malformed requests; the last
    colon always separates the actions.
    """
    parts = scope.split(":")
    if not library_prefix or len(parts) < 3 or parts[0] != "repository":
        return scope
    name = ":".join(parts[1:-1])
    if "/" in name or not name:
        return scope
    return f"repository:library/{name}:{parts[-1]}"

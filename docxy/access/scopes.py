"""Token scopes: what a client asks for (``repository:library/redis:pull``) and what it gets.

A scope names a resource type, a name and actions; Docker sends one per repository it pulls
(``scope=repository:library/redis:pull``) and the registry's ``/v2/`` check needs ``pull`` on the
repository a request is for. The mirror is read-only, so it grants ``pull`` and nothing else, and
only on repositories (``registry:catalog:*`` and the like are never granted).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from docxy.core.errors import NameInvalid
from docxy.core.names import validate_name

GRANTABLE = frozenset({"pull"})
_SCOPE = re.compile(r"([a-z0-9]+)(?:\([a-z0-9]+\))?:(.+):([a-z0-9_*,]*)")


@dataclass(frozen=True, slots=True)
class Access:
    """One entry of a token's ``access`` claim."""

    type: str
    name: str
    actions: tuple[str, ...]

    def claim(self) -> dict[str, object]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}

    def scope(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scope(text: str) -> Access | None:
    """``repository:name:pull,push`` → Access; None if it is not one (the name may hold ``:``
    only as a registry host's port, so the last ``:`` separates the actions)."""
    match = _SCOPE.fullmatch(text)
    if match is None:
        return None
    kind, name, actions = match.groups()
    return Access(kind, name, tuple(a for a in actions.split(",") if a))


def parse_scopes(values: Iterable[str]) -> list[Access]:
    """Every scope in ``scope`` parameters (each may hold several, space-separated)."""
    found = []
    for value in values:
        for text in value.split(" "):
            access = parse_scope(text) if text else None
            if access is not None:
                found.append(access)
    return found


def grant(requested: Iterable[Access]) -> list[Access]:
    """What a signed-in user is given: the grantable actions of each repository scope."""
    granted: dict[str, set[str]] = {}
    for access in requested:
        if access.type != "repository" or not _valid_name(access.name):
            continue
        actions = GRANTABLE.intersection(access.actions)
        if actions:
            granted.setdefault(access.name, set()).update(actions)
    return [Access("repository", name, tuple(sorted(acts))) for name, acts in granted.items()]


def _valid_name(name: str) -> bool:
    try:
        validate_name(name)
    except NameInvalid:
        return False
    return True


def allows(
    access: Iterable[Access],
    repository: str,
    action: str,
    normal: Callable[[str], str] = str,
) -> bool:
    """Whether a token's ``access`` grants ``action`` on ``repository``; names compared through
    ``normal`` (``redis`` and ``library/redis`` are one repository on Docker Hub)."""
    wanted = normal(repository)
    return any(
        entry.type == "repository" and normal(entry.name) == wanted and action in entry.actions
        for entry in access
    )


def from_claim(claim: object) -> list[Access]:
    """A token's ``access`` claim back into values; anything malformed grants nothing."""
    if not isinstance(claim, list):
        return []
    found = []
    for item in claim:
        if not isinstance(item, dict):
            continue
        kind, name, actions = item.get("type"), item.get("name"), item.get("actions")
        if isinstance(kind, str) and isinstance(name, str) and isinstance(actions, list):
            found.append(Access(kind, name, tuple(a for a in actions if isinstance(a, str))))
    return found

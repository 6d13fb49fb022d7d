"""What a token from an upstream's token service says it grants (a pure core).

Distribution's token services hand out JWTs whose ``access`` claim lists what the token may
do: ``[{"type": "repository", "name": "library/alpine", "actions": ["pull"]}]``. Many give a
token to anyone for any scope, granting nothing where the asker may not read (Docker Hub
"always issues a token", its ``access`` then empty): a token got is no evidence that its
scope is readable; what it grants is. Read without checking the signature (the mirror holds
no key of the token service's, and only asks what the token claims, to weigh a verdict).
A token that is no JWT (opaque, as gcr.io's) says nothing: read as granting nothing.
"""

from __future__ import annotations

from docxy.core.claims import jwt_payload


def grants_pull(token: str, repository: str) -> bool:
    """Whether ``token``'s ``access`` claim grants ``pull`` (or ``*``) on ``repository``;
    False for a token that is no JWT, or whose payload is no JSON object."""
    claims = jwt_payload(token)  # None: opaque, or a JWE (five parts): nothing to read
    access = claims.get("access") if claims is not None else None
    if not isinstance(access, list):
        return False
    return any(_pulls(entry, repository) for entry in access)


def _pulls(entry: object, repository: str) -> bool:
    if not isinstance(entry, dict):
        return False
    if entry.get("type") != "repository" or entry.get("name") != repository:
        return False
    actions = entry.get("actions")
    return isinstance(actions, list) and ("pull" in actions or "*" in actions)

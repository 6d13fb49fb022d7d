"""docxy.core.grants: what a token service's token says it grants, read from its payload."""

from __future__ import annotations

import base64
import json

import pytest

from docxy.core.grants import grants_pull


def _part(data: object) -> str:
    raw = json.dumps(data).encode() if not isinstance(data, bytes) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def token(claims: object) -> str:
    return f"{_part({'alg': 'ES256'})}.{_part(claims)}.{_part(b'signature')}"


def entry(name: str = "library/alpine", actions: object = ("pull",)) -> dict[str, object]:
    actions = list(actions) if isinstance(actions, tuple) else actions
    return {"type": "repository", "name": name, "actions": actions}


@pytest.mark.parametrize(
    "access",
    [
        [entry()],
        [entry(actions=("push", "pull"))],
        [entry(actions=("*",))],
        [entry("library/other"), entry()],
    ],
)
def test_a_token_granting_pull_on_the_repository(access: list[object]) -> None:
    assert grants_pull(token({"sub": "", "access": access}), "library/alpine")


@pytest.mark.parametrize(
    "claims",
    [
        {"access": []},  # Docker Hub's anonymous token for a private or unknown name
        {"sub": ""},  # no access claim
        {"access": None},
        {"access": {"type": "repository"}},  # no list
        {"access": ["library/alpine"]},  # entries that are no objects
        {"access": [entry(actions=())]},
        {"access": [entry(actions=("push",))]},
        {"access": [entry(actions="pull")]},  # a string, not a list of actions
        {"access": [entry("library/alpine2")]},
        {"access": [entry("Library/Alpine")]},  # names are compared exactly
        {"access": [{**entry(), "type": "registry"}]},
        [entry()],  # a payload that is no object
    ],
)
def test_a_token_granting_no_pull_on_it(claims: object) -> None:
    assert not grants_pull(token(claims), "library/alpine")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "opaque-token",  # gcr.io's, GitHub's: nothing to read
        "a.b",
        "a.b.c.d.e",  # a JWE: encrypted
        f"h.{_part({'access': [entry()]})}.s.extra",
        "h.!!!!.s",  # no base64url
        "h.a.s",  # one character: no base64 length
        f"h.{_part(b'not json')}.s",
        "h." + _part(bytes([0xFF, 0xFE, 0])) + ".s",  # no text
        f"h.{_part(b'[' * 100_000)}.s",  # nested past the decoder's recursion
    ],
)
def test_a_token_that_cannot_be_read_grants_nothing(text: str) -> None:
    assert not grants_pull(text, "library/alpine")

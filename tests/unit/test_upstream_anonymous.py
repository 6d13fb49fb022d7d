"""docxy.upstream.anonymous: which tokens were handed out for anonymous pulls, and until when."""

from __future__ import annotations

import json
import time

import pytest

from docxy.core.headers import bearer_token
from docxy.upstream import anonymous
from docxy.upstream.anonymous import AnonymousTokens


@pytest.mark.parametrize(
    ("authorization", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic YWxpY2U6cHc=", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
    ],
)
def test_bearer_token(authorization: str, token: str | None) -> None:
    assert bearer_token(authorization) == token


def test_a_token_from_an_anonymous_answer_is_known_until_it_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    tokens = AnonymousTokens()
    tokens.remember_answer(
        json.dumps({"token": "t1", "access_token": "a1", "expires_in": 300}).encode()
    )
    assert tokens.holds("Bearer t1") and tokens.holds("Bearer a1")
    assert not tokens.holds("Bearer t2") and not tokens.holds("Basic t1")
    now[0] += 300
    assert tokens.holds("Bearer t1")
    now[0] += 1
    assert not tokens.holds("Bearer t1") and not tokens.holds("Bearer a1")


@pytest.mark.parametrize(
    "lifetime",
    [b'"soon"', b"Infinity", b"NaN", b"-1", b"9" * 400],
    ids=["words", "infinity", "nan", "negative", "past-floats"],
)
def test_an_answer_without_a_lifetime_holds_for_the_default(
    monkeypatch: pytest.MonkeyPatch, lifetime: bytes
) -> None:
    """400 digits: no float holds them, and the OverflowError escaped /auth/token."""
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    tokens = AnonymousTokens()
    tokens.remember_answer(b'{"token": "t", "expires_in": ' + lifetime + b"}")
    now[0] += anonymous.DEFAULT_LIFETIME
    assert tokens.holds("Bearer t")
    now[0] += 1
    assert not tokens.holds("Bearer t")


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'{"token": 7}', b'{"token": ""}', b'{"error": "no"}']
)
def test_an_answer_without_a_token_remembers_nothing(body: bytes) -> None:
    tokens = AnonymousTokens()
    tokens.remember_answer(body)
    assert not tokens.holds("Bearer ") and not tokens.holds("Bearer 7")


def test_the_oldest_tokens_go_first_beyond_the_capacity() -> None:
    tokens = AnonymousTokens(capacity=2)
    for token in ("a", "b", "c"):
        tokens.remember(token)
    assert [tokens.holds(f"Bearer {t}") for t in ("a", "b", "c")] == [False, True, True]

"""Edges of ``docxy.core.challenge`` that mutation testing found untested: empty list elements
and odd spacing in a challenge, one-letter schemes and parameter names, empty bare values, a
Bearer challenge with space before it, and the repository a scope names (and prefixes)."""

from __future__ import annotations

import pytest

from docxy.core.challenge import (
    Challenge,
    parse_challenge,
    prefix_scope,
    rewrite_challenge,
    scope_repository,
    split_challenges,
)


@pytest.mark.parametrize(
    ("header", "params"),
    [
        # empty list elements are skipped (RFC 9110 5.6.1), with no space around them too
        ('Bearer realm="r",,service="s"', {"realm": "r", "service": "s"}),
        ('Bearer realm="r", ,service="s"', {"realm": "r", "service": "s"}),
        ('Bearer realm="r" ,', {"realm": "r"}),  # a trailing comma after a space
        ('Bearer realm="r",x="1"', {"realm": "r", "x": "1"}),  # a one-letter parameter name
        ('Bearer realm="r",error=', {"realm": "r", "error": ""}),  # an empty bare value
        ('Bearer error=,realm="r"', {"error": "", "realm": "r"}),
    ],
)
def test_odd_but_whole_challenges(header: str, params: dict[str, str]) -> None:
    assert parse_challenge(header) == Challenge("Bearer", params)


def test_a_one_letter_scheme_is_a_scheme() -> None:
    assert parse_challenge('B realm="r"') == Challenge("B", {"realm": "r"})
    assert split_challenges('N, Bearer realm="r"') == ["N", 'Bearer realm="r"']


@pytest.mark.parametrize(
    ("header", "challenges"),
    [
        (', Bearer realm="r"', ['Bearer realm="r"']),  # a leading empty element
        (',, Basic realm="b", Bearer realm="r"', ['Basic realm="b"', 'Bearer realm="r"']),
        ('\t, Bearer realm="r"', ['Bearer realm="r"']),
        # no scheme: a word glued to what follows it (``;``, ``=``, ``"``) is none
        ('Bearer;realm="x"', []),
        ('Bearer"realm"', []),
        ('Basic realm="b", Bearer;realm="x"', ['Basic realm="b"']),
        # a piece ends where its last parameter does, space before its comma dropped
        ('Bearer realm="r" , Basic realm="b"', ['Bearer realm="r"', 'Basic realm="b"']),
    ],
)
def test_split_challenges_edges(header: str, challenges: list[str]) -> None:
    assert split_challenges(header) == challenges


def test_a_bearer_challenge_with_space_before_it_is_still_rewritten() -> None:
    """The upstream's realm never reaches the client, whatever space the value starts with."""
    header = '  Bearer realm="https://up.example/token",service="up"'
    rewritten = rewrite_challenge(header, "https://m.example/auth/token", True)
    assert rewritten == 'Bearer realm="https://m.example/auth/token",service="up"'


@pytest.mark.parametrize(
    ("scope", "repository"),
    [
        ("repository:a/b:pull", "a/b"),
        ("repository:redis:pull,push", "redis"),
        ("repository:a:b:pull", "a:b"),  # the last colon separates the actions
        ("repository::pull", ""),
        ("registry:catalog:*", None),
        ("repository:a", None),
        ("", None),
    ],
)
def test_scope_repository(scope: str, repository: str | None) -> None:
    assert scope_repository(scope) == repository


@pytest.mark.parametrize(
    ("scope", "prefixed"),
    [
        ("repository:owner/img:pull", "repository:ghcr.io/owner/img:pull"),
        ("repository::pull", "repository::pull"),  # no name: nothing to put a prefix before
        ("registry:catalog:*", "registry:catalog:*"),
    ],
)
def test_prefix_scope(scope: str, prefixed: str) -> None:
    assert prefix_scope(scope, "ghcr.io") == prefixed
    assert prefix_scope(scope, None) == scope

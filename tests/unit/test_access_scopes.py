"""Token scopes: parsing what Docker asks for, granting pull only, checking a request."""

from __future__ import annotations

import pytest

from docxy.access.scopes import Access, allows, from_claim, grant, parse_scope, parse_scopes
from docxy.core.names import upstream_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("repository:library/redis:pull", Access("repository", "library/redis", ("pull",))),
        ("repository:a/b:pull,push", Access("repository", "a/b", ("pull", "push"))),
        ("repository(plugin):x:pull", Access("repository", "x", ("pull",))),
        ("registry:catalog:*", Access("registry", "catalog", ("*",))),
        ("repository:host:5000/x:pull", Access("repository", "host:5000/x", ("pull",))),
        ("repository:redis:", Access("repository", "redis", ())),
    ],
)
def test_parse_scope(text: str, expected: Access) -> None:
    assert parse_scope(text) == expected


@pytest.mark.parametrize("text", ["", "repository", "repository:redis", "Repo:x:pull", "a b:c:d"])
def test_parse_scope_refuses(text: str) -> None:
    assert parse_scope(text) is None


def test_parse_scopes_splits_spaces_and_skips_junk() -> None:
    found = parse_scopes(["repository:a:pull repository:b:pull", "junk", ""])
    assert [a.name for a in found] == ["a", "b"]


def test_grant_gives_pull_only_on_valid_repositories() -> None:
    requested = parse_scopes(
        [
            "repository:library/redis:pull,push",
            "repository:x/y:push",
            "repository:Bad/Name:pull",
            "registry:catalog:*",
            "repository:library/redis:pull",
        ]
    )
    assert grant(requested) == [Access("repository", "library/redis", ("pull",))]


def test_allows_checks_repository_and_action() -> None:
    access = [Access("repository", "redis", ("pull",))]
    assert allows(access, "redis", "pull")
    assert not allows(access, "redis", "push")
    assert not allows(access, "other", "pull")
    assert not allows([Access("registry", "redis", ("pull",))], "redis", "pull")
    hub = lambda name: upstream_name(name, True)  # noqa: E731
    assert allows(access, "library/redis", "pull", hub)
    assert not allows(access, "library/redis", "pull")


@pytest.mark.parametrize(
    "claim",
    [None, "x", [1], [{"type": "repository", "name": "a", "actions": "pull"}], [{"name": "a"}]],
)
def test_malformed_claims_grant_nothing(claim: object) -> None:
    assert not any(a.actions for a in from_claim(claim))


def test_claim_round_trip() -> None:
    access = Access("repository", "a/b", ("pull",))
    assert from_claim([access.claim()]) == [access]

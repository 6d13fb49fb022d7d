"""``docxy.http.token_ask``: the GET and the OAuth2 POST form of a token request as one value."""

from __future__ import annotations

import json

import pytest

from docxy.http.token_ask import basic_authorization, for_post_client, from_form, from_query

QUERY = [("upstream", "ghcr.io")]


def test_a_password_grant_becomes_basic_and_account() -> None:
    form = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "p:w"),
        ("scope", "repository:a:pull repository:b:pull"),
        ("service", "s"),
        ("client_id", "containerd-client"),
        ("access_type", "offline"),
    ]
    ask = from_form(QUERY, form, None)
    assert ask.posted and ask.credentialed and ask.refresh_token is None
    assert ask.authorization == basic_authorization("alice", "p:w")
    assert ask.get("upstream") == "ghcr.io" and ask.get("account") == "alice"
    assert ask.scopes == ["repository:a:pull repository:b:pull"]
    assert all(name not in ("password", "username", "grant_type") for name, _ in ask.args)
    anonymous = ask.anonymous()
    assert not anonymous.credentialed and anonymous.get("account") is None
    assert anonymous.scopes == ask.scopes and anonymous.posted


def test_a_refresh_grant_keeps_its_token_apart() -> None:
    form = [("grant_type", "refresh_token"), ("refresh_token", "r1"), ("scope", "x")]
    ask = from_form([], form, "Basic c29tZTpvbmU=")
    assert ask.refresh_token == "r1" and ask.authorization is None
    assert all(value != "r1" for _, value in ask.args)


@pytest.mark.parametrize(
    "form",
    [
        [("grant_type", "password"), ("username", "alice")],  # no password
        [("grant_type", "refresh_token")],  # no token
        [("grant_type", "client_credentials"), ("client_id", "c")],
        [],
    ],
)
def test_a_form_without_a_usable_grant_is_anonymous(form: list[tuple[str, str]]) -> None:
    assert not from_form([], form, None).credentialed
    assert from_form([], form, "Basic eDp5").authorization == "Basic eDp5"  # the header's


def test_a_get_is_its_query_and_header() -> None:
    ask = from_query([("scope", "a"), ("scope", "b"), ("service", "s")], "Basic eDp5")
    assert ask.scopes == ["a", "b"] and ask.authorization == "Basic eDp5" and not ask.posted


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"token": "t", "expires_in": 9}', {"token": "t", "expires_in": 9, "access_token": "t"}),
        (b'{"token": "t", "access_token": "a"}', {"token": "t", "access_token": "a"}),
    ],
)
def test_answers_carry_access_token_for_post_clients(body: bytes, expected: object) -> None:
    assert json.loads(for_post_client(body)) == expected


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"details": "no"}', b'{"token": ""}'])
def test_other_answers_pass_unchanged(body: bytes) -> None:
    assert for_post_client(body) == body

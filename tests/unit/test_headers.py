"""Header policy: what the mirror forwards upstream, relays back, and keeps across redirects."""

from __future__ import annotations

import pytest

from docxy.core.headers import (
    HOP_BY_HOP,
    kept_retry_after,
    redirect_headers,
    request_headers,
    response_headers,
)

ACCEPTS = [
    ("Accept", "application/vnd.oci.image.index.v1+json"),
    ("Accept", "application/vnd.docker.distribution.manifest.list.v2+json"),
    ("Accept", "application/vnd.docker.distribution.manifest.v2+json"),
    ("accept", "application/vnd.oci.image.manifest.v1+json, */*"),
]


def test_every_accept_value_is_forwarded_in_order() -> None:
    assert request_headers(ACCEPTS) == ACCEPTS


@pytest.mark.parametrize(
    "header",
    [
        ("Authorization", "Bearer abc"),
        ("Range", "bytes=100-"),
        ("If-Range", '"etag"'),
        ("If-None-Match", '"sha256:abc"'),
        ("If-Modified-Since", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("RANGE", "bytes=0-1"),
        ("authorization", "Basic dXNlcjpwdw=="),
        ("Accept-Encoding", "gzip"),  # a body passed through is relayed as it comes
    ],
)
def test_request_headers_forwarded(header: tuple[str, str]) -> None:
    assert request_headers([header]) == [header]


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "Cookie",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "Forwarded",
        "User-Agent",
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "Content-Length",
        "Proxy-Authorization",
        "TE",
        "Upgrade",
        "X-Docxy-Anything",
    ],
)
def test_request_headers_dropped(name: str) -> None:
    assert request_headers([(name, "x"), ("Accept", "*/*")]) == [("Accept", "*/*")]


@pytest.mark.parametrize(
    "header",
    [
        ("Content-Type", "application/vnd.docker.distribution.manifest.v2+json"),
        ("Content-Length", "1234"),
        ("Docker-Content-Digest", "sha256:" + "a" * 64),
        ("ETag", '"sha256:abc"'),
        ("Content-Range", "bytes 100-199/200"),
        ("Accept-Ranges", "bytes"),
        ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("Cache-Control", "max-age=31536000"),
        ("ratelimit-limit", "100;w=21600"),
        ("ratelimit-remaining", "99;w=21600"),
    ],
)
def test_response_headers_relayed(header: tuple[str, str]) -> None:
    assert response_headers([header]) == [header]


@pytest.mark.parametrize(
    "name",
    sorted(HOP_BY_HOP)
    + [
        "Connection",
        "Transfer-Encoding",
        "Keep-Alive",
        "Set-Cookie",
        "Server",
        "Date",
        "WWW-Authenticate",
        "Location",
        "Docker-Distribution-Api-Version",  # the mirror sends its own, once
    ],
)
def test_response_headers_dropped(name: str) -> None:
    kept = ("Docker-Content-Digest", "sha256:" + "b" * 64)
    assert response_headers([(name, "x"), kept]) == [kept]


def test_headers_named_by_connection_are_dropped() -> None:
    upstream = [
        ("Connection", "keep-alive, X-Hop"),
        ("connection", " X-Other ,close"),
        ("X-Hop", "1"),
        ("x-other", "2"),
        ("X-End", "3"),
        ("Content-Type", "application/json"),
    ]
    assert response_headers(upstream) == [("X-End", "3"), ("Content-Type", "application/json")]


def test_connection_naming_a_content_header_drops_it() -> None:
    upstream = [("Connection", "Content-Range"), ("Content-Range", "bytes 0-1/2")]
    assert response_headers(upstream) == []


def test_response_headers_accept_a_generator() -> None:
    pairs = (pair for pair in [("Connection", "X-A"), ("X-A", "1"), ("ETag", '"e"')])
    assert response_headers(pairs) == [("ETag", '"e"')]


FORWARDED = [
    ("Accept", "application/vnd.oci.image.manifest.v1+json"),
    ("Authorization", "Bearer secret-token"),
    ("Range", "bytes=1048576-"),
    ("If-Range", '"etag"'),
]


def test_redirect_same_origin_keeps_authorization() -> None:
    assert redirect_headers(FORWARDED, same_origin=True) == FORWARDED


def test_redirect_cross_origin_drops_only_authorization() -> None:
    assert redirect_headers(FORWARDED, same_origin=False) == [
        ("Accept", "application/vnd.oci.image.manifest.v1+json"),
        ("Range", "bytes=1048576-"),
        ("If-Range", '"etag"'),
    ]


def test_redirect_cross_origin_drops_authorization_in_any_case() -> None:
    headers = [("authorization", "Bearer a"), ("AUTHORIZATION", "Basic b"), ("range", "bytes=5-")]
    assert redirect_headers(headers, same_origin=False) == [("range", "bytes=5-")]


def test_kept_retry_after_is_the_upstreams_own_and_nothing_else() -> None:
    upstream = [("Content-Type", "application/json"), ("retry-after", "37"), ("Server", "x")]
    assert kept_retry_after(upstream) == [("Retry-After", "37")]
    assert kept_retry_after([("Retry-After", "1"), ("Retry-After", "99")]) == [("Retry-After", "1")]
    assert kept_retry_after([("Content-Type", "application/json")]) == []

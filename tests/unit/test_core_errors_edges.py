"""Edges of ``docxy.core.errors`` that mutation testing found untested: the status, code and kind
of every error as the module's table gives them (an internal error's 500 ``UNKNOWN``, the
kinds a caller's ``except`` or ``isinstance`` tells apart: a token service's timeout is an
upstream timeout, a malformed digest a ValueError the cache's readers skip); the body with and
without a detail; the message as the exception's text; and the headers a kind of error adds,
with what they say when the detail leaves a value out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docxy.cache.manifests import ManifestStore
from docxy.cache.visibility import AccessIndex
from docxy.core import errors
from docxy.core.digests import digest_of, parse_digest
from docxy.core.errors import (
    DigestInvalid,
    NotFound,
    RangeNotSatisfiable,
    RegistryError,
    TooManyRequests,
    Unauthorized,
    Unsupported,
)

# The module docstring's table: class, its status, its code, the kind it is.
TABLE = [
    ("RegistryError", 500, "UNKNOWN", "Exception"),
    ("ClientError", 400, "UNKNOWN", "RegistryError"),
    ("NameInvalid", 400, "NAME_INVALID", "ClientError"),
    ("DigestInvalid", 400, "DIGEST_INVALID", "ClientError"),
    ("TagInvalid", 400, "TAG_INVALID", "ClientError"),
    ("RequestTooLarge", 414, "SIZE_INVALID", "ClientError"),
    ("RangeNotSatisfiable", 416, "RANGE_INVALID", "ClientError"),
    ("NotFound", 404, "NOT_FOUND", "ClientError"),
    ("Unauthorized", 401, "UNAUTHORIZED", "ClientError"),
    ("Denied", 403, "DENIED", "ClientError"),
    ("TooManyRequests", 429, "TOOMANYREQUESTS", "ClientError"),
    ("Unsupported", 405, "UNSUPPORTED", "ClientError"),
    ("MirrorUnavailable", 503, "UNAVAILABLE", "RegistryError"),
    ("UpstreamError", 502, "UNAVAILABLE", "RegistryError"),
    ("UpstreamUnavailable", 502, "UNAVAILABLE", "UpstreamError"),
    ("UpstreamTimeout", 504, "UNAVAILABLE", "UpstreamError"),
    ("TokenServiceTimeout", 504, "UNAVAILABLE", "UpstreamTimeout"),
    ("HopTimeout", 504, "UNAVAILABLE", "UpstreamTimeout"),
]


def make(name: str, message: str = "said") -> RegistryError:
    cls = getattr(errors, name)
    if cls is Unsupported:
        return Unsupported(message, allow=["GET", "HEAD"])
    error: RegistryError = cls(message)
    return error


@pytest.mark.parametrize(("name", "status", "code", "kind"), TABLE)
def test_every_error_has_the_status_code_and_kind_the_table_gives(
    name: str, status: int, code: str, kind: str
) -> None:
    error = make(name)
    assert error.status == status
    assert error.body() == {"errors": [{"code": code, "message": "said"}]}
    assert isinstance(error, getattr(errors, kind) if kind != "Exception" else Exception)


def test_a_malformed_digest_is_a_value_error_too() -> None:
    with pytest.raises(ValueError, match="invalid sha256 digest"):
        parse_digest("sha256:zz")
    assert isinstance(DigestInvalid("x"), ValueError)


def test_a_tag_record_with_a_malformed_digest_is_skipped_as_unreadable(tmp_path: Path) -> None:
    """The cache's readers take a malformed digest in their own record for an unreadable one,
    by its ValueError: ``docxy cache ls`` lists what it can, no traceback."""
    store = ManifestStore.open(
        tmp_path / "manifests", AccessIndex(tmp_path / "access"), tag_ttl=300.0
    )
    tags = tmp_path / "manifests" / "tags"
    tags.mkdir(parents=True, exist_ok=True)
    good = {"upstream": "u", "repo": "library/redis", "tag": "7", "digest": str(digest_of(b"m"))}
    for name, record in [("good", good), ("bad", {**good, "tag": "8", "digest": "sha256:zz"})]:
        (tags / f"{name}.json").write_text(json.dumps({**record, "fetched_at": 1, "public": True}))
    assert [entry.tag for entry in store.list_tags()] == ["7"]


def test_the_body_has_a_detail_only_when_there_is_one() -> None:
    assert NotFound("no such route").body() == {
        "errors": [{"code": "NOT_FOUND", "message": "no such route"}]
    }
    detail = {"name": "a/b", "size": 0}
    assert NotFound("no such route", detail).body() == {
        "errors": [{"code": "NOT_FOUND", "message": "no such route", "detail": detail}]
    }
    assert NotFound("m", 0).body()["errors"][0]["detail"] == 0  # falsy, still a detail
    assert "detail" not in NotFound("m", None).body()["errors"][0]


def test_the_message_is_the_exceptions_text() -> None:
    assert str(NotFound("no such route")) == "no such route"
    assert str(Unauthorized("who are you", "Bearer realm=x")) == "who are you"
    assert str(Unsupported("read-only", allow=["GET"])) == "read-only"


def test_a_range_outside_the_blob_says_the_blobs_size_or_that_it_is_unknown() -> None:
    assert RangeNotSatisfiable("no", {"size": 7}).headers() == [
        ("Content-Type", "application/json"),
        ("Content-Range", "bytes */7"),
    ]
    assert ("Content-Range", "bytes */*") in RangeNotSatisfiable("no", {}).headers()
    assert RangeNotSatisfiable("no").headers() == [("Content-Type", "application/json")]


def test_too_many_requests_says_when_to_come_back_one_second_unless_told() -> None:
    assert TooManyRequests("slow", {"retry_after": "30"}).headers() == [
        ("Content-Type", "application/json"),
        ("Retry-After", "30"),
    ]
    assert ("Retry-After", "1") in TooManyRequests("slow", {}).headers()
    assert TooManyRequests("slow").headers() == [("Content-Type", "application/json")]


def test_unauthorized_sends_its_challenge_and_its_detail() -> None:
    error = Unauthorized("who are you", 'Bearer realm="https://m/token"', {"why": "no token"})
    assert error.headers() == [
        ("Content-Type", "application/json"),
        ("WWW-Authenticate", 'Bearer realm="https://m/token"'),
    ]
    assert error.body()["errors"][0]["detail"] == {"why": "no token"}
    assert Unauthorized("who are you").headers() == [("Content-Type", "application/json")]


def test_unsupported_names_the_methods_allowed_comma_separated() -> None:
    error = Unsupported("read-only", {"method": "PUT"}, allow=["GET", "HEAD"])
    assert error.headers() == [("Content-Type", "application/json"), ("Allow", "GET, HEAD")]
    assert error.body()["errors"][0]["detail"] == {"method": "PUT"}

"""Repository names, tags, digests and ``/v2/`` paths: the distribution spec's grammar."""

from __future__ import annotations

import pytest

from docxy.core.digests import Digest, parse_digest
from docxy.core.errors import DigestInvalid, NameInvalid, NotFound, RegistryError, TagInvalid
from docxy.core.names import (
    MAX_NAME_LENGTH,
    Kind,
    Reference,
    parse_v2_path,
    upstream_name,
    validate_name,
    validate_tag,
)

SHA256 = "a" * 64
SHA512 = "0123456789abcdef" * 8


@pytest.mark.parametrize(
    "name",
    [
        "redis",
        "library/redis",
        "a",
        "0",
        "a/b/c/d/e",
        "my.org/team/app",
        "a_b",
        "a__b",
        "a-b",
        "a---b",
        "a.b.c",
        "x1/y-2/z__3",
        "a" * MAX_NAME_LENGTH,
        "/".join(["ab"] * 85),  # 254 characters of many components
    ],
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "a/..",
        "../a",
        "a/../b",
        ".",
        "a%2Fb",
        "a%2fb",
        "%2e%2e",
        "a//b",
        "/a",
        "a/",
        "Redis",
        "library/Redis",
        "ABC",
        "-a",
        "a-",
        "_a",
        "a_",
        ".a",
        "a.",
        "a___b",
        "a..b",
        "a._b",
        "a-.b",
        "a b",
        "a:b",
        "a@b",
        "a\\b",
        "é",
        "a" * (MAX_NAME_LENGTH + 1),
        "/".join(["ab"] * 86),  # 257 characters, each component valid
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(NameInvalid) as info:
        validate_name(name)
    assert info.value.status == 400
    assert info.value.body()["errors"][0]["code"] == "NAME_INVALID"


def test_name_error_detail_is_bounded() -> None:
    with pytest.raises(NameInvalid) as info:
        validate_name("a" * 10_000)
    assert len(str(info.value.detail)) < 400


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"sha256:{SHA256}", Digest("sha256", SHA256)),
        (f"sha512:{SHA512}", Digest("sha512", SHA512)),
        ("sha256:" + "0123456789abcdef" * 4, Digest("sha256", "0123456789abcdef" * 4)),
    ],
)
def test_valid_digests(text: str, expected: Digest) -> None:
    digest = parse_digest(text)
    assert digest == expected
    assert str(digest) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        ":" + SHA256,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63 + "G",
        "sha256:" + "g" * 64,
        "sha512:" + SHA256,  # sha256 length under sha512
        "sha256:" + SHA512,  # sha512 length under sha256
        "sha512:" + SHA512.upper(),
        "md5:" + "a" * 32,
        "sha1:" + "a" * 40,
        "sha384:" + "a" * 96,
        "SHA256:" + SHA256,
        "sha256:" + SHA256 + "\n",
        "sha256 :" + SHA256,
        "sha256:sha256:" + SHA256,
        "sha256:%2e%2e",
    ],
)
def test_invalid_digests(text: str) -> None:
    with pytest.raises(DigestInvalid) as info:
        parse_digest(text)
    assert info.value.status == 400
    assert info.value.code == "DIGEST_INVALID"


def test_unknown_algorithm_is_named_as_unsupported() -> None:
    with pytest.raises(DigestInvalid, match="unsupported"):
        parse_digest("blake3:" + "a" * 64)


def test_digest_error_detail_is_bounded() -> None:
    with pytest.raises(DigestInvalid) as info:
        parse_digest("sha256:" + "z" * 5000)
    assert len(str(info.value.detail)) < 400


@pytest.mark.parametrize(
    "tag",
    ["latest", "1", "1.25.3", "v1.0-rc.1", "_private", "A_B-c.d", "x" * 128, "0"],
)
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    "tag",
    ["", ".hidden", "-dash", "x" * 129, "a/b", "a:b", "a b", "a%2Fb", "..", "é", "a\n"],
)
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(TagInvalid) as info:
        validate_tag(tag)
    assert info.value.status == 400
    assert info.value.code == "TAG_INVALID"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/redis/manifests/latest", Reference("redis", Kind.MANIFEST, tag="latest")),
        (
            "/v2/library/redis/manifests/7.2",
            Reference("library/redis", Kind.MANIFEST, tag="7.2"),
        ),
        (
            f"/v2/a/b/c/d/manifests/sha256:{SHA256}",
            Reference("a/b/c/d", Kind.MANIFEST, digest=Digest("sha256", SHA256)),
        ),
        (
            f"/v2/org/app/blobs/sha256:{SHA256}",
            Reference("org/app", Kind.BLOB, digest=Digest("sha256", SHA256)),
        ),
        (
            f"/v2/x/blobs/sha512:{SHA512}",
            Reference("x", Kind.BLOB, digest=Digest("sha512", SHA512)),
        ),
        # a repository may itself be called "manifests" or "blobs"
        ("/v2/manifests/manifests/latest", Reference("manifests", Kind.MANIFEST, tag="latest")),
        (
            f"/v2/blobs/blobs/blobs/sha256:{SHA256}",
            Reference("blobs/blobs", Kind.BLOB, digest=Digest("sha256", SHA256)),
        ),
    ],
)
def test_parse_v2_path(path: str, expected: Reference) -> None:
    assert parse_v2_path(path) == expected


def test_reference_ref_is_tag_or_digest() -> None:
    tagged = parse_v2_path("/v2/redis/manifests/latest")
    pinned = parse_v2_path(f"/v2/redis/manifests/sha256:{SHA256}")
    assert tagged is not None and tagged.ref == "latest"
    assert pinned is not None and pinned.ref == f"sha256:{SHA256}"


def test_v2_root_is_not_a_reference() -> None:
    assert parse_v2_path("/v2/") is None


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v2",
        "/v1/redis/manifests/latest",
        "/v2/redis",
        "/v2/redis/latest",
        "/v2/redis/manifests",
        "/v2/redis/tags/list",
        "/v2/_catalog",
        "/v2/redis/blobs/uploads/",
        "/v2/redis/referrers/sha256:" + SHA256,
        "/v2/manifests/latest",
        "/v3/redis/manifests/latest",
    ],
)
def test_unknown_paths_are_not_found(path: str) -> None:
    with pytest.raises(NotFound) as info:
        parse_v2_path(path)
    assert info.value.status == 404


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/v2/Redis/manifests/latest", NameInvalid),
        ("/v2/a%2Fb/manifests/latest", NameInvalid),
        ("/v2/a%2fb/blobs/sha256:" + SHA256, NameInvalid),
        ("/v2/../manifests/latest", NameInvalid),
        ("/v2/a/../b/manifests/latest", NameInvalid),
        ("/v2/%2e%2e/manifests/latest", NameInvalid),
        ("/v2//manifests/latest", NameInvalid),
        ("/v2/a//b/manifests/latest", NameInvalid),
        ("/v2//a/manifests/latest", NameInvalid),
        ("/v2/redis/manifests/.bad", TagInvalid),
        ("/v2/redis/manifests/" + "t" * 129, TagInvalid),
        ("/v2/redis/manifests/", TagInvalid),
        ("/v2/redis/manifests/sha256:" + "A" * 64, DigestInvalid),
        ("/v2/redis/manifests/sha256:abc", DigestInvalid),
        ("/v2/redis/manifests/md5:" + "a" * 32, DigestInvalid),
        ("/v2/redis/blobs/latest", DigestInvalid),
        ("/v2/redis/blobs/", DigestInvalid),
        ("/v2/redis/blobs/sha256%3A" + SHA256, DigestInvalid),
    ],
)
def test_bad_parts_of_v2_paths(path: str, error: type[RegistryError]) -> None:
    with pytest.raises(error) as info:
        parse_v2_path(path)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("name", "prefix", "expected"),
    [
        ("redis", True, "library/redis"),
        ("redis", False, "redis"),
        ("library/redis", True, "library/redis"),
        ("bitnami/redis", True, "bitnami/redis"),
        ("a/b/c", True, "a/b/c"),
        ("a/b/c", False, "a/b/c"),
    ],
)
def test_upstream_name(name: str, prefix: bool, expected: str) -> None:
    assert upstream_name(name, prefix) == expected

"""Digest validation and the digest → path mapping (the only source of cache paths)."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from docxy.core.digests import (
    Digest,
    blob_relpath,
    digest_from_relpath,
    digest_of,
    is_digest,
    parse_digest,
)
from docxy.core.errors import DigestInvalid

HEX64 = "ab" + "0123456789abcdef" * 3 + "0123456789abcd"
HEX128 = "cd" + "0123456789abcdef" * 7 + "0123456789abcd"


@pytest.mark.parametrize(
    ("text", "algorithm"),
    [(f"sha256:{HEX64}", "sha256"), (f"sha512:{HEX128}", "sha512")],
)
def test_parse_good(text: str, algorithm: str) -> None:
    digest = parse_digest(text)
    assert digest.algorithm == algorithm
    assert str(digest) == text
    assert is_digest(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        HEX64,
        f"sha256:{HEX64[:-1]}",
        f"sha256:{HEX64}0",
        f"sha256:{HEX64.upper()}",
        f"SHA256:{HEX64}",
        f"sha256:{HEX64}\n",
        f" sha256:{HEX64}",
        f"sha256:{HEX64[:-1]}g",
        f"sha512:{HEX64}",
        f"sha256:{HEX128}",
        f"md5:{HEX64[:32]}",
        f"sha384:{HEX64}{HEX64[:32]}",
        "sha256:../../../../etc/passwd",
        f"sha256:{HEX64[:30]}/../{HEX64[:30]}",
        f"sha256:{HEX64[:63]}/",
        f"sha256:{HEX64[:63]}\x00",
        f"sha256:sha256:{HEX64}",
        f"sha256:{'٠' * 64}",  # Arabic-Indic digits match \d but are not hex
        "latest",
    ],
)
def test_parse_bad(text: str) -> None:
    with pytest.raises(DigestInvalid):
        parse_digest(text)
    assert not is_digest(text)


def test_invalid_digest_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_digest("nope")


@pytest.mark.parametrize(
    ("algorithm", "hex_"),
    [("sha256", "../" * 20), ("../blobs", HEX64), ("sha256", HEX64 + "/x"), ("", "")],
)
def test_constructor_validates_too(algorithm: str, hex_: str) -> None:
    with pytest.raises(DigestInvalid):
        Digest(algorithm, hex_)


def test_blob_relpath_layout() -> None:
    digest = parse_digest(f"sha256:{HEX64}")
    assert blob_relpath(digest) == PurePosixPath("blobs", "sha256", "ab", HEX64)
    assert ".." not in blob_relpath(digest).parts


def test_relpath_round_trip() -> None:
    digest = parse_digest(f"sha512:{HEX128}")
    assert digest_from_relpath(digest.relpath().parts) == digest


@pytest.mark.parametrize(
    "parts",
    [
        ("sha256", "00", HEX64),  # wrong fan-out directory
        ("sha256", HEX64),
        ("sha256", "ab", HEX64, "x"),
        ("sha256", "ab", HEX64 + ".tmp"),
        ("md5", "ab", HEX64),
    ],
)
def test_relpath_rejects_other_files(parts: tuple[str, ...]) -> None:
    assert digest_from_relpath(parts) is None


def test_digest_of_and_hasher() -> None:
    digest = digest_of(b"hello")
    assert str(digest) == (
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )
    hasher = digest.hasher()
    hasher.update(b"hello")
    assert hasher.hexdigest() == digest.hex
    assert digest_of(b"hello", "sha512").algorithm == "sha512"

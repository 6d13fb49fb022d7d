"""Review of ``docxy warm`` as an operator runs it from cron: a real mirror in front of a real
``docker-registry`` (``lab.registry``, ``lab.mirror``, on loopback), one pair a test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from docxy.cli.main import main
from lab.bed.images import (
    OCI_INDEX,
    Blob,
    Pusher,
    build_image,
    text_layer,
)
from lab.mirror import Mirror, launch_mirror, stop_mirror
from lab.ports import free_port
from lab.registry import RegistryProcess
from tests.unit.test_warm import cached_blobs

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

#: A mirror URL the usage errors name: they are refused before any request goes to it.
NOWHERE = "http://127.0.0.1:9"


@dataclass
class Lab:
    registry: RegistryProcess
    pusher: Pusher
    mirror: Mirror


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    registry = RegistryProcess("/usr/bin/docker-registry", tmp_path / "registry")
    (tmp_path / "registry").mkdir()
    registry.start()
    pusher = Pusher(registry.url, lambda repo: "none")  # no auth: the header is ignored
    mirror: Mirror | None = None
    try:
        mirror = launch_mirror(registry.url, tmp_path / "mirror")
        yield Lab(registry, pusher, mirror)
    finally:
        pusher.close()
        if mirror is not None:
            stop_mirror(mirror)
        registry.stop()


# --- 1. an index entry without a platform ---------------------------------------------------


def test_an_index_entry_without_a_platform_is_warmed_or_the_image_fails(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OCI index whose entries carry no ``platform`` (it is optional; containerd pulls such
    an entry for any platform): warm skipped them as if attestations, warmed the one that had
    a platform, and exited 0 with the other image's blobs never fetched."""
    amd64 = build_image([text_layer("amd64", oci=True)], "amd64", oci=True)
    bare = build_image([text_layer("no platform", oci=True)], "arm64", oci=True)
    for image in (amd64, bare):
        lab.pusher.push_image("team/app", image)
    entries = [
        amd64.manifest.descriptor() | {"platform": amd64.platform},
        bare.manifest.descriptor(),  # no platform
    ]
    index = Blob(OCI_INDEX, json.dumps({"schemaVersion": 2, "manifests": entries}).encode())
    lab.pusher.push_manifest("team/app", "1", index)

    code = main(["warm", "--mirror", lab.mirror.url, "team/app:1"])
    out, err = capsys.readouterr()
    bare_blobs = {bare.config.digest, *(layer.blob.digest for layer in bare.layers)}
    cached = cached_blobs(lab.mirror, capsys, bare_blobs)
    # Warmed (exit 0) only if every entry's blobs are in the mirror's cache.
    assert code != 0 or bare_blobs <= cached, (code, out, err)
    assert code == 0, err


# --- 2. a password in --mirror's URL --------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "login"), [("http", "bob:s3cret"), ("ftp", "bob:s3cret"), ("http", "bob:s3@cret")]
)
def test_a_password_in_the_mirror_url_is_refused_and_never_printed(
    capsys: pytest.CaptureFixture[str], scheme: str, login: str
) -> None:
    """``--mirror http://bob:s3cret@host`` (how curl takes a login): httpx ignores the URL's
    login under warm's own auth, so the mirror saw an anonymous client, and every message
    naming the mirror (``cannot reach the mirror at http://bob:s3cret@...``, a cron mail)
    printed the password. It is a usage error now, said without the password."""
    port = free_port()  # nothing listens there
    url = f"{scheme}://{login}@127.0.0.1:{port}"
    code = main(["warm", "--mirror", url, "alpine"])
    err = capsys.readouterr().err
    assert "s3" not in err and "cret" not in err, err
    assert code == 2, err
    assert "--username" in err and "--password-stdin" in err, err


# --- 3. a list of images from a file (cron) -------------------------------------------------


def test_images_from_a_list_file_with_comments_blank_lines_and_crlf(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The list a cron job keeps, edited on Windows: comments, blank lines, CRLF. Warm took
    images on its command line only, and ``docxy warm $(cat list)`` made each word of a
    comment an image: exit 2, nothing warmed. ``--file`` reads the list."""
    first = build_image([text_layer("first", oci=True)], "amd64", oci=True)
    second = build_image([text_layer("second", oci=True)], "amd64", oci=True)
    lab.pusher.push_image("team/first", first, "1")
    lab.pusher.push_image("team/second", second, "2")
    listed = tmp_path / "warm.list"
    listed.write_bytes(
        b"# images the build farm pulls\r\n\r\nteam/first:1\r\n   \r\n"
        b"team/second:2   # nightly\r\n# team/third:3\r\n"
    )

    code = main(["warm", "--mirror", lab.mirror.url, "--file", str(listed)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "total: 2 of 2 images cached" in out, out
    wanted = {
        digest
        for image in (first, second)
        for digest in (image.config.digest, *(layer.blob.digest for layer in image.layers))
    }
    assert wanted <= cached_blobs(lab.mirror, capsys, wanted)


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"# nothing but comments\r\n\r\n", "no image"),
        (b"alpine\r\nnot an image!\r\n", "line 2: one image a line"),
        (b"alpine\r\n\r\nNot/Valid\r\n", "line 3: 'Not/Valid': invalid"),
    ],
)
def test_a_list_file_that_names_no_image_or_a_bad_one_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, said: str
) -> None:
    listed = tmp_path / "warm.list"
    listed.write_bytes(content)
    # refused before any request: nothing is asked
    code = main(["warm", "--mirror", NOWHERE, "--file", str(listed)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(listed) in err and said in err, err


def test_a_list_file_not_there_and_no_image_at_all_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.list"
    assert main(["warm", "--mirror", NOWHERE, "--file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--file {missing}: cannot read it (No such file or directory)" in err, err
    assert main(["warm", "--mirror", NOWHERE]) == 2
    assert "no image to warm" in capsys.readouterr().err

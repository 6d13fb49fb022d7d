"""Review of ``docxy warm`` as an operator runs it from cron: a real mirror in front of a real
``docker-registry`` (``lab.registry``, ``lab.mirror``), both on 127.0.0.126 with ports from
8600-8699 (this review's loopback range), instead of the session bed on 127.0.0.1."""

from __future__ import annotations

import json
import socket
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
from lab.registry import RegistryProcess
from tests.unit.test_warm import cached_blobs

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

HOST = "127.0.0.126"
PORTS = range(8600, 8700)


def _port_in_range() -> int:
    """A port of 8600-8699 free on HOST (a bind there only, no wildcard)."""
    for port in PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError(f"no free port in {PORTS} on {HOST}")


_given: set[int] = set()


@pytest.fixture
def in_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's registry and mirror listen on HOST, on ports of this review's range."""
    _given.clear()
    for module in ("lab.registry", "lab.service", "lab.mirror"):
        monkeypatch.setattr(f"{module}.LOOPBACK", HOST)
    for module in ("lab.registry", "lab.mirror"):
        monkeypatch.setattr(f"{module}.free_port", lambda host=HOST: _port_in_range())


@dataclass
class Lab:
    registry: RegistryProcess
    pusher: Pusher
    mirror: Mirror


@pytest.fixture
def lab(in_range: None, tmp_path: Path) -> Iterator[Lab]:
    registry = RegistryProcess("/usr/bin/docker-registry", tmp_path / "registry")
    (tmp_path / "registry").mkdir()
    registry.start()
    pusher = Pusher(registry.url, lambda repo: "none")  # no auth: the header is ignored
    mirror: Mirror | None = None
    try:
        mirror = launch_mirror(registry.url, tmp_path / "mirror")
        assert mirror.url.startswith(f"http://{HOST}:86"), mirror.url
        yield Lab(registry, pusher, mirror)
    finally:
        pusher.close()
        if mirror is not None:
            stop_mirror(mirror)
        registry.stop()


def _cached_blobs(mirror: Mirror, capsys: pytest.CaptureFixture[str], wanted: set[str]) -> set[str]:
    """The blobs in the mirror's cache (``test_warm.cached_blobs``: waits up to 10 s for
    ``wanted``, a fill's commit ends a moment after warm's HEAD found its verified blob)."""
    return cached_blobs(mirror, capsys, wanted)


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
    cached = _cached_blobs(lab.mirror, capsys, bare_blobs)
    # Warmed (exit 0) only if every entry's blobs are in the mirror's cache.
    assert code != 0 or bare_blobs <= cached, (code, out, err)
    assert code == 0, err


# --- 2. a password in --mirror's URL --------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "login"), [("http", "bob:s3cret"), ("ftp", "bob:s3cret"), ("http", "bob:s3@cret")]
)
def test_a_password_in_the_mirror_url_is_refused_and_never_printed(
    in_range: None, capsys: pytest.CaptureFixture[str], scheme: str, login: str
) -> None:
    """``--mirror http://bob:s3cret@host`` (how curl takes a login): httpx ignores the URL's
    login under warm's own auth, so the mirror saw an anonymous client, and every message
    naming the mirror (``cannot reach the mirror at http://bob:s3cret@...``, a cron mail)
    printed the password. It is a usage error now, said without the password."""
    port = _port_in_range()  # nothing listens there
    url = f"{scheme}://{login}@{HOST}:{port}"
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
    assert wanted <= _cached_blobs(lab.mirror, capsys, wanted)


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
    # refused before any request: nothing listens at 8699, nothing is asked
    code = main(["warm", "--mirror", f"http://{HOST}:8699", "--file", str(listed)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(listed) in err and said in err, err


def test_a_list_file_not_there_and_no_image_at_all_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.list"
    assert main(["warm", "--mirror", f"http://{HOST}:8699", "--file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--file {missing}: cannot read it (No such file or directory)" in err, err
    assert main(["warm", "--mirror", f"http://{HOST}:8699"]) == 2
    assert "no image to warm" in capsys.readouterr().err

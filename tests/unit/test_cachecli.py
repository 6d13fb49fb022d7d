"""``docxy cache ls | du | rm | gc`` against a real cache directory filled through the store API."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from docxy.cache import Digest, RepoKey, digest_of, open_cache, parse_digest
from docxy.cache.blobs import DiskBlobStore
from docxy.cache.fill import BlobWriter
from docxy.cli.cache import NO_CAP_GIVEN, human_age, human_size
from docxy.cli.main import main
from docxy.core.names import ImageRef, parse_image_ref

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

UPSTREAM = "http://up.test"
HOST = "up.test"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


# --- image references -----------------------------------------------------------------------

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis", ImageRef(None, "library/redis", "latest", None)),
        ("redis:7", ImageRef(None, "library/redis", "7", None)),
        ("bitnami/redis", ImageRef(None, "bitnami/redis", "latest", None)),
        ("docker.io/redis", ImageRef("docker.io", "library/redis", "latest", None)),
        ("ghcr.io/a/b:v1", ImageRef("ghcr.io", "a/b", "v1", None)),
        ("ghcr.io/b", ImageRef("ghcr.io", "b", "latest", None)),
        ("localhost/x", ImageRef("localhost", "x", "latest", None)),
        ("localhost:5000/x/y:2", ImageRef("localhost:5000", "x/y", "2", None)),
        (f"redis@sha256:{HEX}", ImageRef(None, "library/redis", None, Digest("sha256", HEX))),
        (f"redis:7@sha256:{HEX}", ImageRef(None, "library/redis", "7", Digest("sha256", HEX))),
    ],
)
def test_parse_image_ref(text: str, expected: ImageRef) -> None:
    assert parse_image_ref(text) == expected


def test_parse_image_ref_without_library_prefix() -> None:
    assert parse_image_ref("redis", library_prefix=False).name == "redis"


@pytest.mark.parametrize(
    "text",
    ["", "Redis", "redis:", "redis:-x", "a//b", "redis@sha256:abc", "redis@md5:" + HEX, "../x"],
)
def test_parse_image_ref_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_image_ref(text)


def test_image_ref_round_trips() -> None:
    assert str(parse_image_ref("ghcr.io/a/b:v1")) == "ghcr.io/a/b:v1"
    assert parse_image_ref(f"x@sha256:{HEX}").ref == f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (2 << 20, "2.0 MiB"), (5 << 40, "5.0 TiB")],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(-5, "0s"), (59.9, "59s"), (60, "1m"), (7200, "2h"), (90000, "1d")]
)
def test_human_age(seconds: float, text: str) -> None:
    assert human_age(seconds) == text


# --- a populated cache ----------------------------------------------------------------------


@dataclass
class Populated:
    root: Path
    alpine: Digest  # library/alpine:3.20 — config, shared layer, own layer
    busybox: Digest  # library/busybox:1 — config, shared layer, own layer
    hello: Digest  # library/hello:latest — an index of two images
    secret: Digest  # acme/secret:v1 — private
    blobs: dict[str, Digest]
    children: list[Digest]  # hello's platform manifests

    def blob_path(self, name: str) -> Path:
        digest = self.blobs[name]
        return self.root / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex


def _descriptor(digest: Digest, size: int, media_type: str) -> dict[str, object]:
    return {"mediaType": media_type, "digest": str(digest), "size": size}


async def _populate(root: Path) -> Populated:
    cache = open_cache(root, max_size=1 << 20, tag_ttl=300)
    data = {
        name: f"{name} ".encode() * 100
        for name in ("shared", "alpine-cfg", "alpine-l", "busybox-cfg", "busybox-l")
        + ("amd64-cfg", "amd64-l", "arm64-cfg", "arm64-l", "secret-l")
    }
    digests = {}
    for name, content in data.items():
        digest = digest_of(content)
        writer = await cache.blobs.fetch_or_join(digest)
        assert isinstance(writer, BlobWriter)
        async with writer:
            await writer.write(content)
            assert await writer.commit(len(content)) is not None
        digests[name] = digest

    def image(cfg: str, *layers: str) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor(digests[cfg], len(data[cfg]), "application/json"),
            "layers": [_descriptor(digests[n], len(data[n]), "x/layer") for n in layers],
        }
        return json.dumps(doc).encode()

    async def tag(repo: str, name: str, content: bytes, media: str, public: bool = True) -> Digest:
        key = RepoKey(HOST, repo)
        stored = await cache.manifests.put(key, content, media, public=public)
        await cache.manifests.set_tag(key, name, stored.digest, public=public)
        return stored.digest

    alpine = await tag(
        "library/alpine", "3.20", image("alpine-cfg", "shared", "alpine-l"), OCI_MANIFEST
    )
    busybox = await tag(
        "library/busybox", "1", image("busybox-cfg", "shared", "busybox-l"), OCI_MANIFEST
    )
    children = []
    for arch in ("amd64", "arm64"):
        content = image(f"{arch}-cfg", f"{arch}-l")
        stored = await cache.manifests.put(
            RepoKey(HOST, "library/hello"), content, OCI_MANIFEST, public=True
        )
        children.append(
            _descriptor(stored.digest, len(content), OCI_MANIFEST)
            | {"platform": {"os": "linux", "architecture": arch}}
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    hello = await tag("library/hello", "latest", index, OCI_INDEX)
    secret = await tag(
        "acme/secret", "v1", image("alpine-cfg", "secret-l"), OCI_MANIFEST, public=False
    )
    platforms = [parse_digest(str(c["digest"])) for c in children]
    return Populated(root, alpine, busybox, hello, secret, digests, platforms)


@pytest.fixture
def cache(tmp_path: Path) -> Populated:
    return asyncio.run(_populate(tmp_path / "cache"))


def run(capsys: pytest.CaptureFixture[str], cache: Populated, *args: str) -> tuple[int, str, str]:
    action, *rest = args
    code = main(["cache", action, "--cache-dir", str(cache.root), "--upstream", UPSTREAM, *rest])
    out, err = capsys.readouterr()
    return code, out, err


def listed(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> tuple[list[list[str]], set[str]]:
    code, out, _ = run(capsys, cache, "ls")
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    tags = [row for row in rows if row[0] == "tag"]
    blobs = {row[1] for row in rows if row[0] == "blob"}
    return tags, blobs


# --- ls -------------------------------------------------------------------------------------


def test_ls_lists_tags_sorted_then_blobs(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    tags, blobs = listed(capsys, cache)
    assert [row[2] for row in tags] == [
        "acme/secret:v1",
        "library/alpine:3.20",
        "library/busybox:1",
        "library/hello:latest",
    ]
    alpine = ["tag", HOST, "library/alpine:3.20", str(cache.alpine), "public"]
    assert tags[1][:4] + tags[1][5:] == alpine
    assert re.fullmatch(r"\d+s", tags[1][4]), tags[1]  # seconds old (0s unless the machine stalled)
    assert tags[0][-1] == "private"
    assert blobs == {str(d) for d in cache.blobs.values()}


def test_ls_blobs_most_recently_used_first(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    old = time.time() - 3600
    for name in cache.blobs:
        os.utime(cache.blob_path(name), (old, old))
    os.utime(cache.blob_path("busybox-l"))
    code, out, _ = run(capsys, cache, "ls", "--blobs")
    assert code == 0
    lines = out.splitlines()
    assert all(line.startswith("blob") for line in lines)
    assert lines[0].split()[1] == str(cache.blobs["busybox-l"])
    assert re.search(r"used \d+s ago$", lines[0]), lines[0]  # just now: seconds, not 1h
    assert lines[1].endswith("used 1h ago")
    assert "  1000 B  " in lines[0]  # "busybox-l " * 100


def test_ls_tags_only(capsys: pytest.CaptureFixture[str], cache: Populated) -> None:
    code, out, _ = run(capsys, cache, "ls", "--tags")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["tag"] * 4


def test_ls_finds_the_cache_like_serve_does(
    capsys: pytest.CaptureFixture[str], cache: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCXY_CACHE_DIR", str(cache.root))
    assert main(["cache", "ls", "--tags"]) == 0
    assert "library/alpine:3.20" in capsys.readouterr().out


def test_ls_names_every_upstream_on_the_tags_registry_host(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """Two upstream sections may name one registry when they are the same upstream: the
    listing shows each tag under both names, not whichever came last."""
    both = f"upstreams=a.test={UPSTREAM},b.test={UPSTREAM}"
    code, out, _ = run(capsys, cache, "ls", "--tags", "--set", both)
    assert code == 0
    assert {line.split()[1] for line in out.splitlines()} == {"a.test,b.test"}


def test_ls_of_no_cache_lists_nothing_and_makes_none(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "none")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "no cache" in err
    assert not (tmp_path / "none").exists()


def test_config_error_exits_2(capsys: pytest.CaptureFixture[str], cache: Populated) -> None:
    code, out, err = run(capsys, cache, "du", "--set", "cache.max_size=lots")
    assert code == 2
    assert out == ""
    assert "cache.max_size" in err and "(flag)" in err


# --- du -------------------------------------------------------------------------------------


def test_du(capsys: pytest.CaptureFixture[str], cache: Populated) -> None:
    total = sum(p.stat().st_size for p in (cache.blob_path(n) for n in cache.blobs))
    code, out, _ = run(capsys, cache, "du", "--set", "cache.max_size=64K")
    assert code == 0
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["blobs"].strip() == "10"
    assert fields["tags"].strip() == "4"
    assert fields["size"].strip() == f"{human_size(total)} ({total} bytes)"
    assert fields["max_size"].strip() == "64.0 KiB (65536 bytes)"
    assert fields["used"].strip() == f"{100 * total / 65536:.1f}%"


def test_du_without_a_cap_given_shows_no_share_of_the_default(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """The default cap (20G) may not be the mirror's: du measures against none it was not given
    (it said "max_size: 20.0 GiB" and a used share of it)."""
    code, out, _ = run(capsys, cache, "du")
    assert code == 0
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in out.splitlines())}
    assert fields["max_size"] == NO_CAP_GIVEN
    assert fields["used"] == "-"
    assert fields["blobs"] == "10"


def _note_a_tag(cache: Populated) -> None:
    """What a pull of redis:7 by a client that has the image leaves: its tag noted from the
    HEAD, no manifest stored (no GET by digest followed)."""

    async def head_only() -> None:
        store = open_cache(cache.root, max_size=1 << 20, tag_ttl=300).manifests
        repo = RepoKey(HOST, "library/redis")
        await store.set_tag(repo, "7", parse_digest("sha256:" + "ab" * 32), public=True)

    asyncio.run(head_only())


def test_ls_marks_a_tag_noted_whose_manifest_is_not_cached(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """It was listed as any cached tag, which the mirror resolves from the upstream: an
    operator who checked ls before an outage was told the image was cached."""
    _note_a_tag(cache)
    code, out, _ = run(capsys, cache, "ls", "--tags")
    assert code == 0
    lines = {line.split()[2]: line for line in out.splitlines()}
    assert lines["library/redis:7"].split()[5:] == [
        "public",
        "noted",
        "(manifest",
        "not",
        "cached)",
    ]
    assert lines["library/alpine:3.20"].split()[5:] == ["public"]


def test_du_counts_only_the_tags_whose_manifests_are_cached(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    _note_a_tag(cache)
    code, out, _ = run(capsys, cache, "du")
    assert code == 0
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in out.splitlines())}
    assert fields["tags"] == "4 (and 1 noted, its manifest not cached)"


# --- rm -------------------------------------------------------------------------------------


def test_rm_forgets_the_tag_and_keeps_blobs(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    code, out, _ = run(capsys, cache, "rm", "alpine:3.20")
    assert code == 0
    assert f"untagged {HOST}/library/alpine:3.20 ({cache.alpine})" in out
    tags, blobs = listed(capsys, cache)
    assert "library/alpine:3.20" not in [row[2] for row in tags]
    assert len(blobs) == 10


def test_rm_blobs_keeps_blobs_shared_with_another_tag(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    code, out, _ = run(capsys, cache, "rm", "docker.io/library/busybox:1", "--blobs")
    assert code == 0, out
    assert "removed blob" in out
    _, blobs = listed(capsys, cache)
    gone = {name for name, digest in cache.blobs.items() if str(digest) not in blobs}
    assert gone == {"busybox-cfg", "busybox-l"}  # "shared" is alpine's too
    assert not cache.blob_path("busybox-l").exists()


def test_rm_leaves_the_last_pulled_times_of_other_images_alone(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """To find what other images need, ``rm --blobs`` reads their manifests: as a look, not
    a pull. It set each one's last-pulled time (which eviction goes by) to now, so the next
    ``gc`` or start evicted the images truly pulled last first."""
    days_ago = time.time() - 3 * 86400
    files = [path for path in cache.root.rglob("*") if path.is_file()]
    for path in files:
        os.utime(path, (days_ago, days_ago))
    code, out, _ = run(capsys, cache, "rm", "docker.io/library/busybox:1", "--blobs")
    assert code == 0, out
    code, out, _ = run(capsys, cache, "rm", f"library/hello@{cache.children[0]}")
    assert code == 0, out
    named = [str(d.hex) for d in (cache.alpine, cache.hello, cache.secret, *cache.children)]
    looked_at = [p for p in files if p.exists() and any(hexpart in p.name for hexpart in named)]
    assert looked_at, "the other images' manifests are where the test looks"
    assert [p for p in looked_at if p.stat().st_mtime > days_ago + 1] == []


def test_rm_blobs_keeps_config_shared_with_a_private_image(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    assert run(capsys, cache, "rm", "alpine:3.20", "--blobs")[0] == 0
    _, blobs = listed(capsys, cache)
    gone = {name for name, digest in cache.blobs.items() if str(digest) not in blobs}
    assert gone == {"alpine-l"}  # config is acme/secret's too, "shared" is busybox's


def test_rm_index_removes_every_platform(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    code, out, _ = run(capsys, cache, "rm", "hello", "--blobs")
    assert code == 0
    _, blobs = listed(capsys, cache)
    gone = {name for name, digest in cache.blobs.items() if str(digest) not in blobs}
    assert gone == {"amd64-cfg", "amd64-l", "arm64-cfg", "arm64-l"}


def test_rm_by_digest(capsys: pytest.CaptureFixture[str], cache: Populated) -> None:
    code, out, _ = run(capsys, cache, "rm", f"{HOST}/acme/secret@{cache.secret}", "--blobs")
    assert code == 0
    assert "untagged up.test/acme/secret:v1" in out
    _, blobs = listed(capsys, cache)
    assert str(cache.blobs["secret-l"]) not in blobs


def test_rm_untagged_digest_keeps_what_a_tag_reaches(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    code, out, _ = run(capsys, cache, "rm", f"hello@{cache.children[0]}", "--blobs")
    assert code == 0
    assert out == f"no tag points at {cache.children[0]}\n"  # and hello:latest still needs them
    assert len(listed(capsys, cache)[1]) == 10


def test_rm_blobs_of_an_artifact_leaves_the_image_it_refers_to(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An artifact (a signature, an SBOM: OCI 1.1 referrers) names the image it is about as its
    ``subject``; the image does not belong to it. ``rm --blobs`` of the artifact's tag takes the
    artifact's own blobs, never the blobs of that image (pulled by digest, say)."""
    root = tmp_path / "cache"
    repo = RepoKey(HOST, "library/app")
    blobs = {name: f"{name} ".encode() * 50 for name in ("cfg", "layer", "sbom-cfg", "sbom")}

    async def populate() -> None:
        cache = open_cache(root, max_size=1 << 20, tag_ttl=300)
        for content in blobs.values():
            writer = await cache.blobs.fetch_or_join(digest_of(content))
            assert isinstance(writer, BlobWriter)
            async with writer:
                await writer.write(content)
                assert await writer.commit(len(content)) is not None

        def manifest(cfg: str, layer: str, **extra: object) -> bytes:
            def descriptor(name: str) -> dict[str, object]:
                return _descriptor(digest_of(blobs[name]), len(blobs[name]), "x/y")

            doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(cfg)}
            return json.dumps(doc | {"layers": [descriptor(layer)], **extra}).encode()

        image = await cache.manifests.put(repo, manifest("cfg", "layer"), OCI_MANIFEST, public=True)
        subject = _descriptor(image.digest, len(image.content), OCI_MANIFEST)
        sbom = manifest("sbom-cfg", "sbom", subject=subject)
        stored = await cache.manifests.put(repo, sbom, OCI_MANIFEST, public=True)
        await cache.manifests.set_tag(repo, "sbom", stored.digest, public=True)

    asyncio.run(populate())
    code = main(
        ["cache", "rm", "app:sbom", "--blobs", "--cache-dir", str(root), "--upstream", UPSTREAM]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    removed = {name for name, content in blobs.items() if str(digest_of(content)) in out}
    assert removed == {"sbom-cfg", "sbom"}


@pytest.mark.parametrize("image", ["alpine:edge", "nginx", "other.test/library/alpine:3.20"])
def test_rm_not_cached_exits_1(
    capsys: pytest.CaptureFixture[str], cache: Populated, image: str
) -> None:
    code, out, err = run(capsys, cache, "rm", image)
    assert code == 1
    assert out == ""
    assert "not cached" in err


def test_rm_of_a_tag_cached_from_another_upstream_names_it_and_the_way_there(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """A mirror started with --upstream (or DOCXY_UPSTREAM_REGISTRY in its own unit), then
    `docxy cache rm alpine:3.20` in a shell without it: "not cached (... from
    registry-1.docker.io)", while `docxy cache ls` lists that very tag."""
    argv = ["cache", "rm", "--cache-dir", str(cache.root), "alpine:3.20"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "not cached" in err
    assert f"cached from {HOST}" in err and "--upstream" in err, err
    assert main([*argv[:2], "--upstream", UPSTREAM, *argv[2:]]) == 0


def test_rm_bad_reference_exits_2(capsys: pytest.CaptureFixture[str], cache: Populated) -> None:
    code, _, err = run(capsys, cache, "rm", "Alpine")
    assert code == 2
    assert "invalid repository name" in err


def test_rm_refuses_a_blob_being_read(capsys: pytest.CaptureFixture[str], cache: Populated) -> None:
    with cache.blob_path("busybox-l").open("rb"):
        code, out, err = run(capsys, cache, "rm", "busybox:1", "--blobs")
    assert code == 1
    assert f"{cache.blobs['busybox-l'].hex[:12]} is being read (pid {os.getpid()})" in err
    assert "nothing removed" in err
    tags, blobs = listed(capsys, cache)
    assert "library/busybox:1" in [row[2] for row in tags]
    assert len(blobs) == 10


# --- gc -------------------------------------------------------------------------------------


def test_gc_verify_reports_what_it_removed(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    (cache.root / "blobs" / "stray.txt").write_text("not a blob")
    old_tmp = cache.root / "tmp" / "sha256-dead.123"
    old_tmp.write_bytes(b"half a fill")
    os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))
    young_tmp = cache.root / "tmp" / "sha256-beef.456"  # a live mirror's fill in progress
    young_tmp.write_bytes(b"filling")
    cache.blob_path("amd64-l").write_bytes(b"bit rot")

    code, out, _ = run(capsys, cache, "gc", "--verify")
    assert code == 0
    report = {k.strip(): v.strip() for k, v in (line.split(":") for line in out.splitlines())}
    assert report["temp files removed"] == "1"
    assert report["stray files removed"] == "1"
    assert report["corrupt blobs removed"] == "1"
    assert report["blobs evicted"].startswith("none, cache.max_size is not set")
    assert young_tmp.exists() and not old_tmp.exists()
    assert not cache.blob_path("amd64-l").exists()


def test_gc_evicts_down_to_max_size(capsys: pytest.CaptureFixture[str], cache: Populated) -> None:
    code, out, _ = run(capsys, cache, "gc", "--set", "cache.max_size=2K")
    assert code == 0
    assert "corrupt blobs removed:  not checked" in out
    evicted = int(out.split("blobs evicted:")[1].split()[0])
    assert evicted > 0
    code, out, _ = run(capsys, cache, "du")
    size = int(out.split("(")[1].split()[0])
    assert size <= 2048


def test_gc_leaves_the_blobs_a_running_mirror_is_reading_alone(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """The mirror reads its blobs in another process, whose pins gc cannot see: a blob open
    there was evicted, or (corrupt) removed, under the client reading it. (Held open here:
    ``/proc`` names any process, this one too.)"""
    cache.blob_path("amd64-l").write_bytes(b"bit rot")  # corrupt, but being read
    with cache.blob_path("amd64-l").open("rb"), cache.blob_path("busybox-l").open("rb"):
        code, out, _ = run(capsys, cache, "gc", "--verify", "--set", "cache.max_size=1")
    assert code == 1, out  # still over the cap: said
    assert cache.blob_path("amd64-l").exists() and cache.blob_path("busybox-l").exists()
    assert not cache.blob_path("alpine-l").exists()  # the rest went down to the cap


def sparse_blob(root: Path, hex_: str, size: int) -> Path:
    """A blob file of ``size`` bytes that takes no room on disk (gc without --verify does not
    read it)."""
    path = root / "blobs" / "sha256" / hex_[:2] / hex_
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def test_gc_evicts_nothing_down_to_a_cap_it_was_not_given(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The mirror runs with cache.max_size=100G (its unit file's environment, say) and holds
    22 GiB; `docxy cache gc --cache-dir DIR` from a shell evicted down to the default 20G."""
    root = tmp_path / "cache"
    blobs = [sparse_blob(root, hex_ * 64, 11 << 30) for hex_ in "ab"]
    (root / "manifests").mkdir()
    (root / "tmp").mkdir()

    code = main(["cache", "gc", "--cache-dir", str(root)])

    out = capsys.readouterr().out
    assert code == 0
    assert "blobs evicted:" in out and "cache.max_size is not set" in out
    assert all(blob.exists() for blob in blobs)


@pytest.mark.parametrize("action", ["ls", "du", "gc"])
def test_a_cache_dir_that_is_not_there_is_a_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, action: str
) -> None:
    """A mistyped --cache-dir said "(empty)" and exited 0: a script took it for a clean run."""
    code = main(["cache", action, "--cache-dir", str(tmp_path / "no-such-dir")])
    assert code == 1
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["ls", "du", "gc"])
def test_a_cache_dir_with_no_cache_in_it_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, action: str
) -> None:
    code = main(["cache", action, "--cache-dir", str(tmp_path)])
    assert code == 1
    assert (
        capsys.readouterr().err == f"docxy cache: no cache in {tmp_path} (no docxy cache in it)\n"
    )


@pytest.mark.parametrize(
    "args",
    [["rm", "alpine:3.20"], ["rm", "alpine:3.20", "--blobs"], ["gc", "--set", "cache.max_size=1"]],
)
def test_a_cache_it_may_not_change_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
    cache: Populated,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
) -> None:
    """Run as another user than the cache's owner (or on a read-only disk): every delete and
    rename in it is refused."""

    def refused(path: Any, *_: Any, **__: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "unlink", refused)
    monkeypatch.setattr(os, "rename", refused)
    monkeypatch.setattr(os, "replace", refused)
    code, _, err = run(capsys, cache, *args)
    assert code == 1
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"docxy cache {args[0]}: cannot change {cache.root}: {cache.root}/")
    assert lines[0].endswith(" Permission denied")


def test_gc_says_which_blobs_the_disk_kept_and_exits_1(
    capsys: pytest.CaptureFixture[str], cache: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blobs' files may not be moved off their names (another owner's), the manifests'
    may be deleted: gc goes on past each blob (a WARNING), counts them, and exits 1."""

    def refused(path: Any, *_: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "rename", refused)
    code, out, err = run(capsys, cache, "gc", "--set", "cache.max_size=1")
    assert code == 1
    assert "Traceback" not in err, err
    assert re.search(r"^not evicted: +[1-9]\d* \(the disk refused: see above\)$", out, re.M), out


def test_repo_key_finds_each_upstreams_store_key() -> None:
    from docxy.cache import RepoKey
    from docxy.cli.cache import repo_key, upstream_names
    from docxy.config import load_config
    from docxy.core.names import parse_image_ref

    config = load_config(
        {"upstreams": "ghcr.io,lab.test=http://127.0.0.1:5000"},
        environ={"DOCXY_UPSTREAM_REGISTRY": "http://127.0.0.1:7000"},
    )
    assert repo_key(parse_image_ref("redis"), config) == RepoKey("127.0.0.1:7000", "library/redis")
    assert repo_key(parse_image_ref("lab.test/a/b:1"), config) == RepoKey("127.0.0.1:5000", "a/b")
    assert repo_key(parse_image_ref("ghcr.io/o/i"), config) == RepoKey("ghcr.io", "o/i")
    assert upstream_names(config) == {"ghcr.io": "ghcr.io", "127.0.0.1:5000": "lab.test"}


def test_rm_of_an_upstream_with_the_library_prefix_finds_the_tag_the_mirror_cached(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A named upstream may have Docker Hub's ``library/`` rule (a Docker Hub mirror such as
    mirror.gcr.io): the mirror caches ``hub.test/redis`` as ``library/redis`` there, so that
    is what ``docxy cache rm hub.test/redis:7`` must find, as ``docxy warm`` does."""
    from docxy.cache import RepoKey
    from docxy.cli.cache import repo_key
    from docxy.config import load_config
    from docxy.core.names import upstream_name
    from docxy.http.state import MirrorState
    from docxy.upstream.client import Upstream

    settings = {"upstreams": "hub.test=http://hub.test", "upstreams.hub.test.library_prefix": "1"}
    config = load_config(settings, environ={})
    route = MirrorState(config, Upstream.from_config(config.upstream)).route(
        "hub.test/redis", ns=None, host=None
    )
    # where the mirror's pulls keep it (docxy.http.routes._pull, ManifestService.get)
    stored = RepoKey(route.upstream.host, upstream_name(route.name, route.upstream.library_prefix))
    assert stored == RepoKey("hub.test", "library/redis")
    assert repo_key(parse_image_ref("hub.test/redis:7"), config) == stored

    async def populate() -> None:
        cache = open_cache(tmp_path / "cache", max_size=1 << 20, tag_ttl=300)
        content = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode()
        manifest = await cache.manifests.put(stored, content, OCI_MANIFEST, public=True)
        await cache.manifests.set_tag(stored, "7", manifest.digest, public=True)

    asyncio.run(populate())
    flags = ["--set", "upstreams=hub.test=http://hub.test"]
    flags += ["--set", "upstreams.hub.test.library_prefix=true"]
    code = main(["cache", "rm", "hub.test/redis:7", "--cache-dir", str(tmp_path / "cache"), *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "untagged hub.test/library/redis:7" in out


def test_gc_verify_goes_on_past_a_blob_the_live_mirror_evicted_meanwhile(
    capsys: pytest.CaptureFixture[str], cache: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gc --verify` re-hashes a whole cache (minutes on a big one) beside a serving mirror,
    which evicts blobs meanwhile: one listed at the start is gone by the time its turn comes.
    That blob is simply no longer there: not corrupt, and the gc goes on to the end."""
    from docxy.cache import blobs as blobs_mod

    cache.blob_path("amd64-l").write_bytes(b"bit rot")
    evicted = cache.blob_path("busybox-l")
    real_hash = blobs_mod._hash_matches

    def hash_while_the_mirror_evicts(entry: blobs_mod.BlobEntry, stop: threading.Event) -> bool:
        if evicted.exists() and entry.path != evicted:
            trash = cache.root / "tmp" / "evicted-busybox-l"
            evicted.rename(trash)  # what the mirror's eviction does: off its name, then freed
            trash.unlink()
        return real_hash(entry, stop)

    monkeypatch.setattr(blobs_mod, "_hash_matches", hash_while_the_mirror_evicts)
    code, out, err = run(capsys, cache, "gc", "--verify")
    assert not evicted.exists()
    assert (code, err) == (0, "")
    report = {k.strip(): v.strip() for k, v in (line.split(":") for line in out.splitlines())}
    assert report["corrupt blobs removed"] == "1"  # the rotten one; the evicted one is not
    assert not cache.blob_path("amd64-l").exists()


def test_du_counts_fills_not_the_evicted_blobs_being_freed(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """A live mirror evicting frees large blobs in a worker thread: until then each sits in
    tmp/ beside the fills (seconds per multi-GiB file, a whole batch at once). `du` run then, on
    the full cache an operator is looking into, counted each as a blob being fetched."""

    async def evict_one_while_one_fills() -> tuple[int, str]:
        live = open_cache(cache.root, max_size=1 << 20, tag_ttl=300)
        await live.blobs.indexed()
        writer = await live.blobs.fetch_or_join(digest_of(b"on its way"))
        assert isinstance(writer, BlobWriter)
        async with writer:
            await writer.write(b"on its")
            entry = live.blobs.lookup(cache.blobs["busybox-l"])
            assert entry is not None
            trash = live.blobs._drop(entry)  # eviction: off its name, not yet freed
            assert trash is not None and trash.exists()
            code = main(["cache", "du", "--cache-dir", str(cache.root), "--upstream", UPSTREAM])
            return code, capsys.readouterr().out

    code, out = asyncio.run(evict_one_while_one_fills())
    assert code == 0
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["filling"].strip() == "1 blobs being fetched"


def _gc_report(out: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines())}


def _bytes_of(shown: str) -> int:
    """``1.0 KiB (1021 bytes)`` → 1021."""
    return int(shown.split("(")[1].split()[0])


def _evict_as_the_mirror_does(cache: Populated, path: Path) -> None:
    trash = cache.root / "tmp" / f"evicted-{path.name}.0"
    path.rename(trash)  # off its name, then freed in a worker thread
    trash.unlink()


def test_gc_counts_as_freed_only_what_it_removed(
    capsys: pytest.CaptureFixture[str], cache: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gc --verify` beside a live mirror: a blob the mirror evicts meanwhile (1000 bytes) is
    not gc's doing. Its "freed" counted it (the cache's size before less its size after) and
    left out the temp file and the stray gc did remove: it said 1000 B for 21 bytes."""
    from docxy.cache import blobs as blobs_mod

    (cache.root / "blobs" / "stray.txt").write_text("not a blob")  # 10 bytes
    old_tmp = cache.root / "tmp" / "sha256-dead.123"
    old_tmp.write_bytes(b"half a fill")  # 11 bytes
    os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))
    held = old_tmp.stat().st_blocks * 512  # a temp file counts by the blocks it holds
    evicted = cache.blob_path("busybox-l")
    assert evicted.stat().st_size == 1000
    real_hash = blobs_mod._hash_matches

    def hash_while_the_mirror_evicts(entry: blobs_mod.BlobEntry, stop: threading.Event) -> bool:
        if evicted.exists() and entry.path != evicted:
            _evict_as_the_mirror_does(cache, evicted)
        return real_hash(entry, stop)

    monkeypatch.setattr(blobs_mod, "_hash_matches", hash_while_the_mirror_evicts)
    code, out, err = run(capsys, cache, "gc", "--verify")
    assert (code, err) == (0, "")
    report = _gc_report(out)
    assert _bytes_of(report["freed"]) == 10 + held, out
    assert _bytes_of(report["gone meanwhile"]) == 1000, out


def test_gc_does_not_count_a_blob_the_mirror_evicted_before_it_could(
    capsys: pytest.CaptureFixture[str], cache: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eviction down to a lowered cap: the live mirror evicts one of the blobs gc planned to,
    between the plan and its deletion. gc counted it as evicted and freed by itself."""
    from docxy.cache import blobs as blobs_mod

    sizes_before = {p: p.stat().st_size for p in (cache.root / "blobs").rglob("*") if p.is_file()}
    real_plan = blobs_mod._plan
    taken: list[Path] = []

    def plan_while_the_mirror_evicts(*args: Any) -> Any:
        plan, pulled = real_plan(*args)
        if not taken:
            taken.append(plan.blobs[0].path)
            _evict_as_the_mirror_does(cache, plan.blobs[0].path)
        return plan, pulled

    monkeypatch.setattr(blobs_mod, "_plan", plan_while_the_mirror_evicts)
    code, out, err = run(capsys, cache, "gc", "--set", "cache.max_size=2K")
    assert (code, err) == (0, "")
    left = {p for p in (cache.root / "blobs").rglob("*") if p.is_file()}
    removed_by_gc = [p for p in sizes_before if p not in left and p not in taken]
    report = _gc_report(out)
    assert int(report["blobs evicted"]) == len(removed_by_gc), out
    assert _bytes_of(report["freed"]) == sum(sizes_before[p] for p in removed_by_gc), out
    assert _bytes_of(report["gone meanwhile"]) == sizes_before[taken[0]], out


def test_gc_leaves_the_evicted_blobs_a_live_mirror_is_deleting_to_it(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """A live mirror's eviction moves a blob to tmp/evicted-... and deletes it in a worker
    thread; the file keeps the blob's mtime, so one last used over an hour ago looked like an
    old temp file to gc, which removed it and counted it as its own "temp files removed" and
    "freed"."""

    async def evict_an_old_blob() -> Path:
        live = open_cache(cache.root, max_size=1 << 20, tag_ttl=300)
        await live.blobs.indexed()
        entry = live.blobs.lookup(cache.blobs["busybox-l"])
        assert entry is not None
        os.utime(entry.path, (time.time() - 7200, time.time() - 7200))  # last used 2 h ago
        trash = live.blobs._drop(entry)  # off its name; its thread deletes it next
        assert trash is not None
        return trash

    trash = asyncio.run(evict_an_old_blob())
    code, out, err = run(capsys, cache, "gc")
    assert (code, err) == (0, "")
    report = _gc_report(out)
    assert report["temp files removed"] == "0", out
    assert _bytes_of(report["freed"]) == 0, out
    assert trash.exists()  # the mirror's to delete (its next start clears one left)


def test_clear_tmp_takes_a_mirrors_trash_by_when_it_went_there(cache: Populated) -> None:
    """The blobs a live mirror is deleting are spared by when they were renamed (ctime), not
    by their old mtime: skipped by name, one left by a mirror that died was never removed."""

    async def evict_an_old_blob() -> tuple[DiskBlobStore, Path]:
        live = open_cache(cache.root, max_size=1 << 20, tag_ttl=300)
        await live.blobs.indexed()
        entry = live.blobs.lookup(cache.blobs["busybox-l"])
        assert entry is not None
        os.utime(entry.path, (time.time() - 7200, time.time() - 7200))  # last used 2 h ago
        trash = live.blobs._drop(entry)
        assert trash is not None
        return live.blobs, trash

    store, trash = asyncio.run(evict_an_old_blob())
    assert store.clear_tmp(older_than=3600) == 0 and trash.exists()  # renamed just now
    time.sleep(0.05)
    assert store.clear_tmp(older_than=0.01) == 1 and not trash.exists()  # renamed long enough ago


def test_gc_that_cannot_get_under_the_cap_says_so_and_exits_1(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """Every blob is being read (a running mirror's clients): gc evicts none of them, as it
    should, but said nothing of the cap it did not reach and exited 0."""
    paths = [path for path in (cache.root / "blobs").rglob("*") if path.is_file()]
    with contextlib.ExitStack() as held:
        for path in paths:
            held.enter_context(path.open("rb"))
        code, out, err = run(capsys, cache, "gc", "--set", "cache.max_size=1K")
    assert code == 1, out
    report = _gc_report(out)
    assert report["blobs evicted"] == "0"
    over = sum(path.stat().st_size for path in paths) - 1024
    assert report["still over max_size"].startswith(f"{human_size(over)} ({over} bytes)"), out
    assert "Traceback" not in err


# --- what an earlier version keyed under the URL as written ---------------------------------


@pytest.mark.parametrize(
    ("url", "earlier"), [("https://ghcr.io:443", "ghcr.io:443"), ("https://GHCR.io", "GHCR.io")]
)
def test_the_commands_open_the_cache_as_the_mirror_does(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str, earlier: str
) -> None:
    """A tag cached under ``ghcr.io:443`` (the key of ``https://ghcr.io:443`` before
    docxy.core.hosts; ``GHCR.io`` of ``https://GHCR.io``) is moved by the command's open, as
    the mirror's start moves it: listed under its key now, and ``rm`` finds it, before the
    mirror next starts."""
    root = tmp_path / "cache"

    async def old_version() -> None:
        cache = open_cache(root, max_size=1 << 20, tag_ttl=300)
        key = RepoKey(earlier, "org/app")
        stored = await cache.manifests.put(key, b'{"schemaVersion": 2}', OCI_MANIFEST, public=True)
        await cache.manifests.set_tag(key, "v1", stored.digest, public=True)
        await cache.manifests.loaded()

    asyncio.run(old_version())
    upstream = ["--cache-dir", str(root), "--upstream", url]
    assert main(["cache", "ls", "--tags", *upstream]) == 0
    out = capsys.readouterr().out
    assert [line.split()[1:3] for line in out.splitlines()] == [["ghcr.io", "org/app:v1"]]
    assert main(["cache", "rm", "org/app:v1", *upstream]) == 0
    capsys.readouterr()
    assert main(["cache", "ls", "--tags", *upstream]) == 0
    assert capsys.readouterr().out == ""

"""The cache's listings beside a live mirror: a folder that goes away while it is walked (a put
forgetting a manifest's records, a delete, gc) is left out, never an error. Python 3.11's
``Path.glob`` raised FileNotFoundError for a folder listed and then removed before it was read
(stop 50's CI: the serving start's catalogue scan against a put of the same manifest)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from docxy.cache import open_cache
from docxy.cache.files import globbed
from docxy.cache.visibility import AccessIndex, RepoKey
from docxy.core.digests import Digest

HOST = "registry.test"
# Two digests under the same two-letter folder: listed together, read one after the other.
FIRST = Digest("sha256", "ab" + "1" * 62)
SECOND = Digest("sha256", "ab" + "2" * 62)


def _two_records(tmp_path: Path) -> AccessIndex:
    index = AccessIndex(tmp_path / "access")
    for digest in (FIRST, SECOND):
        index.record(RepoKey(HOST, "library/app"), digest, public=True)
    return index


def test_a_record_folder_forgotten_while_the_markers_are_walked_is_left_out(
    tmp_path: Path,
) -> None:
    index = _two_records(tmp_path)
    walk = index.markers()
    _, first, _ = next(walk)
    other = SECOND if first == FIRST else FIRST
    index.forget_digest(_upstream_of(index), other)
    assert list(walk) == []


def test_a_record_folder_forgotten_while_the_digest_folders_are_walked_is_left_out(
    tmp_path: Path,
) -> None:
    index = _two_records(tmp_path)
    walk = index.digest_dirs()
    upstream, first, folder = next(walk)
    # The walk lists the two-letter folder, then yields its entries: removing the other one
    # now is what a put does meanwhile; digest_dirs reads no folder below, so it lists again.
    other = SECOND if first == FIRST else FIRST
    index.forget_digest(upstream, other)
    assert list(walk) == []
    assert folder.is_dir()


def test_globbed_matches_what_path_glob_matches(tmp_path: Path) -> None:
    for name in ("a/x/1.json", "a/x/2.txt", "a/.h/3.json", "b/y/4.json", "c.json", "d/5"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    (tmp_path / "e").mkdir()
    for pattern in ("*/*/*.json", "*/*/*", "*", "*.json", "*/*", "a/*/*.*"):
        assert sorted(globbed(tmp_path, pattern)) == sorted(tmp_path.glob(pattern)), pattern
    assert list(globbed(tmp_path / "missing", "*/*")) == []
    assert list(globbed(tmp_path / "c.json", "*")) == []


def test_globbed_leaves_out_a_folder_removed_after_it_was_listed(tmp_path: Path) -> None:
    for name in ("top/one/x.json", "top/two/y.json"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    walk = globbed(tmp_path, "*/*/*.json")
    first = next(walk)
    other = "two" if first.parent.name == "one" else "one"
    shutil.rmtree(tmp_path / "top" / other)
    assert list(walk) == []


def _upstream_of(index: AccessIndex) -> str:
    (folder,) = (index.root / "by-digest").iterdir()
    return folder.name


def test_gc_tidy_says_nothing_of_a_record_folder_forgotten_since_it_was_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder a live mirror's put or delete removed between gc's listing and its reading is
    not one the disk refused: tidy counts nothing for it and reports no failure."""
    index = _two_records(tmp_path)
    cache = open_cache(tmp_path / "cache", max_size=1 << 20, tag_ttl=300)
    listed = list(index.digest_dirs())

    def gone_once_listed() -> Iterator[tuple[str, Digest, Path]]:
        for upstream, digest, folder in listed:
            shutil.rmtree(folder)
            yield upstream, digest, folder

    monkeypatch.setattr(cache.manifests.access, "digest_dirs", gone_once_listed)
    assert cache.manifests.tidy(age=0) == (0, [])

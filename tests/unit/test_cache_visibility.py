"""Who may read what: the pure policy and the per-repository access record."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.cache.visibility import (
    ANONYMOUS,
    AccessIndex,
    Identity,
    RepoKey,
    Visibility,
    may_serve,
)
from docxy.core.digests import digest_of

HUB = "registry-1.docker.io"
PRIVATE = RepoKey(HUB, "alice/secret")
PUBLIC = RepoKey(HUB, "library/alpine")
ALICE = Identity("alice", frozenset({PRIVATE}))
BOB = Identity("bob", frozenset({PUBLIC}))
ALICE_ELSEWHERE = Identity("alice", frozenset({RepoKey("ghcr.io", "alice/secret")}))


@pytest.mark.parametrize(
    ("entry", "identity", "expected"),
    [
        (Visibility(PUBLIC, public=True), ANONYMOUS, True),
        (Visibility(PUBLIC, public=True), ALICE, True),
        (Visibility(PRIVATE, public=False), ALICE, True),
        (Visibility(PRIVATE, public=False), ANONYMOUS, False),
        (Visibility(PRIVATE, public=False), BOB, False),  # authorized, but for another repo
        (Visibility(PRIVATE, public=False), ALICE_ELSEWHERE, False),  # same name, other upstream
        (Visibility(PRIVATE, public=False), Identity("alice"), False),  # not (yet) authorized
        (None, ANONYMOUS, False),  # never seen in this repository: ask upstream first
        (None, ALICE, False),
    ],
)
def test_may_serve(entry: Visibility | None, identity: Identity, expected: bool) -> None:
    assert may_serve(entry, identity) is expected


def test_repo_key_requires_both_parts() -> None:
    with pytest.raises(ValueError):
        RepoKey("", "library/alpine")
    with pytest.raises(ValueError):
        RepoKey(HUB, "")
    assert RepoKey("a/b", "c").hashed() != RepoKey("a", "b/c").hashed()


def test_access_index_records_per_repository(tmp_path: Path) -> None:
    index = AccessIndex(tmp_path)
    layer = digest_of(b"layer")
    assert index.visibility(PUBLIC, layer) is None
    index.record(PUBLIC, layer, public=True)
    index.record(PRIVATE, layer, public=False)
    assert index.visibility(PUBLIC, layer) == Visibility(PUBLIC, public=True)
    assert index.visibility(PRIVATE, layer) == Visibility(PRIVATE, public=False)
    assert index.visibility(RepoKey(HUB, "library/other"), layer) is None
    assert index.visibility(RepoKey("ghcr.io", "library/alpine"), layer) is None
    assert sorted(r.repo for r in index.repositories()) == ["alice/secret", "library/alpine"]


def test_public_record_is_never_downgraded(tmp_path: Path) -> None:
    index = AccessIndex(tmp_path)
    layer = digest_of(b"layer")
    index.record(PUBLIC, layer, public=True)
    index.record(PUBLIC, layer, public=False)
    assert index.visibility(PUBLIC, layer) == Visibility(PUBLIC, public=True)
    index.forget(PUBLIC, layer)
    assert index.visibility(PUBLIC, layer) is None


def test_names_never_become_paths(tmp_path: Path) -> None:
    index = AccessIndex(tmp_path / "access")
    evil = RepoKey("../../..", "../../../etc")
    index.record(evil, digest_of(b"x"), public=True)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.is_relative_to(tmp_path / "access") for p in written)
    assert index.repositories() == [evil]

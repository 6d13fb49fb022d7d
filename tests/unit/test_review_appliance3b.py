"""The appliance as an operator uses it after `docker compose up -d`: a client kit made inside
the container, and the cache CLI run there as root.

The tests run the CLI as root over volumes the image's user (999) owns, as `docker exec -u 0`
does.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from docxy.cli.main import main
from tests.unit.test_cachecli import _populate
from tests.unit.test_review_appliance import MIRROR_GID, MIRROR_UID, owners, volume

__all__ = ["volume"]  # the fixture, taken from the review that made it

# --- (1) a client kit made inside the container ---------------------------------------------


def test_a_kit_without_out_lands_in_auth_dir_as_its_owners(
    volume: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`docker compose exec docxy docxy clients add ci-runner --out ./kit`, the README's line,
    wrote nothing (the container's working directory is `/`, which its user may not write),
    and `--out` was required. Without it the kit now goes to `auth.dir/kits/NAME`, on the
    certs volume in the image, written as the owner of `auth.dir` also when root runs it."""
    assert main(["clients", "add", "ci-runner"]) == 0
    assert os.geteuid() == 0 and os.getegid() == 0
    kit = volume / "access" / "kits" / "ci-runner"
    assert {p.name for p in kit.iterdir()} == {"client.cert", "client.key", "ca.crt"}
    assert str(kit) in capsys.readouterr().out
    theirs = {name: ids for name, ids in owners(volume).items() if ids != (MIRROR_UID, MIRROR_GID)}
    assert theirs == {}
    assert (kit / "client.key").stat().st_mode & 0o077 == 0


# --- (2) the cache CLI run as root -------------------------------------------------------------


@pytest.fixture
def cache(volume: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache volume beside `volume`, the mirror user's: a populated cache whose `tmp/`
    directories are not there (a cache `docxy cache` finds before the mirror started on it)."""
    directory = volume.parent / "cache"
    asyncio.run(_populate(directory))
    for tmp in (directory / "tmp", directory / "manifests" / "tmp"):
        shutil.rmtree(tmp)
    for path in (directory, *directory.rglob("*")):
        os.chown(path, MIRROR_UID, MIRROR_GID, follow_symlinks=False)
    monkeypatch.setenv("DOCXY_CACHE_DIR", str(directory))
    monkeypatch.setenv("DOCXY_UPSTREAM_REGISTRY", "http://up.test")
    return directory


@pytest.mark.parametrize(
    "command",
    [
        ["gc"],
        ["gc", "--verify"],
        ["rm", "library/alpine:3.20"],
        ["rm", "--blobs", "busybox:1"],
    ],
)
def test_root_run_cache_commands_leave_the_cache_its_owners(
    cache: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`docker exec -u 0 <ctr> docxy cache gc` made the directories it needed as root's
    (`tmp/`, 755): the mirror (999) could then write no blob there."""
    assert main(["cache", *command]) == 0, capsys.readouterr().err
    assert os.geteuid() == 0 and os.getegid() == 0
    assert (cache / "tmp").is_dir() or command[0] == "rm"
    theirs = {name: ids for name, ids in owners(cache).items() if ids != (MIRROR_UID, MIRROR_GID)}
    assert theirs == {}

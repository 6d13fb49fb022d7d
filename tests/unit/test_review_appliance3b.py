"""The appliance as an operator uses it after `docker compose up -d`: a client kit made inside
the container, the cache CLI run there as root, and the admin port compose publishes.

The tests run the CLI as root over volumes the image's user (999) owns, as `docker exec -u 0`
does; the same in the image itself is tests/e2e/test_image_e2e.py's
`test_kits_made_inside_and_roots_cache_gc_leave_the_volumes_the_mirrors` (its one build).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from docxy.cli.main import main
from tests.scriptbox import REPO
from tests.unavailable import need_binary
from tests.unit.test_cachecli import _populate
from tests.unit.test_review_appliance import MIRROR_GID, MIRROR_UID, owners, volume

__all__ = ["volume"]  # the fixture, taken from the review that made it

HOST = "127.0.0.143"
PORTS = range(8800, 8900)
IMAGE = "docxy:review-appliance3"
STATE = "/var/lib/docxy"


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


# --- (3) the admin port compose publishes ----------------------------------------------------


def compose_config(tmp_path: Path, env_text: str) -> str:
    """`docker-compose config` (bookworm's 1.29) of compose.yaml with `env_text` as .env."""
    need_binary("docker-compose")
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "compose.yaml", project / "compose.yaml")
    (project / ".env").write_text(env_text)
    return subprocess.run(
        ["docker-compose", "--project-directory", str(project), "-f", "compose.yaml", "config"],
        cwd=project, capture_output=True, text=True, timeout=60, check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")},
    ).stdout  # fmt: skip


def test_compose_and_the_readme_agree_on_the_admin_port(tmp_path: Path) -> None:
    """compose.yaml publishes the container's port 9180, the port of the admin listener it
    sets; a DOCXY_SERVER_ADMIN_LISTEN on another port in .env left that published port
    reaching nothing, and neither the README nor .env.example said which variable moves what.
    They say it now: DOCXY_ADMIN_PORT moves the host's side, the container's stays."""
    env = "DOCXY_SERVER_PUBLIC_URL=http://mirror.test\nDOCXY_ADMIN_PORT=9999\n"
    shown = compose_config(tmp_path, env)
    listen = re.search(r"^ +DOCXY_SERVER_ADMIN_LISTEN: '?(\S+?):(\d+)'?$", shown, re.M)
    assert listen is not None, shown
    address, port = listen.groups()
    # the host's loopback, DOCXY_ADMIN_PORT, to the port the listener is on in the container
    assert f"- 127.0.0.1:9999:{port}/tcp" in shown, shown
    readme = " ".join((REPO / "README.md").read_text().split())
    said = (
        f"`DOCXY_ADMIN_PORT` moves the host's side; the container's stays `{port}`, the port "
        f"of the `DOCXY_SERVER_ADMIN_LISTEN` compose.yaml sets (`{address}:{port}`)"
    )
    assert said in readme
    example = " ".join((REPO / ".env.example").read_text().replace("#", "").split())
    assert f"DOCXY_SERVER_ADMIN_LISTEN in this file keeps port {port}" in example

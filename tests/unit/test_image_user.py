"""The image's `docxy` user keeps one UID across builds, and a volume it cannot write is named.

The cache and certs volumes outlive the image: a rebuilt image whose user got another UID from
`useradd --system` could no longer write them. The Dockerfile pins 999:999 (what that useradd
picked on the documented bases); that much is only the Dockerfile's text here, as building the
image takes the e2e suite's private dockerd. What runs without it is scripts/entrypoint.sh,
started here as the image's user would be (setpriv to 999:999) over volumes another UID owns:
it names the directory, its owner and the one-time chown, and still starts the mirror, whose
own error then takes the container down as before (test_image_e2e's unstartable mirror).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unavailable import need_binary, need_root

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "scripts" / "entrypoint.sh"
UID = GID = 999  # the image's docxy user (Dockerfile)
OLD = 998  # a UID an earlier build could have given it


def test_the_dockerfile_creates_docxy_with_the_pinned_uid_and_gid() -> None:
    lines = (REPO / "Dockerfile").read_text().splitlines()
    instructions = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    run = " ".join(instructions.replace("\\\n", " ").split())
    assert f"groupadd --system --gid {GID} docxy" in run
    assert re.search(rf"useradd --system --uid {UID} --gid docxy [^&]* docxy\b", run), run
    assert len(re.findall(r"\buseradd\b", run)) == 1  # no other, unpinned, user
    assert "USER docxy" in lines


@pytest.fixture
def state() -> Iterator[Path]:
    """A state directory the image's user can reach (pytest's tmp_path is root's alone)."""
    need_root("the entrypoint runs as the image's user, and the volumes belong to others")
    need_binary("setpriv")
    top = Path(tempfile.mkdtemp(prefix="docxy-entrypoint-"))
    try:
        top.chmod(0o755)
        # `python` is what the entrypoint execs (supervisord's): a stand-in that says so.
        (top / "bin").mkdir()
        python = top / "bin" / "python"
        python.write_text('#!/bin/sh\necho "started: $*"\n')
        python.chmod(0o755)
        (top / "state").mkdir()
        yield top / "state"
    finally:
        shutil.rmtree(top)


def volume(path: Path, uid: int, *subdirs: str) -> Path:
    """A volume's directory as a container left it: owned by `uid`, mode 755."""
    for directory in (path, *(path / sub for sub in subdirs)):
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, uid, uid)
        directory.chmod(0o755)
    return path


def start(state: Path) -> subprocess.CompletedProcess[str]:
    """scripts/entrypoint.sh as the image starts it: no arguments, as 999:999, plain HTTP."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env = base | {
        "PATH": f"{state.parent / 'bin'}:{os.environ['PATH']}",
        "DOCXY_STATE_DIR": str(state),
        "DOCXY_SERVER_PUBLIC_URL": "http://mirror.test",
        "DOCXY_IF_INET6": str(state / "none"),
    }
    argv = [need_binary("setpriv"), f"--reuid={UID}", f"--regid={GID}", "--clear-groups"]
    argv += ["bash", str(ENTRYPOINT)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_volumes_the_user_owns_start_without_a_word(state: Path) -> None:
    volume(state / "cache", UID)
    volume(state / "certs", UID, "letsencrypt", "access")
    result = start(state)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("started: -m scheduler.supervise")


def test_a_volume_an_earlier_uid_owns_is_named_with_its_one_time_chown(state: Path) -> None:
    cache = volume(state / "cache", OLD)
    volume(state / "certs", UID)
    result = start(state)
    said = result.stderr.splitlines()
    assert len(said) == 1, result.stderr
    assert said[0].startswith(
        f"docxy: cannot write {cache} (owner {OLD}:{OLD}, mode 755) as 999:999"
    )
    command = f"docker compose run --rm --user 0 --entrypoint chown docxy -R 999:999 {cache}"
    assert command in said[0]
    # The mirror still starts: its own error then takes the container down (supervisord).
    assert result.returncode == 0 and result.stdout.startswith("started: -m scheduler.supervise")


def test_a_directory_inside_a_volume_that_an_earlier_uid_left_names_the_volume(
    state: Path,
) -> None:
    volume(state / "cache", UID)
    certs = volume(state / "certs", UID)
    volume(certs / "letsencrypt", OLD)  # the renewer's account and certificates
    result = start(state)
    said = result.stderr.splitlines()
    assert len(said) == 1, result.stderr
    assert said[0].startswith(f"docxy: cannot write {certs / 'letsencrypt'} (owner {OLD}:{OLD}")
    assert f"chown docxy -R 999:999 {certs} " in said[0]


def test_the_cli_through_the_entrypoint_says_nothing_of_the_volumes(state: Path) -> None:
    """`docker exec <ctr> docxy ...` (and the HEALTHCHECK's `docxy health`) come through the
    entrypoint with arguments: the warning is the mirror's start's alone."""
    volume(state / "cache", OLD)
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env = base | {"DOCXY_STATE_DIR": str(state), "DOCXY_IF_INET6": str(state / "none")}
    argv = [need_binary("setpriv"), f"--reuid={UID}", f"--regid={GID}", "--clear-groups"]
    argv += ["bash", str(ENTRYPOINT), "true"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0 and result.stderr == ""

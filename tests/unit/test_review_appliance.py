"""The appliance reviewed again: the access CLI run as root inside the container, the
watchdog's probe at stop, and what a fresh VPS meets."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from docxy.access.users import UsersFile
from docxy.cli.main import main
from lab.ports import bound_socket
from tests.unavailable import need_binary, need_root
from tests.unit.test_watchdog_clock import start_watchdog

MIRROR_UID = MIRROR_GID = 999  # the image's docxy user (Dockerfile)


@pytest.fixture
def volume(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The certificate volume as the image has it: a directory of the mirror's user (999), in a
    temp directory that user may reach (pytest's own is root's alone), with ``auth.dir`` in it
    not made yet (the mirror never ran in users mode)."""
    need_root("the fault is a root-run command")
    top = Path(tempfile.mkdtemp(prefix="dx-appl-"))
    top.chmod(0o755)
    certs = top / "certs"
    certs.mkdir()
    os.chown(certs, MIRROR_UID, MIRROR_GID)
    (top / "cache").mkdir()  # the cache volume, the mirror's user's (docxy.cli.owner.Owner.of)
    os.chown(top / "cache", MIRROR_UID, MIRROR_GID)
    for name in list(os.environ):
        if name.startswith("DOCXY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DOCXY_AUTH_DIR", str(certs / "access"))
    monkeypatch.setenv("DOCXY_CACHE_DIR", str(top / "cache"))
    try:
        yield certs
    finally:
        shutil.rmtree(top, ignore_errors=True)


def owners(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory in `directory` and below (itself too), with its uid:gid."""
    found = {".": (directory.stat().st_uid, directory.stat().st_gid)}
    for path in directory.rglob("*"):
        st = path.lstat()
        found[str(path.relative_to(directory))] = (st.st_uid, st.st_gid)
    return found


def test_root_run_access_commands_leave_files_the_mirror_can_read(
    volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `docker exec -u 0 <ctr> docxy users add alice`: the users file, the token keys and the
    # client CA were root's, mode 600, and the mirror (999) answered 503 for every login.
    access = volume / "access"
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["users", "add", "alice", "--password-stdin"]) == 0
    assert main(["tokens", "rotate"]) == 0
    kit = Path(tempfile.mkdtemp(prefix="dx-kit-"))  # the operator's: written as they run it
    try:
        assert main(["clients", "add", "ci", "--out", str(kit)]) == 0
        assert os.geteuid() == 0 and os.getegid() == 0  # this process is root again
        assert UsersFile(access / "users").check("alice", "s3cret")
        files = owners(access)
        written = {"users", "token-key.pem", "token-key.previous.pem", "ca.crt", "clients.json"}
        assert written <= set(files)
        assert {name: ids for name, ids in files.items() if ids != (MIRROR_UID, MIRROR_GID)} == {}
        assert (kit / "client.key").stat().st_uid == 0  # the kit stays the operator's
    finally:
        shutil.rmtree(kit, ignore_errors=True)
    # what a root run made before this fix (auth.dir, the users file, the keys) is handed over
    for path in (access, access / "users", access / "token-key.pem"):
        os.chown(path, 0, 0)
    monkeypatch.setattr("sys.stdin", io.StringIO("other\n"))
    assert main(["users", "add", "bob", "--password-stdin"]) == 0
    assert main(["tokens", "rotate"]) == 0
    assert {name: ids for name, ids in owners(access).items() if ids[0] != MIRROR_UID} == {}
    assert UsersFile(access / "users").check("bob", "other")


def test_root_run_in_a_root_owned_directory_stays_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # outside the image (a host install run by root, /etc/docxy): nothing changes hands
    need_root("root in a root-owned directory")
    for name in list(os.environ):
        if name.startswith("DOCXY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DOCXY_AUTH_DIR", str(tmp_path / "access"))
    monkeypatch.setenv("DOCXY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert main(["users", "add", "alice", "--password-stdin"]) == 0
    assert set(owners(tmp_path / "access").values()) == {(0, 0)}


@contextlib.contextmanager
def silent_mirror() -> Iterator[socket.socket]:
    """A mirror that takes connections and never answers (hung)."""
    server = bound_socket("127.0.0.1")
    server.listen(4)
    try:
        yield server
    finally:
        server.close()


def test_a_stopped_watchdog_ends_its_probe(tmp_path: Path) -> None:
    # supervisord's SIGTERM ended the listener's bash, but its probe (`timeout 10 bash`, in a
    # process group of its own) went on for up to 10 s, past supervisord's own end.
    with silent_mirror() as server:
        host, port = server.getsockname()
        watchdog = start_watchdog(tmp_path, f"{host}:{port}", "2")
        assert watchdog.stdin is not None and watchdog.stdout is not None
        try:
            assert watchdog.stdout.readline() == b"READY\n"
            payload = b"when:1"
            header = b"ver:3.0 server:supervisor serial:1 pool:watchdog poolserial:1"
            watchdog.stdin.write(header + b" eventname:TICK_5 len:%d\n" % len(payload) + payload)
            watchdog.stdin.flush()
            server.settimeout(15)
            probe, _ = server.accept()  # the probe is connected and waiting for an answer
            with probe:
                probe.settimeout(15)
                assert probe.recv(4096).startswith(b"GET /health ")
                started = time.monotonic()
                watchdog.send_signal(signal.SIGTERM)
                watchdog.wait(timeout=15)
                probe.settimeout(4)
                closed = False
                with contextlib.suppress(TimeoutError):
                    # The rest of the request may come first (printf's write can be split).
                    while not closed:
                        closed = probe.recv(4096) == b""
                assert closed, "the probe still holds its connection after the watchdog ended"
                assert time.monotonic() - started < 4
        finally:
            if watchdog.poll() is None:
                watchdog.kill()
            watchdog.wait(timeout=15)
            if watchdog.stderr is not None:
                watchdog.stderr.close()
            watchdog.stdin.close()
            watchdog.stdout.close()


def test_a_root_that_may_not_change_its_uid_is_told_how(volume: Path) -> None:
    # a container run with cap_drop (no CAP_SETUID/SETGID/CHOWN): root still writes, and wrote
    # the mirror files it cannot read; now nothing is written and the message says how.
    need_binary("setpriv")
    env = {k: v for k, v in os.environ.items()} | {"PYTHONPATH": str(REPO_DIR)}
    done = subprocess.run(
        ["setpriv", "--bounding-set=-setuid,-setgid,-chown", "--",
         sys.executable, "-m", "docxy", "users", "add", "alice", "--password-stdin"],
        input="pw\n", capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"docker exec -u {MIRROR_UID}:{MIRROR_GID}" in done.stderr
    assert not (volume / "access" / "users").exists()


REPO_DIR = Path(__file__).resolve().parents[2]

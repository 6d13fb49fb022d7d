"""Key files the mirror cannot stat, read or write: every such fault is a ``TokenKeyError`` that
names the file, which the gate answers with ``503`` (never an ``OSError`` out of the app).

Only a ``FileNotFoundError`` was turned into "no key yet"; any other ``OSError`` (``auth.dir``
unsearchable or not a directory, a link loop, a read-only ``auth.dir`` with the key gone) went
through the gate as it was: ``500`` from the routes and ``/auth/token``, and out of the ASGI app
through the edge (``Admission`` → ``client_identity``), where hypercorn logged a traceback for
every request carrying a token.
"""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest

from docxy.access import keys
from docxy.access.gate import KEY_UNREADABLE
from docxy.access.keys import KeyRing, TokenKeyError
from docxy.edge.admission import Admission
from docxy.http.state import mirror_state
from tests.unit.asgi import call_asgi, get_with_token
from tests.unit.test_access_routes import basic, token_for, users_mirror

MANIFEST = "/v2/library/redis/manifests/7"


def link_loop(path: Path) -> None:
    """``path`` made a symbolic link to itself: its stat is ``ELOOP``, a real ``OSError`` that
    is not ``FileNotFoundError`` (the tests run as root: permissions cannot make one)."""
    path.unlink(missing_ok=True)
    path.symlink_to(path.name)


def read_only(files: list[tuple[Path, bytes, int]]) -> None:
    """``write_files_atomic`` on a read-only mount (the appliance's certificate volume)."""
    raise OSError(errno.EROFS, "Read-only file system", str(files[0][0]))


def test_an_auth_dir_that_is_not_a_directory_is_a_token_key_error(tmp_path: Path) -> None:
    auth_dir = tmp_path / "auth"
    auth_dir.write_text("a file where the directory should be\n")
    ring = KeyRing(auth_dir, grace=60)
    with pytest.raises(TokenKeyError, match="token-key.pem"):
        ring.signing()
    with pytest.raises(TokenKeyError, match="token-key.pem"):
        ring.verifying()
    with pytest.raises(TokenKeyError, match="token-key.pem"):
        ring.ensure()
    with pytest.raises(TokenKeyError, match="token-key.pem"):
        ring.rotate()


def test_a_key_file_that_cannot_be_stat_ed_is_a_token_key_error(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, grace=60)
    ring.signing()
    kept = ring.current_path.read_bytes()
    link_loop(ring.current_path)
    with pytest.raises(TokenKeyError, match="token-key.pem") as raised:
        ring.signing()
    assert "PRIVATE KEY" not in str(raised.value)
    # a rotation changes nothing: no retired key written, the loop left for the operator
    with pytest.raises(TokenKeyError, match="token-key.pem"):
        KeyRing(tmp_path, grace=60).rotate()
    assert ring.current_path.is_symlink() and not ring.previous_path.exists()
    ring.current_path.unlink()
    ring.current_path.write_bytes(kept)
    assert ring.signing().key is not None  # fixed: read again


def test_a_previous_key_file_that_cannot_be_stat_ed_is_a_token_key_error(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, grace=60)
    ring.rotate()
    link_loop(ring.previous_path)
    with pytest.raises(TokenKeyError, match="token-key.previous.pem"):
        ring.verifying()


def test_a_first_key_that_cannot_be_written_is_a_token_key_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "write_files_atomic", read_only)
    ring = KeyRing(tmp_path, grace=60)
    with pytest.raises(TokenKeyError, match="token-key.pem") as raised:
        ring.signing()
    assert "Read-only file system" in str(raised.value)


async def test_key_file_faults_are_503_through_the_edge_and_the_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The review's reproduction: the key gone from a read-only ``auth.dir``, then a key file
    in a link loop. Through the edge, the routes alone and ``/auth/token``: 503 UNAVAILABLE in
    the registry's JSON, the path in the log only, nothing sent upstream; fixed, served again."""
    async with users_mirror(tmp_path) as m:
        token = await token_for(m, "repository:library/redis:pull")
        state = mirror_state(m.app)
        edge = Admission(m.app, state.config, state.access)
        current = tmp_path / "token-key.pem"
        kept = current.read_bytes()

        def read_only_dir() -> None:
            monkeypatch.setattr(keys, "write_files_atomic", read_only)
            current.unlink()

        def looping() -> None:
            monkeypatch.undo()
            link_loop(current)

        for fault in (read_only_dir, looping):
            fault()
            caplog.clear()
            for app in (edge, m.app):
                for path in ("/v2/", MANIFEST):
                    answer = await get_with_token(app, path, token)
                    assert answer.status == 503, (fault.__name__, path, answer.body)
                    assert answer.headers["Content-Type"] == "application/json"
                    error = json.loads(answer.body)["errors"][0]
                    assert error["code"] == "UNAVAILABLE" and error["message"] == KEY_UNREADABLE
                    assert str(tmp_path) not in answer.body.decode()
                issued = await call_asgi(
                    app,
                    "GET",
                    "/auth/token?scope=repository:library/redis:pull",
                    host="mirror.example.com",
                    headers=list(basic("alice", "right").items()),
                )
                assert issued.status == 503, (fault.__name__, issued.body)
                assert json.loads(issued.body)["errors"][0]["code"] == "UNAVAILABLE"
            logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert logged and all("token-key.pem" in line for line in logged), logged
            assert not any("Traceback" in line or "PRIVATE KEY" in line for line in logged)
        current.unlink()
        current.write_bytes(kept)
        answer = await get_with_token(edge, MANIFEST, token)
        assert answer.status == 200
    sent = [r for r in m.upstream.requests if "/manifests/" in r.url.path]
    assert len(sent) == 1  # only the request after the fix


async def test_a_mirror_that_cannot_write_its_first_key_starts_and_answers_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No key yet and ``auth.dir`` read-only at start-up: the ``OSError`` of the first key's
    write ended the start with a traceback. It is said once in the log, naming the file, and
    each check answers 503, as for a key file that breaks later (or a broken users file)."""
    monkeypatch.setattr(keys, "write_files_atomic", read_only)
    with caplog.at_level(logging.ERROR, logger="docxy.access.gate"):
        async with users_mirror(tmp_path) as m:
            assert any("token-key.pem" in r.getMessage() for r in caplog.records)
            response = await m.client.get(
                "/auth/token?scope=repository:library/redis:pull", headers=basic("alice", "right")
            )
            assert response.status_code == 503
            monkeypatch.undo()  # the mount made writable: the first use writes the key
            assert (await token_for(m, "repository:library/redis:pull")) != ""

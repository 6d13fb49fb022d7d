"""A further review of the mirror's own access control (after ``test_review_access3``, whose
name this one's would have taken): token lifetimes as clients time them, ``docxy users rm`` on
a users file bind-mounted alone, how a token is told to be the mirror's, a users file with
a bad line at start-up, and a password that is not UTF-8 text; and what was checked and
found right (a password with ``:`` or beyond ASCII, scopes of nested names).

Each fault is a test asserting the right behaviour; it was seen failing (strict xfail)
before the code was mended.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from docxy.access import tokens
from docxy.access.gate import AccessControl
from docxy.access.keys import KeyRing
from docxy.access.tokens import ALGORITHM, TokenSpec, issue, issued_here
from docxy.access.users import UsersFile
from docxy.cli.main import main
from docxy.config import load_config
from tests.unit.test_access_cli import auth_dir  # noqa: F401 - a fixture
from tests.unit.test_access_routes import (
    MANIFEST_PATH,
    basic,
    bearer,
    token_for,
    users_mirror,
)
from tests.unit.test_access_tokens import PULL, SPEC

# --- 1. a token's lifetime as the client times it -------------------------------------------


def client_expiry(body: dict[str, object], client_now: datetime) -> datetime:
    """When a Docker client takes a token answer for expired: ``issued_at`` + ``expires_in``
    when the answer has an ``issued_at``, else the client's own time of the answer +
    ``expires_in`` (distribution's token handler, and containerd's, do so), compared with
    the client's clock."""
    expires_in = body["expires_in"]
    assert isinstance(expires_in, int)
    issued = body.get("issued_at")
    start = (
        datetime.fromisoformat(issued.replace("Z", "+00:00"))
        if isinstance(issued, str)
        else client_now
    )
    return start + timedelta(seconds=expires_in)


@pytest.mark.parametrize("skew", [-290, 600, 3600])
async def test_a_client_whose_clock_is_off_times_the_token_by_its_own_clock(
    tmp_path: Path, skew: int
) -> None:
    """The token answer said ``issued_at`` in the mirror's time, and docker counts
    ``expires_in`` from it by its own clock: a client whose clock ran ``auth.token_ttl`` or more
    ahead took every token for expired when it came, and asked ``/auth/token`` again before
    each request (each a password hash on the mirror, two at a time); one behind kept sending a
    token the mirror had let expire (a 401 mid-pull). Without ``issued_at`` (optional in the
    token spec) the client counts from when it got the token, on its own clock."""
    async with users_mirror(tmp_path) as m:
        response = await m.client.get(
            "/auth/token?scope=repository:library/redis:pull", headers=basic("alice", "right")
        )
        body = json.loads(await response.get_data())
    server_now = datetime.now().astimezone()
    client_now = server_now + timedelta(seconds=skew)
    # the client holds it for its lifetime, on its clock, and the mirror honours it as long
    expiry = client_expiry(body, client_now)
    assert expiry - client_now > timedelta(seconds=body["expires_in"] - 30)
    assert expiry - client_now <= timedelta(seconds=body["expires_in"])


# --- 2. `docxy users rm` on a users file bind-mounted alone -----------------------------------


def test_users_rm_on_a_file_mounted_alone_says_to_mount_its_directory(
    auth_dir: Path,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In a container whose users file is a single-file bind mount, the new file cannot be
    renamed over the mount point: ``rename`` fails with EBUSY (seen with ``unshare -m`` and
    ``mount --bind`` of the file), and ``docxy users rm`` printed ``[Errno 16] Device or
    resource busy: '/etc/docxy/.users.x1y2' -> '/etc/docxy/users'``, not what to do. It says
    the file is mounted alone and to mount its directory, and the file is as it was."""
    UsersFile(auth_dir / "users").add("alice", "pw")
    users = auth_dir / "users"
    before = users.read_bytes()
    real_replace = os.replace

    def mount_point(src: str, dst: str | Path) -> None:
        if Path(dst) == users:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), src, None, str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", mount_point)
    assert main(["users", "rm", "alice"]) == 1
    err = capsys.readouterr().err
    assert "mount" in err and "directory" in err and str(users) in err
    assert "Errno" not in err and ".users." not in err  # not the staged file's name
    assert users.read_bytes() == before
    assert [p.name for p in auth_dir.iterdir()] == ["users"]  # no staged file left


# --- 3. a token of the mirror's is told by its kid --------------------------------------------


def test_a_token_is_checked_only_against_the_key_its_kid_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Telling whether a token is the mirror's (for a certificate client under
    ``auth.upstream_logins``, on each request, and for ``/auth/token``) verified its signature
    with every key the mirror holds, whatever its header's ``kid``: a stranger's token (Docker
    Hub's, with a kid of its own) cost two ECDSA verifications on every request. Now the key
    its kid names, or none; a token without a kid is tried against the (two) keys."""
    ring = KeyRing(tmp_path, grace=3600)
    earlier = TokenSpec("https://old.test", "old.test", 300)  # another server.public_url
    now = time.time()
    retired = issue(ring, earlier, "alice", PULL, now)
    ring.rotate()
    current = issue(ring, earlier, "alice", PULL, now)
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = jwt.encode(
        {"iss": "auth.docker.io", "sub": "x", "exp": int(now) + 300},
        stranger_key,
        algorithm=ALGORITHM,
        headers={"kid": "ABCD:EFGH:IJKL"},
    )
    # a stranger's token that names our current key's kid: one verification, and not ours
    forged_kid = jwt.encode(
        {"iss": "auth.docker.io"},
        stranger_key,
        algorithm=ALGORITHM,
        headers={"kid": ring.signing().kid},
    )
    previous = ring._previous
    assert previous is not None
    no_kid = jwt.encode({"iss": "https://old.test"}, previous.key, algorithm=ALGORITHM)
    numeric_kid = ".".join(  # PyJWT writes no such header: made by hand
        base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
        for part in ({"alg": ALGORITHM, "kid": 5}, {"iss": "x"}, "sig")
    )

    verified: list[object] = []
    real = tokens._signed_by

    def counted(key: ec.EllipticCurvePublicKey, token: str) -> bool:
        verified.append(key)
        return real(key, token)

    monkeypatch.setattr(tokens, "_signed_by", counted)
    expected = [
        (stranger, False, 0),
        (forged_kid, False, 1),
        (current, True, 1),
        (retired, True, 1),
        (no_kid, True, 2),
        (numeric_kid, False, 0),
    ]
    for token, ours, verifications in expected:
        verified.clear()
        assert issued_here(ring, SPEC, token) is ours
        assert len(verified) == verifications


# --- 4. a users file with a bad line, at start-up ---------------------------------------------


def test_a_users_file_with_a_bad_line_is_said_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A users file with one bad line (edited by hand) honours nobody: every login and token
    is a 503 until it is mended (a line the mirror cannot read may be a user it must not take
    for a stranger). The start-up read said nothing of it (``prepare`` let the error pass,
    "said at each check"): the mirror started as if all was well, and the first sign was
    every pull failing. It is logged at start-up, naming the file and the line."""
    UsersFile(tmp_path / "users").add("alice", "pw")
    with (tmp_path / "users").open("a") as out:
        out.write("bob $argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA\n")  # a space, not ':'
    config = load_config({"auth.mode": "users", "auth.dir": str(tmp_path)}, environ={})
    with caplog.at_level(logging.ERROR, "docxy"):
        AccessControl(config).prepare()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"{tmp_path / 'users'}:3" in line for line in said), said


# --- checked and found right ------------------------------------------------------------------


@pytest.mark.parametrize("password", ["a:b:c", "pässwörd ünïcode", ":leading", "trailing:"])
async def test_a_password_with_colons_or_beyond_ascii_logs_in(
    tmp_path: Path, password: str
) -> None:
    """``docker login`` sends ``user:password`` in UTF-8: the first ``:`` ends the name."""
    async with users_mirror(tmp_path) as m:
        UsersFile(tmp_path / "users").add("bob", password)
        token = await token_for(m, "repository:library/redis:pull", "bob", password)
        assert (await m.client.get(MANIFEST_PATH, headers=bearer(token))).status_code == 200


async def test_a_token_for_a_grants_neither_a_slash_b_nor_b(tmp_path: Path) -> None:
    async with users_mirror(tmp_path) as m:
        token = await token_for(m, "repository:owner/a:pull")
        for other in ("owner/a/b", "owner/b", "owner/ab", "owner"):
            answer = await m.client.get(f"/v2/{other}/manifests/7", headers=bearer(token))
            assert answer.status_code == 401, other


# --- 5. a password that is not UTF-8 text ------------------------------------------------------


def test_a_password_not_utf8_is_refused_saying_so_and_nothing_of_it(
    auth_dir: Path,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A password piped in from a Latin-1 terminal or file (``printf 'p\\xe9ss'``) reaches
    Python as a lone surrogate: ``docxy users add`` printed "'utf-8' codec can't encode
    character '\\udce9' in position 1", a character of the password and its place, and not
    what was wrong. docker login sends UTF-8, so such a password could never match: refused,
    saying it is not UTF-8 text, and nothing of it."""
    monkeypatch.setattr("sys.stdin", io.StringIO("p\udce9ss\n"))
    assert main(["users", "add", "carol", "--password-stdin"]) == 1
    err = capsys.readouterr().err
    assert "UTF-8" in err
    assert "udce9" not in err and "\udce9" not in err and "position" not in err
    assert not (auth_dir / "users").exists()

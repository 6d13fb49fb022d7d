"""Review of :class:`docxy.cli.owner.Owner` on a host install run as root whose directories lie
in a directory of an ordinary login user (``/home/op/docxy/certs``, ``/home/op/docxy`` op's).

A directory of root's inside one of another user's was taken for the appliance's case (a root
run of an older version in a volume of the mirror's user) and handed, with everything in it,
to the owner of the directory above: root's ACME account key, TLS private keys, token signing
key and password hashes went to ``op``, who never had them. Now it is handed over only where
that owner also owns ``cache.dir``, which the mirror makes and writes at every start (its own
user's: in the appliance ``docxy``'s; on a host install whose mirror runs as root, root's).

The tests run as root for real, with uids no one has (12345).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from docxy.cli.main import main
from scheduler import main as scheduler_main
from tests.unavailable import skip_or_fail
from tests.unit.test_certs import run_cli
from tests.unit.test_review_rootcerts import OWNER, Appliance, _older_root_run
from tests.unit.test_review_rootcerts import appliance as appliance  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

OP = 12345  # the login user whose directory holds the mirror's


def _uids(top: Path) -> set[int]:
    """The owners of `top` and of everything below it (links unfollowed)."""
    found = {os.lstat(top).st_uid}
    for where, dirs, files in os.walk(top):
        found |= {os.lstat(os.path.join(where, name)).st_uid for name in dirs + files}
    return found


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``/home/op/docxy`` (op's) holding ``access/`` with root's users file, as a root CLI
    wrote it, and ``cache/``, root's (the mirror runs as root)."""
    if os.getuid() != 0:
        skip_or_fail("runs as root: a root run beside another user's directory is the fault")
    top = Path(tempfile.mkdtemp(prefix="docxy-owner-"))  # pytest's are root's alone (0700)
    top.chmod(0o711)
    docxy = top / "docxy"
    docxy.mkdir()
    os.chown(docxy, OP, OP)
    access = docxy / "access"
    access.mkdir(mode=0o700)
    (access / "users").write_text("")  # root's password hashes (none yet)
    (access / "users").chmod(0o600)
    (docxy / "cache").mkdir()
    monkeypatch.setenv("DOCXY_AUTH_DIR", str(access))
    monkeypatch.setenv("DOCXY_CACHE_DIR", str(docxy / "cache"))
    try:
        yield docxy
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_access_cli_as_root_keeps_roots_auth_dir_in_a_users_directory(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``docxy tokens rotate`` and ``docxy users add`` as root: auth.dir, its keys and the
    users file stay root's (they were handed to op), and are written as root."""
    assert main(["tokens", "rotate"]) == 0, capsys.readouterr().err
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO("pw\n"))
        assert main(["users", "add", "alice", "--password-stdin"]) == 0
    err = capsys.readouterr().err
    assert _uids(home / "access") == {0}
    assert "now uid" not in err


def test_access_cli_as_root_without_a_cache_dir_stays_root_and_says_so(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No cache.dir yet (the mirror never started): whose user the mirror is cannot be told,
    so nothing is handed over, and the run says what it left root's."""
    (home / "cache").rmdir()
    assert main(["tokens", "rotate"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert _uids(home / "access") == {0}
    assert "now uid" not in err
    assert f"writing {home / 'access'} as root, not as uid {OP}" in err and "cache.dir" in err


def test_access_cli_as_root_still_hands_back_where_the_mirror_is_that_user(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The appliance's recovery: cache.dir the same user's as the directory above auth.dir."""
    os.chown(home / "cache", OP, OP)
    assert main(["tokens", "rotate"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    access = home / "access"
    assert {os.lstat(path).st_uid for path in (access, access / "token-key.pem")} == {OP}
    assert f"now uid {OP}'s" in err


def test_a_link_for_cache_dir_to_the_mirror_users_directory_is_the_mirrors(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """cache.dir a link to a directory of the mirror's user (a cache on another disk): that
    user is the mirror's, as before the owner was kept to cache.dir's (not following the link
    would protect nothing: whoever may make it may as well make a directory there)."""
    ops = home / "ops"
    ops.mkdir()
    os.chown(ops, OP, OP)
    link = home / "cache-link"
    link.symlink_to(ops)
    monkeypatch.setenv("DOCXY_CACHE_DIR", str(link))
    assert main(["tokens", "rotate"]) == 0, capsys.readouterr().err
    access = home / "access"
    assert access.stat().st_uid == OP  # handed back
    keys = [path for path in access.iterdir() if path.name.startswith("token-key")]
    assert keys and {path.stat().st_uid for path in keys} == {OP}  # written as the mirror's


def _in_a_users_directory(app: Appliance) -> None:
    """The rootcerts layout as a host install: the state directory OWNER's (a login user's),
    certbot's directory and the pair root's (a root renewer's), the mirror's cache root's."""
    _older_root_run(app)
    cache = app.state / "cache"
    os.chown(cache, 0, 0)


def test_certs_renew_as_root_keeps_roots_certbot_tree_in_a_users_directory(
    appliance: Appliance, capsys: pytest.CaptureFixture[str]
) -> None:
    """``docxy certs renew`` as root: certbot's directory (account and private keys) and the
    served pair stay root's, and certbot runs as root."""
    _in_a_users_directory(appliance)
    code = run_cli(["certs", "renew", "--force"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert _uids(appliance.config_dir) == {0}
    assert _uids(appliance.cert.parent) == {0}
    assert appliance.ran_as()[-1] == "ran as 0:0 real 0"
    # Said, once for each directory root will not write as its owner (not once per look).
    said = [line for line in err.splitlines() if f"as root, not as uid {OWNER}" in line]
    assert said and len(said) == len(set(said)), err
    assert f"uid {OWNER}'s" not in err  # nothing handed over


def test_a_one_off_renewer_run_as_root_keeps_roots_certbot_tree_in_a_users_directory(
    appliance: Appliance, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m scheduler --once`` as root, the same."""
    _in_a_users_directory(appliance)
    assert scheduler_main.main(["--once"]) == 0, capsys.readouterr().err
    assert _uids(appliance.config_dir) == {0}
    assert _uids(appliance.cert.parent) == {0}
    assert appliance.ran_as()[-1] == "ran as 0:0 real 0"


@pytest.mark.parametrize("layout", ["auth.dir op's", "auth.dir not made yet"])
def test_access_cli_as_root_writes_no_key_as_a_user_not_the_mirrors(
    home: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    """auth.dir op's itself, or not there yet in op's directory (the nearest existing one):
    the signing key root writes is the mirror's (root's), not op's."""
    access = home / "access"
    if layout == "auth.dir op's":
        os.chown(access, OP, OP)
    else:
        shutil.rmtree(access)
    assert main(["tokens", "rotate"]) == 0, capsys.readouterr().err
    assert os.lstat(access / "token-key.pem").st_uid == 0
    assert "now uid" not in capsys.readouterr().err

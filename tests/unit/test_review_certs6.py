"""Review of whom a root run acts as (:meth:`docxy.cli.owner.Owner.of` and its users):
``docxy certs renew``, ``python -m scheduler --once`` and ``docxy cache`` run as root.

``Owner.of`` took the owner of the directory above a root-owned one for the user to act as. On
a host install whose mirror and renewer run as root, with certs.config_dir (root's, its account
key and private keys 0600) inside a directory of the operator's login user (/home/alice/docxy,
/srv/docxy made by alice), a root ``docxy certs renew`` handed certbot's whole tree to alice
and ran certbot as her: keys given to a user who could not read them before. The user acted as
is now the one the renewer records it runs as (its status file's ``uid``), else the owner of
the directory itself; a tree of root's is never handed to another user on a guess.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from docxy.cli.owner import Owner
from docxy.tls import certs
from scheduler import main as scheduler_main
from tests.unit.test_cachecli import _populate
from tests.unit.test_cachecli import run as run_cache
from tests.unit.test_certs import run_cli
from tests.unit.test_review_certs5 import ALICE, stranded, written_status
from tests.unit.test_review_rootcerts import OWNER, Appliance, _layout, _older_root_run

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


def owned_by(top: Path, uid: int) -> list[str]:
    """Every path under `top` (and `top`) owned by `uid`, links unfollowed."""
    found = []
    for where, dirs, files in os.walk(top):
        for name in (where, *(os.path.join(where, each) for each in dirs + files)):
            if os.lstat(name).st_uid == uid:
                found.append(name)
    return found


@pytest.fixture
def alices(monkeypatch: pytest.MonkeyPatch) -> Iterator[Appliance]:
    """A host install whose mirror and renewer run as root, its state directory (certs/,
    webroot/) made by the operator's login user, alice; certbot's directory made by the root
    renewer's earlier run: root's, mode 0700, its account key and private keys 0600."""
    for app in _layout(0, monkeypatch):
        for name in (app.state, app.state / "certs", app.webroot):
            os.chown(name, ALICE, ALICE)
        subprocess.run(
            [str(app.certbot), "certonly", "--config-dir", str(app.config_dir)],
            check=True,
            timeout=30,
        )
        os.chmod(app.config_dir, 0o700)
        yield app


@pytest.mark.parametrize("recorded", [True, False], ids=["status-uid-0", "no-status"])
def test_a_root_renew_in_alices_directory_keeps_roots_keys_roots(
    alices: Appliance, capsys: pytest.CaptureFixture[str], recorded: bool
) -> None:
    """``docxy certs renew`` as root (as the renewer runs) over root's certbot directory inside
    alice's: certbot runs as root and nothing of the tree becomes alice's. The renewer's status
    file records uid 0, or there is none (an older renewer's, or no run yet)."""
    if recorded:
        assert written_status(alices.config_dir)["uid"] == 0
    code = run_cli(["certs", "renew", "--force"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert owned_by(alices.config_dir, ALICE) == []
    assert alices.ran_as()[-1] == "ran as 0:0 real 0"
    assert "now uid" not in err


def test_a_root_one_off_renewer_run_in_alices_directory_stays_root(
    alices: Appliance, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m scheduler --once`` as root there: the same, and its status is root's."""
    written_status(alices.config_dir)
    assert scheduler_main.main(["--once"]) == 0, capsys.readouterr().err
    assert owned_by(alices.config_dir, ALICE) == []
    assert alices.ran_as()[-1] == "ran as 0:0 real 0"
    assert (alices.config_dir / certs.STATUS_FILE).stat().st_uid == 0


def test_the_renewer_recorded_in_the_status_file_is_acted_as(
    appliance: Appliance, capsys: pytest.CaptureFixture[str]
) -> None:
    """The appliance after a root run of an older version made certbot's directory anew: it is
    root's, the renewer (uid OWNER) recorded itself in its status file before. A root
    ``docxy certs renew`` acts as that uid and hands the tree back to it."""
    config_dir = stranded(appliance.config_dir.parent)
    assert config_dir == appliance.config_dir
    _older_root_run(appliance)
    code = run_cli(["certs", "renew", "--force"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert appliance.ran_as()[-1] == f"ran as {OWNER}:{OWNER} real {OWNER}"
    assert appliance.not_owners(OWNER) == []
    assert appliance.renewer_run().returncode == 0


def test_a_recorded_uid_in_a_file_not_its_own_is_not_believed(
    alices: Appliance, capsys: pytest.CaptureFixture[str]
) -> None:
    """A status file naming another uid than its owner's (root's file saying alice): not the
    renewer's word about itself; root stays root and hands nothing over."""
    status = alices.config_dir / certs.STATUS_FILE
    status.write_text(f'{{"uid": {ALICE}, "gids": [{ALICE}]}}')
    code = run_cli(["certs", "renew", "--force"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert owned_by(alices.config_dir, ALICE) == []
    assert alices.ran_as()[-1] == "ran as 0:0 real 0"


@pytest.fixture
def appliance(monkeypatch: pytest.MonkeyPatch) -> Iterator[Appliance]:
    yield from _layout(OWNER, monkeypatch)


# --- the other users of Owner.of ---------------------------------------------------------------


def test_a_root_directory_in_alices_is_acted_on_as_root(alices: Appliance) -> None:
    """``Owner.of`` itself: a directory of root's is root's to write, whoever owns its parent;
    its files are not handed over (the access CLI's keys: ``hand_over``)."""
    auth = alices.state / "docxy-access"
    auth.mkdir(mode=0o700)
    (auth / "signing-key").write_text("root's")
    owner = Owner.of(auth)
    owner.hand_over(auth, ["signing-key"])
    assert (owner.uid, owner.switches) == (0, False)
    assert owned_by(auth, ALICE) == []


def test_a_root_cache_in_alices_directory_is_run_on_as_root(
    alices: Appliance, capsys: pytest.CaptureFixture[str]
) -> None:
    """``docxy cache gc`` as root over a cache of root's (a root mirror's) inside alice's
    directory, its modes a root mirror's under umask 077: it runs as root (as alice it could
    read none of it), and nothing it makes there is alice's."""
    populated = asyncio.run(_populate(alices.state / "cache"))
    for where, _dirs, files in os.walk(populated.root):
        os.chmod(where, 0o700)
        for name in files:
            os.chmod(os.path.join(where, name), 0o600)
    os.rmdir(populated.root / "tmp")  # gc makes it anew
    code, out, err = run_cache(capsys, populated, "gc")
    assert code == 0, err
    assert owned_by(populated.root, ALICE) == []


def test_the_appliance_cache_is_still_acted_on_as_its_owner(
    appliance: Appliance, capsys: pytest.CaptureFixture[str]
) -> None:
    """The image's cache volume, the mirror user's: root acts as it, as before."""
    populated = asyncio.run(_populate(appliance.state / "cache"))
    for where, dirs, files in os.walk(populated.root):
        for name in (where, *(os.path.join(where, each) for each in dirs + files)):
            os.lchown(name, OWNER, OWNER)
    assert Owner.of(populated.root).uid == OWNER
    code, out, err = run_cache(capsys, populated, "gc")
    assert code == 0, err
    assert owned_by(populated.root, 0) == []

"""Review of ``docxy certs obtain|renew`` run as root beside a renewer that runs as the
directory's owner (the appliance: ``docker compose exec -u 0 docxy docxy certs renew``).

A root run left certbot's directory (accounts, archive, live, renewal, logs, work), the served
pair and the webroot's challenge directory root's: the renewer, the image's ``docxy`` user,
then failed at its next run (EACCES) and the mirror could not read a root-only key. Each test
runs as root for real, over a tree owned by an unprivileged uid (4242), with a certbot that is
a script: the point is who owns what it and docxy write, and who it runs as.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from docxy.tls import certs
from docxy.tls.context import self_signed
from docxy.tls.files import write_pair
from scheduler import main as scheduler_main
from tests.unavailable import skip_or_fail
from tests.unit.test_certs import run_cli

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

OWNER = 4242  # the mirror's user (the image's docxy is 999): no name, no home

#: certbot's certonly/renew, as far as the files go: it makes its directories, writes a new
#: archive version (key 0600) with live/ links to it and the renewal configuration, and logs
#: who it ran as (effective, group, real).
CERTBOT = """#!/bin/sh
set -e
cfg=
while [ $# -gt 0 ]; do
  case "$1" in --config-dir) cfg="$2"; shift ;; esac
  shift
done
mkdir -p "$cfg/logs" "$cfg/work" "$cfg/accounts/acme.test/directory/0123" \
  "$cfg/archive/mirror.test" "$cfg/live/mirror.test" "$cfg/renewal"
echo "ran as $(id -u):$(id -g) real $(id -ru)" >> "$cfg/logs/letsencrypt.log"
echo '{"kty": "EC"}' > "$cfg/accounts/acme.test/directory/0123/private_key.json"
chmod 600 "$cfg/accounts/acme.test/directory/0123/private_key.json"
n=$(( $(ls "$cfg/archive/mirror.test" | grep -c fullchain || true) + 1 ))
cp "{issued}/fullchain.pem" "$cfg/archive/mirror.test/fullchain$n.pem"
cp "{issued}/privkey.pem" "$cfg/archive/mirror.test/privkey$n.pem"
chmod 600 "$cfg/archive/mirror.test/privkey$n.pem"
ln -sfn "../../archive/mirror.test/fullchain$n.pem" "$cfg/live/mirror.test/fullchain.pem"
ln -sfn "../../archive/mirror.test/privkey$n.pem" "$cfg/live/mirror.test/privkey.pem"
echo "version = 2.1.0" > "$cfg/renewal/mirror.test.conf"
"""


@dataclass
class Appliance:
    """The appliance's layout under a directory any user may reach: ``certs/`` (the volume:
    ``letsencrypt/`` is certs.config_dir, ``served/`` the pair) and ``webroot/``."""

    top: Path
    state: Path
    certbot: Path

    @property
    def config_dir(self) -> Path:
        return self.state / "certs" / "letsencrypt"

    @property
    def cert(self) -> Path:
        return self.state / "certs" / "served" / "fullchain.pem"

    @property
    def key(self) -> Path:
        return self.state / "certs" / "served" / "privkey.pem"

    @property
    def webroot(self) -> Path:
        return self.state / "webroot"

    def ran_as(self) -> list[str]:
        """Who certbot ran as, each time."""
        log = self.config_dir / "logs" / "letsencrypt.log"
        return log.read_text().splitlines() if log.exists() else []

    def not_owners(self, uid: int) -> list[str]:
        """Every path under the state directory not owned by `uid` (links too, unfollowed)."""
        found = []
        for top, dirs, files in os.walk(self.state):
            for name in (top, *(os.path.join(top, each) for each in dirs + files)):
                if os.lstat(name).st_uid != uid:
                    found.append(name)
        return found

    def renewer_run(self) -> subprocess.CompletedProcess[str]:
        """The renewer's next certbot run, as the owner (as supervisord starts it)."""
        return subprocess.run(
            [str(self.certbot), "renew", "--config-dir", str(self.config_dir)],
            user=OWNER,
            group=OWNER,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


def _layout(owner: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[Appliance]:
    if os.getuid() != 0:
        skip_or_fail("runs as root: a root run beside the owner's files is what it shows")
    top = Path(tempfile.mkdtemp(prefix="docxy-rootcerts-"))
    try:
        os.chmod(top, 0o711)  # pytest's own directories are root's, mode 0700
        issued = top / "issued"  # what the CA issues: readable by anyone, as a copy source
        self_signed(issued, "mirror.test", cert_name="fullchain.pem", key_name="privkey.pem")
        os.chmod(issued / "privkey.pem", 0o644)
        os.chmod(issued, 0o755)
        script = top / "certbot"
        script.write_text(CERTBOT.replace("{issued}", str(issued)))
        script.chmod(0o755)
        state = top / "state"
        for each in ("cache", "certs", "webroot"):  # the image's: made at build, chowned to docxy
            (state / each).mkdir(parents=True)
        for name in (state, state / "cache", state / "certs", state / "webroot"):
            os.chown(name, owner, owner)
        monkeypatch.setattr(certs, "CERTBOT", str(script))
        app = Appliance(top, state, script)
        # the mirror's user is the owner of cache.dir (docxy.cli.owner.Owner.of)
        monkeypatch.setenv("DOCXY_CACHE_DIR", str(state / "cache"))
        monkeypatch.setenv("DOCXY_CERTS_DOMAIN", "mirror.test")
        monkeypatch.setenv("DOCXY_CERTS_WEBROOT", str(app.webroot))
        monkeypatch.setenv("DOCXY_CERTS_CONFIG_DIR", str(app.config_dir))
        monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(app.cert))
        monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(app.key))
        yield app
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def appliance(monkeypatch: pytest.MonkeyPatch) -> Iterator[Appliance]:
    """The certs volume and webroot owned by the mirror's user, as the image makes them."""
    yield from _layout(OWNER, monkeypatch)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[Appliance]:
    """The same layout all root's: a host install whose mirror and renewer run as root."""
    yield from _layout(0, monkeypatch)


def _older_root_run(app: Appliance) -> None:
    """What a root run of an older version left: certbot's whole directory, the served pair
    and the webroot's challenge directory, all root's."""
    subprocess.run(
        [str(app.certbot), "certonly", "--config-dir", str(app.config_dir)],
        check=True,
        timeout=30,
    )
    live = app.config_dir / "live" / "mirror.test"
    write_pair(
        app.cert,
        app.key,
        (live / "fullchain.pem").read_bytes(),
        (live / "privkey.pem").read_bytes(),
    )
    (app.webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    assert app.not_owners(OWNER), "the older root run left nothing root's"


# --- 1. a root run acts as the owner of certbot's directory -------------------------------------


def test_obtain_as_root_runs_certbot_and_writes_the_pair_as_the_owner(
    appliance: Appliance, capsys: pytest.CaptureFixture[str]
) -> None:
    """``docker compose exec -u 0 docxy docxy certs obtain``: certbot ran as root, and its
    directory, the served pair (the key 0600) and the webroot's challenge directory were all
    root's. The mirror could not read its key; the renewer's next run failed (EACCES)."""
    code = run_cli(["certs", "obtain"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert appliance.ran_as() == [f"ran as {OWNER}:{OWNER} real {OWNER}"]
    assert appliance.not_owners(OWNER) == []
    assert stat.S_IMODE(appliance.key.stat().st_mode) == 0o600
    renewer = appliance.renewer_run()
    assert renewer.returncode == 0, renewer.stderr


def test_renew_as_root_hands_over_what_an_older_root_run_left(
    appliance: Appliance, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a root run of an older version, the renewer failed at every run and a root
    ``docxy certs renew`` went on adding root's files. Now it hands them to the owner first
    (saying so), and runs and writes as the owner."""
    _older_root_run(appliance)
    failed = appliance.renewer_run()
    assert failed.returncode != 0 and "Permission denied" in failed.stderr
    code = run_cli(["certs", "renew", "--force"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert appliance.not_owners(OWNER) == []
    assert f"now uid {OWNER}'s" in err
    assert appliance.ran_as()[-1] == f"ran as {OWNER}:{OWNER} real {OWNER}"
    renewer = appliance.renewer_run()
    assert renewer.returncode == 0, renewer.stderr


# --- 3. a host install, all root's, as before ---------------------------------------------------


def test_obtain_as_root_over_roots_directories_stays_root(
    host: Appliance, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host install whose directories are root's: certbot and the pair stay root's, as
    before (the owner is acted as only when it is not root)."""
    code = run_cli(["certs", "obtain"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert host.ran_as() == ["ran as 0:0 real 0"]
    assert host.not_owners(0) == []
    assert "now uid" not in err


def test_a_root_that_may_not_change_its_uid_says_how_to_run_it(
    appliance: Appliance, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container whose root may not change its uid (cap_drop: SETUID, SETGID): one line
    naming the owner and the ``docker exec -u`` to run it with, exit 1; certbot never ran as
    root over the owner's files."""

    def refused(groups: list[int]) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setgroups", refused)
    code = run_cli(["certs", "obtain"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"cannot act as uid {OWNER}" in err and f"docker exec -u {OWNER}:{OWNER}" in err
    assert "Traceback" not in err
    assert appliance.ran_as() == []


def test_the_hand_over_follows_no_link_and_leaves_a_hard_linked_file(
    appliance: Appliance, capsys: pytest.CaptureFixture[str]
) -> None:
    """The certs volume is the mirror user's: a link it put there to a directory or file of
    root's, or a hard link to root's file, is not a way to have root hand those over."""
    _older_root_run(appliance)
    secret_dir = appliance.top / "roots"
    secret_dir.mkdir()
    secret = secret_dir / "secret"
    secret.write_text("root's")
    (appliance.config_dir / "work" / "to-dir").symlink_to(secret_dir)
    (appliance.config_dir / "work" / "to-file").symlink_to(secret)
    linked = appliance.config_dir / "logs" / "hard"
    try:
        os.link(secret, linked)
    except OSError as exc:  # protected_hardlinks does not stop root; another file system does
        skip_or_fail(f"no hard link to show: {exc}")
    code = run_cli(["certs", "renew", "--force"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert os.stat(secret_dir).st_uid == 0 and os.stat(secret).st_uid == 0
    assert f"{linked} (hard-linked elsewhere)" in err
    assert f"chown -R {OWNER}:{OWNER} {appliance.config_dir}" in err
    assert appliance.not_owners(OWNER) == [str(linked)]


def test_a_pair_in_a_directory_of_roots_is_written_as_root(
    appliance: Appliance, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """tls.cert_path in a directory of root's (a host's /etc/...) beside a certbot directory of
    the mirror user's: certbot runs as that user, the pair is written as root, as before; no
    directory of root's is handed over."""
    tls = appliance.top / "etc-tls"
    tls.mkdir(mode=0o755)
    monkeypatch.setenv("DOCXY_TLS_CERT_PATH", str(tls / "fullchain.pem"))
    monkeypatch.setenv("DOCXY_TLS_KEY_PATH", str(tls / "privkey.pem"))
    code = run_cli(["certs", "obtain"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert appliance.ran_as() == [f"ran as {OWNER}:{OWNER} real {OWNER}"]
    assert appliance.not_owners(OWNER) == []
    owners = {os.lstat(path).st_uid for path in (tls, tls / "fullchain.pem", tls / "privkey.pem")}
    assert owners == {0}


# --- the renewer's one-off run as root ----------------------------------------------------------


def test_a_one_off_renewer_run_as_root_acts_as_the_owner(
    appliance: Appliance, capsys: pytest.CaptureFixture[str]
) -> None:
    """``docker compose exec -u 0 docxy python -m scheduler --once`` (the README's one-off
    run): certbot, the pair and the renewer's status file were root's, and the renewer's own
    runs after it failed (EACCES) where an older root run had left them so."""
    _older_root_run(appliance)
    assert scheduler_main.main(["--once"]) == 0, capsys.readouterr().err
    assert (appliance.config_dir / "status.json").is_file()
    assert appliance.ran_as()[-1] == f"ran as {OWNER}:{OWNER} real {OWNER}"
    assert appliance.not_owners(OWNER) == []
    renewer = appliance.renewer_run()
    assert renewer.returncode == 0, renewer.stderr

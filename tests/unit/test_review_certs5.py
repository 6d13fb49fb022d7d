"""Review of what the readers of the renewer's status say of an unwritable certs.config_dir
(review certs5):

1. ``stranded_config_dir`` took the owner of config_dir's parent for the renewer's user: a
   host install run all as root, config_dir (root's) in a directory of the operator's login
   user, was refused for ever (/health degraded, ``docxy certs status`` exit 1, a hint to
   chown certbot's tree to that user); a group that grants write (a supplementary one) was
   not looked at. The renewer now records its uid and gids in its status file;
   a reader judges by them (or, as the same user, by ``os.access``).
2. That hint went in ``refused``, which everything else reads as "settings refused, no run
   scheduled" (the status page's "settings refused", docxy_cert_renewal_settings_refused 1):
   it has a field of its own, ``config_dir_unwritable``.

Nothing here listens: no address, no port (this review's range: 127.0.80.1-9:12200-12249).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from docxy.cli.owner import Owner
from docxy.config import load_config
from docxy.observe import status as status_page
from docxy.tls import certs
from scheduler import settings as settings_mod
from scheduler.runs import Runs
from tests.unit.test_certs import clean_env as clean_env  # noqa: F401  (fixture)
from tests.unit.test_certs import run_cli
from tests.unit.test_observe_routes import stack
from tests.unit.test_review_metrics import with_renewal
from tests.unit.test_review_rootcerts import OWNER

ALICE = 4243  # the operator's login user, who made /srv/docxy (or owns /home/alice)
GROUP = 4244  # a group the renewer's user is in besides its own


@pytest.fixture
def volume() -> Iterator[Path]:
    """A directory any user may reach, holding ``certs/`` (config_dir's parent, root's: each
    test gives it its owner)."""
    if os.getuid() != 0:
        pytest.skip("runs as root: the owners are what it shows")
    top = Path(tempfile.mkdtemp(prefix="docxy-certs5-"))
    try:
        os.chmod(top, 0o711)
        (top / "certs").mkdir()
        os.chmod(top / "certs", 0o755)
        yield top / "certs"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def written_status(config_dir: Path, domain: str = "mirror.test") -> dict[str, object]:
    """The renewer's status file as it writes it (``scheduler.runs.Runs.write_status``), by
    whoever runs this; what it wrote."""
    environ = {"DOCXY_CERTS_CONFIG_DIR": str(config_dir), "DOCXY_CERTS_DOMAIN": domain}
    Runs(settings_mod.load([], environ)).write_status(None)
    written: dict[str, object] = json.loads((config_dir / certs.STATUS_FILE).read_text())
    return written


def stranded(volume: Path) -> Path:
    """The appliance's case: the renewer (uid OWNER) wrote its status, then config_dir became
    root's (a root run of an older version made it anew): the renewer cannot write it."""
    os.chown(volume, OWNER, OWNER)
    config_dir = volume / "letsencrypt"
    config_dir.mkdir(mode=0o755)
    os.chown(config_dir, OWNER, OWNER)
    with Owner(OWNER, OWNER, config_dir).acting():
        written_status(config_dir)
    os.chown(config_dir, 0, 0)
    return config_dir


@contextmanager
def in_group(group: int) -> Iterator[None]:
    """Root acting as OWNER (effective uid and gid) with ``group`` besides its own."""
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups([OWNER, group])
    os.setegid(OWNER)
    os.seteuid(OWNER)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


def group_writable(volume: Path) -> Path:
    """config_dir root's, group GROUP rwx (setgid), in the renewer's (OWNER's) volume."""
    os.chown(volume, OWNER, OWNER)
    config_dir = volume / "letsencrypt"
    config_dir.mkdir()
    os.chown(config_dir, 0, GROUP)
    os.chmod(config_dir, 0o2775)
    return config_dir


# --- 1. who the renewer is, not who owns the parent --------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_the_renewer_records_who_it_is(volume: Path) -> None:
    config_dir = volume / "letsencrypt"
    config_dir.mkdir()
    os.chown(volume, OWNER, OWNER)
    os.chown(config_dir, OWNER, OWNER)
    with Owner(OWNER, OWNER, config_dir).acting():
        written = written_status(config_dir)
    assert written["uid"] == OWNER and written["gids"] == [OWNER], written
    assert "uid" not in certs.public_renewal(certs.renewal_status(config_dir))


@pytest.mark.usefixtures("clean_env")
def test_a_host_install_all_roots_under_alices_directory_is_not_refused(
    volume: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mirror and renewer run as root; config_dir (root's, made by the root renewer) is in
    /srv/docxy, which is the operator's: it works, and was said stranded for ever, its hint
    telling to chown certbot's tree (the ACME account key, the private keys) to alice."""
    os.chown(volume, ALICE, ALICE)
    config_dir = volume / "letsencrypt"
    config_dir.mkdir(mode=0o755)
    written = written_status(config_dir)  # by the root renewer
    status = certs.renewal_status(config_dir)
    assert "refused" not in status and "config_dir_unwritable" not in status, status
    assert written["uid"] == 0
    public = certs.public_renewal(status)
    assert "refused" not in public and "config_dir_unwritable" not in public, public
    capsys.readouterr()
    run_cli(["certs", "status", "--config-dir", str(config_dir)])
    err = capsys.readouterr().err
    assert "chown" not in err and str(ALICE) not in err, err


@pytest.mark.usefixtures("clean_env")
def test_the_appliance_layout_is_still_said(volume: Path) -> None:
    """The renewer (uid OWNER) cannot write its root's config_dir: said, to root (the uid in
    the status file) and to the mirror's user (os.access) alike."""
    config_dir = stranded(volume)
    said = [certs.renewal_status(config_dir).get("config_dir_unwritable")]
    with Owner(OWNER, OWNER, config_dir).acting():
        said.append(certs.renewal_status(config_dir).get("config_dir_unwritable"))
    for hint in said:
        assert f"chown -R {OWNER}:{OWNER} {config_dir}" in str(hint), said
        assert "docxy certs renew" in str(hint), said


@pytest.mark.usefixtures("clean_env")
def test_a_group_that_grants_write_is_not_refused(volume: Path) -> None:
    """config_dir root's, group GROUP rwx: the renewer (OWNER, in GROUP besides its own)
    writes it. Neither root (the gids recorded) nor the renewer's user (os.access) says
    otherwise."""
    config_dir = group_writable(volume)
    with in_group(GROUP):
        written = written_status(config_dir)  # it can: the group's
        as_owner = certs.renewal_status(config_dir)
    as_root = certs.renewal_status(config_dir)
    assert "config_dir_unwritable" not in as_root and "refused" not in as_root, as_root
    assert "config_dir_unwritable" not in as_owner and "refused" not in as_owner, as_owner
    assert GROUP in written["gids"], written  # type: ignore[operator]


@pytest.mark.usefixtures("clean_env")
def test_no_uid_recorded_root_says_nothing_the_user_asks_the_kernel(volume: Path) -> None:
    """A status file of an older version (no uid), or none: root cannot tell whose renewer it
    is and says nothing; the mirror's user asks os.access for itself."""
    os.chown(volume, OWNER, OWNER)
    config_dir = volume / "letsencrypt"
    config_dir.mkdir(mode=0o755)  # root's
    (config_dir / certs.STATUS_FILE).write_text(json.dumps({"failures": 0}))
    assert "config_dir_unwritable" not in certs.renewal_status(config_dir)
    with Owner(OWNER, OWNER, config_dir).acting():
        hint = certs.renewal_status(config_dir).get("config_dir_unwritable")
    assert f"chown -R {OWNER}:{OWNER} {config_dir}" in str(hint), hint


@pytest.mark.usefixtures("clean_env")
def test_no_uid_recorded_a_root_renewer_beside_a_mirror_user_is_not_said(volume: Path) -> None:
    """A host install: config_dir root's (a root renewer, or `sudo docxy certs obtain`) in a
    directory of root's, the mirror run as another user, no uid recorded (no status yet, or an
    older version's): the mirror took itself for the renewer, said it stuck, and told to give
    root's certbot tree to its own user."""
    config_dir = volume / "letsencrypt"
    config_dir.mkdir(mode=0o755)  # root's, in root's certs/
    for status in (None, {"failures": 0}):
        if status is not None:
            (config_dir / certs.STATUS_FILE).write_text(json.dumps(status))
        with Owner(OWNER, OWNER, config_dir).acting():
            said = certs.renewal_status(config_dir)
        assert "config_dir_unwritable" not in said, said


@pytest.mark.usefixtures("clean_env")
def test_the_same_user_in_a_recorded_group_that_grants_write_is_not_said(volume: Path) -> None:
    """The renewer (OWNER, in GROUP) can write; the mirror, the same uid without GROUP, read
    only its own groups (os.access) and said it stuck."""
    config_dir = group_writable(volume)
    with in_group(GROUP):
        written_status(config_dir)
    with Owner(OWNER, OWNER, config_dir).acting():
        said = certs.renewal_status(config_dir)
    assert "config_dir_unwritable" not in said, said


# --- 2. its own field, not `refused` -----------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
async def test_an_unwritable_config_dir_is_not_refused_settings(
    volume: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stranded renewer is scheduled and failing: not "settings refused" (status page),
    not docxy_cert_renewal_settings_refused 1 (no renewal scheduled); /health still degraded
    and `docxy certs status` still exits 1, saying it."""
    config_dir = stranded(volume)
    status = certs.renewal_status(config_dir)
    assert "refused" not in status, status
    assert f"chown -R {OWNER}:{OWNER}" in str(status.get("config_dir_unwritable")), status
    public = certs.public_renewal(status)
    assert public.get("config_dir_unwritable") is True and "refused" not in public, public
    assert str(config_dir) not in json.dumps(public)
    page = status_page._certificate(None, status)
    assert "settings refused" not in page and "cannot write" in page, page
    async with stack(tmp_path) as mirror:
        with_renewal(mirror, config_dir)
        seen = await mirror.scrape()
        health = json.loads((await mirror.get("/health")).body)
    assert health["status"] == "degraded", health
    assert health["renewal"].get("config_dir_unwritable"), health
    assert seen["docxy_cert_renewal_settings_refused{}"] == 0.0
    capsys.readouterr()
    cert, key = volume / "fullchain.pem", volume / "privkey.pem"
    argv = ["certs", "status", "--config-dir", str(config_dir), "--cert", str(cert)]
    assert run_cli([*argv, "--key", str(key), "--set", "certs.domain=mirror.test"]) == 1
    err = capsys.readouterr().err
    assert f"chown -R {OWNER}:{OWNER}" in err and "refuses its settings" not in err, err


def _acl_entry(tag: int, perm: int, who: int = 0xFFFFFFFF) -> bytes:
    return struct.pack("<HHI", tag, perm, who)


@pytest.mark.usefixtures("clean_env")
def test_an_acl_that_grants_write_is_not_refused(volume: Path) -> None:
    """config_dir root's 0755 with an ACL entry giving OWNER rwx: the renewer writes it; the
    bits alone said it could not."""
    os.chown(volume, OWNER, OWNER)
    config_dir = volume / "letsencrypt"
    config_dir.mkdir(mode=0o755)
    acl = struct.pack("<I", 2) + b"".join(
        (
            _acl_entry(0x01, 7),  # the owner
            _acl_entry(0x02, 7, OWNER),  # OWNER: rwx
            _acl_entry(0x04, 5),  # the group
            _acl_entry(0x10, 7),  # the mask
            _acl_entry(0x20, 5),  # others
        )
    )
    try:
        os.setxattr(config_dir, "system.posix_acl_access", acl)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs here: {exc}")
    with Owner(OWNER, OWNER, config_dir).acting():
        written_status(config_dir)  # it can: the ACL's
        as_owner = certs.renewal_status(config_dir)
    assert "config_dir_unwritable" not in as_owner, as_owner
    as_root = certs.renewal_status(config_dir)
    assert "config_dir_unwritable" not in as_root, as_root


# --- 3. without certs.domain nothing of it is said -----------------------------------------------


def test_without_a_domain_an_unwritable_config_dir_is_not_said(
    volume: Path, tmp_path: Path
) -> None:
    """No certs.domain: the renewer runs no certbot; a refusal of its settings it wrote
    (domain null) is shown, as before, but not that it cannot write config_dir since (the
    README: said with certs.domain set)."""
    from docxy.http.server import renewal_provider

    config_dir = stranded(volume)
    said = json.loads((config_dir / certs.STATUS_FILE).read_text())
    said.update(domain=None, refused="scheduler.interval: not a duration")
    (config_dir / certs.STATUS_FILE).write_text(json.dumps(said))
    config = load_config({"certs.config_dir": str(config_dir)}, environ={})
    provider = renewal_provider(config)
    assert provider is not None
    shown = provider()
    assert shown is not None and shown.get("refused"), shown
    assert "config_dir_unwritable" not in shown, shown

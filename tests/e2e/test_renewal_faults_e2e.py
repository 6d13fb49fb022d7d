"""Renewal faults a user would hit, shown with real certbot against pebble on loopback.

Each test failed on the code before its fix (see the commit that added it).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from docxy.tls import certs
from lab.acme import DOMAIN, EMAIL, running_pebble
from lab.mirror import launch_mirror, stop_mirror
from tests.e2e.test_certs_e2e import (
    DEAD_UPSTREAM,
    Site,
    docxy_certs,
    mirror_with_tls,
    run_renewer_once,
    serial_of,
)

pytestmark = pytest.mark.e2e

OLD_DOMAIN = "old.mirror.test"  # the mirror's earlier name (challtestsrv resolves it too)


def test_an_earlier_domains_lineage_neither_fails_nor_blocks_the_renewal(tmp_path: Path) -> None:
    """The mirror was renamed: certbot's directory still holds the lineage of its earlier name,
    whose renewal now fails (that name no longer leads here; below, its webroot is one nobody
    serves). Renewing the mirror's own certificate must neither fail because of it, nor leave
    the renewed certificate uninstalled, nor ask the CA for the earlier name again and again."""
    site = Site(tmp_path)
    with mirror_with_tls(site) as (mirror, _tls_port):
        with running_pebble(tmp_path / "pebble", mirror.port) as pebble:
            certs.obtain(
                OLD_DOMAIN,
                EMAIL,
                webroot=site.webroot,
                config_dir=site.config_dir,
                acme_server=pebble.directory,
                ca_bundle=pebble.tls_ca,
                staging=False,
            )
            conf = site.config_dir / "renewal" / f"{OLD_DOMAIN}.conf"
            gone = tmp_path / "old-webroot"  # no server answers for this one any more
            conf.write_text(re.sub(re.escape(str(site.webroot)), str(gone), conf.read_text()))

            first = run_renewer_once(site, pebble)  # the first issuance for the new name
            assert first.returncode == 0, first.stderr
            served = serial_of(site.cert)

            second = run_renewer_once(site, pebble)  # pebble's certificates are always due
            status = site.status()
            live = site.config_dir / "live" / "mirror.test"
            renewed = serial_of(live / "fullchain.pem")
    assert renewed != served  # renewed...
    assert site.cert.read_bytes() == (live / "fullchain.pem").read_bytes()  # ...and served
    assert second.returncode == 0, second.stderr
    assert status["last_error"] is None and status["failures"] == 0
    assert OLD_DOMAIN not in second.stderr, second.stderr


def test_a_mirror_without_a_domain_reports_no_renewal_trouble(tmp_path: Path) -> None:
    """The plain-HTTP appliance (no DOCXY_DOMAIN, behind a CDN or a reverse proxy): the image
    sets certs.config_dir for every container, but without certs.domain no renewer runs (the
    entrypoint does not start it; run by hand it idles and writes no status, by design). /health
    and /status then showed a renewal error ("no renewer status ... FileNotFoundError") that no
    renewer would ever clear. With a domain, a missing status is worth showing: it stays."""
    config_dir = tmp_path / "letsencrypt"
    plain = launch_mirror(
        DEAD_UPSTREAM, tmp_path / "plain", [], {"DOCXY_CERTS_CONFIG_DIR": str(config_dir)}
    )
    try:
        plain_health = httpx.get(f"{plain.url}/health", timeout=10).json()
    finally:
        stop_mirror(plain)
    with_domain = launch_mirror(
        DEAD_UPSTREAM,
        tmp_path / "domain",
        [],
        {"DOCXY_CERTS_CONFIG_DIR": str(config_dir), "DOCXY_CERTS_DOMAIN": "mirror.test"},
    )
    try:
        domain_health = httpx.get(f"{with_domain.url}/health", timeout=10).json()
    finally:
        stop_mirror(with_domain)
    assert "renewal" not in plain_health, plain_health["renewal"]
    assert "no renewer status" in domain_health["renewal"]["error"]


def test_a_deleted_renewal_config_falls_back_to_a_new_certificate(tmp_path: Path) -> None:
    """certbot's ``renewal/<domain>.conf`` removed (by hand, a cleanup, a half-restored backup)
    while ``live/<domain>`` stays: every run failed "no certificate found" for ever, and the
    served certificate ran out. The renewer now obtains a new certificate for the domain."""
    site = Site(tmp_path)
    with mirror_with_tls(site) as (mirror, _tls_port):
        with running_pebble(tmp_path / "pebble", mirror.port) as pebble:
            first = run_renewer_once(site, pebble)  # the first issuance
            assert first.returncode == 0, first.stderr
            served = serial_of(site.cert)
            (site.config_dir / "renewal" / "mirror.test.conf").unlink()

            second = run_renewer_once(site, pebble)
            status = site.status()
            again = run_renewer_once(site, pebble)  # and renewals go on as before
    assert second.returncode == 0, second.stderr
    assert status["last_error"] is None and status["failures"] == 0
    assert serial_of(site.cert) != served
    assert "renewal configuration" in second.stderr, second.stderr  # the fallback is logged
    assert "is missing" in status["set_aside"]["reason"]
    assert again.returncode == 0, again.stderr
    assert (site.config_dir / "renewal" / "mirror.test.conf").exists()
    kept = list((site.config_dir / "orphaned").glob("*/live/mirror.test/fullchain.pem"))
    assert [serial_of(path) for path in kept] == [served]  # set aside, its links still resolve


def cut_short(config_dir: Path) -> None:
    conf = config_dir / "renewal" / "mirror.test.conf"
    conf.write_text(conf.read_text()[:200])


def not_parseable(config_dir: Path) -> None:
    (config_dir / "renewal" / "mirror.test.conf").write_text("[[[ not\n = = x\n")


def naming_another_directory(config_dir: Path) -> None:
    """The config directory restored to another path: the file names the old one."""
    conf = config_dir / "renewal" / "mirror.test.conf"
    conf.write_text(conf.read_text().replace(str(config_dir), "/srv/old-letsencrypt"))


def live_files_deleted(config_dir: Path) -> None:
    shutil.rmtree(config_dir / "live" / "mirror.test")


@pytest.mark.parametrize(
    "breakage", [cut_short, not_parseable, naming_another_directory, live_files_deleted]
)
def test_a_broken_renewal_config_falls_back_to_a_new_certificate(
    tmp_path: Path, breakage: Callable[[Path], None]
) -> None:
    """certbot 2.1 skips a renewal configuration it cannot read ("Renewal configuration file
    ... is broken", "1 parse failure(s)", exit 1): every run failed and the certificate ran out.
    With live/ deleted, certbot issued into a new lineage mirror.test-0001 at every run, which
    nothing installed. Now the lineage is set aside, once, and a new one obtained and served."""
    site = Site(tmp_path)
    with mirror_with_tls(site) as (mirror, _tls_port):
        with running_pebble(tmp_path / "pebble", mirror.port) as pebble:
            first = run_renewer_once(site, pebble)
            assert first.returncode == 0, first.stderr
            served = serial_of(site.cert)
            breakage(site.config_dir)

            second = run_renewer_once(site, pebble)
            status = site.status()
            again = run_renewer_once(site, pebble)  # and renewals go on as before
    assert second.returncode == 0, second.stderr
    assert status["last_error"] is None and status["failures"] == 0
    new = serial_of(site.cert)
    assert new != served
    assert new == serial_of(site.config_dir / "live" / "mirror.test" / "fullchain.pem")
    warnings = [line for line in second.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, second.stderr
    (aside,) = (site.config_dir / "orphaned").iterdir()
    assert str(aside) in warnings[0] and status["set_aside"]["moved_to"] == str(aside)
    assert status["set_aside"]["reason"] in warnings[0]
    assert (aside / "renewal" / "mirror.test.conf").exists()  # kept for whoever looks into it
    lineages = sorted(path.name for path in (site.config_dir / "renewal").iterdir())
    assert lineages == ["mirror.test.conf"]  # no mirror.test-0001
    assert again.returncode == 0, again.stderr
    assert " WARNING " not in again.stderr


def test_docxy_certs_renew_obtains_anew_without_a_renewal_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It reported certbot's "No certificate found" (the renewer, meanwhile, fell back)."""
    for name in [name for name in os.environ if name.startswith("DOCXY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DOCXY_CERTS_DOMAIN", DOMAIN)
    site = Site(tmp_path)
    with mirror_with_tls(site) as (mirror, _tls_port):
        with running_pebble(tmp_path / "pebble", mirror.port) as pebble:
            first = run_renewer_once(site, pebble)
            assert first.returncode == 0, first.stderr
            served = serial_of(site.cert)
            (site.config_dir / "renewal" / "mirror.test.conf").unlink()
            code = docxy_certs(
                "renew",
                *("--config-dir", str(site.config_dir), "--webroot", str(site.webroot)),
                *("--acme-server", pebble.directory, "--ca-bundle", str(pebble.tls_ca)),
                *("--cert", str(site.cert), "--key", str(site.key)),
            )
    assert code == 0
    assert serial_of(site.cert) != served
    assert (site.config_dir / "renewal" / "mirror.test.conf").exists()
    kept = list((site.config_dir / "orphaned").glob("*/live/mirror.test/fullchain.pem"))
    assert [serial_of(path) for path in kept] == [served]


def renewal_config_deleted(config_dir: Path) -> None:
    (config_dir / "renewal" / "mirror.test.conf").unlink()


@pytest.mark.parametrize(
    "breakage", [cut_short, naming_another_directory, live_files_deleted, renewal_config_deleted]
)
def test_docxy_certs_obtain_sets_a_broken_lineage_aside_as_the_renewer_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, breakage: Callable[[Path], None]
) -> None:
    """`docxy certs obtain` ran certbot certonly whatever the lineage: over a broken renewal
    configuration certbot issued into mirror.test-0001, which nothing installed (the served
    certificate ran out all the same), and without one it refused. Now it goes the renewer's
    way: the lineage is set aside once, a new one obtained under the domain's own name and
    installed."""
    for name in [name for name in os.environ if name.startswith("DOCXY_")]:
        monkeypatch.delenv(name)
    site = Site(tmp_path)
    with mirror_with_tls(site) as (mirror, _tls_port):
        with running_pebble(tmp_path / "pebble", mirror.port) as pebble:

            def obtain() -> int:
                return docxy_certs(
                    "obtain",
                    *("--domain", DOMAIN, "--email", EMAIL, "--acme-server", pebble.directory),
                    *("--ca-bundle", str(pebble.tls_ca), "--webroot", str(site.webroot)),
                    *("--config-dir", str(site.config_dir)),
                    *("--cert", str(site.cert), "--key", str(site.key)),
                )

            assert obtain() == 0, pebble.logs()
            served = serial_of(site.cert)
            breakage(site.config_dir)
            code = obtain()
            again = obtain()  # and it goes on as before: nothing more set aside
    assert code == 0 and again == 0
    live = site.config_dir / "live" / DOMAIN / "fullchain.pem"
    assert serial_of(site.cert) == serial_of(live) != served
    lineages = sorted(path.name for path in (site.config_dir / "renewal").iterdir())
    assert lineages == ["mirror.test.conf"]  # no mirror.test-0001
    (aside,) = (site.config_dir / "orphaned").iterdir()
    assert (aside / "archive" / DOMAIN).is_dir()  # kept for whoever looks into it

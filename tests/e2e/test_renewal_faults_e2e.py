"""Renewal faults a user would hit, shown with real certbot against pebble on loopback.

Each test failed on the code before its fix (see the commit that added it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docxy.tls import certs
from lab.acme import EMAIL, running_pebble
from tests.e2e.test_certs_e2e import Site, mirror_with_tls, run_renewer_once, serial_of

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

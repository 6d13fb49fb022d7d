"""The appliance's first-start bootstrap pair at the served paths (``certs.domain`` with
``tls.cert_path``/``tls.key_path``, no certificate yet): written once and then never renewed,
nor written anew for a corrected ``certs.domain``. While issuance kept failing (DNS not pointed
here yet) it ran out after 90 days, unlike the mirror's own pair, renewed at 30 days left; a
corrected domain kept the old name's certificate until the first issuance. An issued
certificate at those paths, or one installed by hand, is never touched."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from docxy.config import Config, load_config
from docxy.http.server import load_tls
from docxy.tls.context import ReloadableTLS, _self_signed_pems, inspect_pair
from lab.certs import issue

HOST = "127.0.126.7"  # this helper's loopback range; nothing listens in these tests


def _config(tmp: Path, domain: str) -> Config:
    return load_config(
        environ={
            "DOCXY_SERVER_LISTEN": f"{HOST}:13330",
            "DOCXY_SERVER_TLS_LISTEN": f"{HOST}:13331",
            "DOCXY_CACHE_DIR": str(tmp / "cache"),
            "DOCXY_CERTS_DOMAIN": domain,
            "DOCXY_CERTS_WEBROOT": str(tmp / "webroot"),
            "DOCXY_CERTS_CONFIG_DIR": str(tmp / "le"),
            "DOCXY_TLS_CERT_PATH": str(tmp / "served" / "fullchain.pem"),
            "DOCXY_TLS_KEY_PATH": str(tmp / "served" / "privkey.pem"),
        }
    )


def _tls(tmp: Path, domain: str) -> ReloadableTLS:
    tls = load_tls(_config(tmp, domain))
    assert tls is not None
    return tls


def _served(tmp: Path) -> tuple[Path, Path]:
    return tmp / "served" / "fullchain.pem", tmp / "served" / "privkey.pem"


def _files(tmp: Path) -> tuple[bytes, bytes]:
    cert, key = _served(tmp)
    return cert.read_bytes(), key.read_bytes()


def _install_issued(tmp: Path, name: str) -> None:
    """What the renewer installs: a CA's certificate for `name`, with its chain."""
    ca = issue("Docxy Review CA", ca=True, days=365)
    leaf = issue(name, ca, names=[x509.DNSName(name)], days=90)
    cert, key = _served(tmp)
    cert.parent.mkdir(parents=True, exist_ok=True)
    cert.write_bytes(leaf.cert_pem + ca.cert_pem)
    key.write_bytes(leaf.key_pem)


def _info_of(tmp: Path) -> tuple[str, tuple[str, ...], dt.datetime, bool]:
    cert, key = _served(tmp)
    info = inspect_pair(cert.read_bytes(), key.read_bytes(), cert, key)
    return info.serial, info.sans, info.not_after, info.self_signed


# --- 1. the served bootstrap pair is renewed in place --------------------------------------


def test_the_served_bootstrap_pair_is_renewed_near_its_end(tmp_path: Path) -> None:
    tls = _tls(tmp_path, "a.mirror.test")
    first = tls.status()["serial"]
    assert tls.status()["served"] == "self-signed"
    now = dt.datetime.now(dt.UTC)
    assert tls.renew_own_if_due(now) is False  # 90 days left
    late = now + dt.timedelta(days=61)  # 29 days left: within certbot's margin
    assert tls.renew_own_if_due(late) is True
    serial, sans, _, self_signed = _info_of(tmp_path)
    assert serial != first and sans == ("a.mirror.test",) and self_signed
    assert tls.reload() is True  # the watch serves it like a renewed certificate
    assert tls.status()["serial"] == serial
    assert tls.status()["domain"] == "a.mirror.test"  # still said to be no CA's certificate
    assert tls.status()["clients_refuse"] is True


def test_a_served_bootstrap_pair_near_its_end_is_renewed_at_start(tmp_path: Path) -> None:
    cert, key = _served(tmp_path)
    cert.parent.mkdir(parents=True)
    cert_pem, key_pem = _self_signed_pems("a.mirror.test", 20)  # 20 days left: under 30
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    tls = _tls(tmp_path, "a.mirror.test")
    assert cert.read_bytes() != cert_pem
    assert float(str(tls.status()["days_left"])) > 80


def test_an_issued_certificate_at_the_served_paths_is_never_renewed(tmp_path: Path) -> None:
    _install_issued(tmp_path, "a.mirror.test")
    before = _files(tmp_path)
    tls = _tls(tmp_path, "a.mirror.test")
    late = dt.datetime.now(dt.UTC) + dt.timedelta(days=89)
    assert tls.renew_own_if_due(late) is False
    assert _files(tmp_path) == before


def test_an_issued_certificate_installed_since_the_last_look_is_not_overwritten(
    tmp_path: Path,
) -> None:
    """The renewer's first install lands between two looks of the watch: the renewal due for
    the bootstrap pair still served must not write over the issued pair now in the files."""
    tls = _tls(tmp_path, "a.mirror.test")
    _install_issued(tmp_path, "a.mirror.test")
    before = _files(tmp_path)
    late = dt.datetime.now(dt.UTC) + dt.timedelta(days=61)
    assert tls.renew_own_if_due(late) is False
    assert _files(tmp_path) == before


def test_a_self_signed_pair_installed_by_hand_is_never_renewed(tmp_path: Path) -> None:
    """Not the mirror's: a year-long self-signed certificate an operator put there."""
    mine = issue("a.mirror.test", names=[x509.DNSName("a.mirror.test")], days=365)
    cert, key = _served(tmp_path)
    mine.write(cert, key)
    before = _files(tmp_path)
    tls = _tls(tmp_path, "b.mirror.test")  # another name too: still not rewritten
    late = dt.datetime.now(dt.UTC) + dt.timedelta(days=364)
    assert tls.renew_own_if_due(late) is False
    assert _files(tmp_path) == before


# --- 2. a corrected certs.domain before the first issuance ----------------------------------


def test_the_bootstrap_pair_for_an_earlier_domain_is_written_anew(tmp_path: Path) -> None:
    _tls(tmp_path, "a.mirror.test")
    tls = _tls(tmp_path, "b.mirror.test")  # DOCXY_DOMAIN corrected, restart
    assert tls.status()["sans"] == ["b.mirror.test"]
    assert _info_of(tmp_path)[1] == ("b.mirror.test",)


def test_a_restart_keeps_the_bootstrap_pair_for_the_same_domain(tmp_path: Path) -> None:
    first = _tls(tmp_path, "a.mirror.test").status()["serial"]
    assert _tls(tmp_path, "a.mirror.test").status()["serial"] == first


def test_an_issued_certificate_for_an_earlier_domain_is_kept(tmp_path: Path) -> None:
    _install_issued(tmp_path, "a.mirror.test")
    before = _files(tmp_path)
    tls = _tls(tmp_path, "b.mirror.test")
    assert tls.status()["sans"] == ["a.mirror.test"]
    assert _files(tmp_path) == before

"""Review fault: ``certs.ca_bundle``'s readability is judged where certbot is run with it
(``docxy certs obtain``/``renew``, the renewer), not by every command's config load. A bundle
only root (or the renewer's user) may read stopped ``docxy cache ls``, ``users list``, ``warm``
and ``serve``, run by another user or a cron job sharing the mirror's config, with
``certs.ca_bundle: cannot read`` (exit 2), though none of them reads it. A missing file fails
the same ``os.access`` check and stands in for it here (these tests may run as root, who may
read a mode-000 file), as in test_review_cli1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from docxy.cache import open_configured
from docxy.cli.exits import EXIT_CONFIG, EXIT_FAILED
from docxy.cli.main import main
from docxy.config import load_config, unreadable_ca_bundle
from docxy.tls import certs as certs_mod
from scheduler import settings
from scheduler.renewal import Renewer

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

MIRROR = "https://127.0.138.1:13590"  # nothing listens there: warm fails to connect


def _config(tmp_path: Path, certs: str = "") -> tuple[Path, Path]:
    """A TOML config whose certs.ca_bundle cannot be read, with a TLS pair that can (not a
    certificate: ``docxy certs status`` says so, exit 1); (config, bundle)."""
    bundle = tmp_path / "pebble.minica.pem"
    cert_path, key_path = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert_path.write_text("not a certificate")
    key_path.write_text("not a key")
    (tmp_path / "cache").mkdir()
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        f'[server]\ntls_listen = "127.0.138.1:13591"\npublic_url = "{MIRROR}"\n'
        f'[tls]\ncert_path = "{cert_path}"\nkey_path = "{key_path}"\n'
        f'[cache]\ndir = "{tmp_path / "cache"}"\n'
        f'[certs]\nca_bundle = "{bundle}"\n{certs}'
    )
    return cfg, bundle


def _lineage(tmp_path: Path) -> str:
    """[certs] settings enough for certbot to be run (domain, its directory, the webroot)."""
    (tmp_path / "webroot").mkdir()
    return (
        f'domain = "mirror.example.com"\nconfig_dir = "{tmp_path / "letsencrypt"}"\n'
        f'webroot = "{tmp_path / "webroot"}"\n'
    )


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["cache", "ls"], 0),
        (["cache", "du"], 0),
        (["users", "list"], None),
        (["warm", "--mirror", MIRROR, "--timeout", "5", "nginx"], EXIT_FAILED),
        (["certs", "status"], EXIT_FAILED),  # not a certificate: its JSON says so
        (["serve", "--show-config"], 0),
    ],
)
def test_commands_that_never_run_certbot_load_with_an_unreadable_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int | None
) -> None:
    cfg, bundle = _config(tmp_path)
    if argv[0] == "cache":  # one the mirror made, for ls and du to read
        open_configured(load_config(config_file=cfg, environ={}))
    got = main([*argv, "--config", str(cfg)])
    err = capsys.readouterr().err
    assert f"cannot read {bundle}" not in err
    assert got != EXIT_CONFIG, err
    if code is not None:
        assert got == code, err


def test_the_mirrors_load_keeps_the_bundle_it_cannot_read(tmp_path: Path) -> None:
    cfg, bundle = _config(tmp_path)
    assert load_config(config_file=cfg, environ={}).certs.ca_bundle == bundle


@pytest.mark.parametrize("action", ["obtain", "renew"])
def test_certbots_commands_still_refuse_an_unreadable_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    """Said at once, naming the setting, the file and where it was set: certbot is not run
    (it would fail on the ACME server's TLS, saying nothing of the setting)."""
    cfg, bundle = _config(tmp_path, _lineage(tmp_path))
    assert main(["certs", action, "--config", str(cfg)]) == EXIT_CONFIG
    captured = capsys.readouterr()
    assert captured.err == (
        f"docxy certs {action}: config error: certs.ca_bundle: cannot read {bundle} (file {cfg})\n"
    )
    assert not (tmp_path / "letsencrypt").exists()


def test_certs_ca_bundle_flag_is_named_as_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _ = _config(tmp_path, _lineage(tmp_path))
    other = tmp_path / "other.pem"
    got = main(["certs", "renew", "--config", str(cfg), "--ca-bundle", str(other)])
    assert got == EXIT_CONFIG
    assert capsys.readouterr().err == (
        f"docxy certs renew: config error: certs.ca_bundle: cannot read {other} (flag)\n"
    )


def test_the_renewer_starts_and_each_run_fails_on_an_unreadable_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewer loads (an exit at start went FATAL under supervisord and took the appliance
    down: see RUN_REFUSES), and each run fails with the bundle's refusal before certbot is
    run, counted on /health; a bundle mounted or mended since is taken at the next run."""
    cfg, bundle = _config(tmp_path, _lineage(tmp_path))
    loaded = settings.load(["--config", str(cfg)], environ={})
    assert load_config(config_file=cfg, environ={}, renewer=True).certs.ca_bundle == bundle
    ran: list[str] = []

    def certbot(*_: object, **__: object) -> None:
        ran.append("certbot")
        raise certs_mod.CertbotError("certbot certonly failed: stand-in")

    monkeypatch.setattr(certs_mod, "obtain", certbot)
    renewer = Renewer(loaded)
    assert renewer.run() is False
    assert renewer.failures == 1 and ran == []
    assert renewer.last_error == f"certs.ca_bundle: cannot read {bundle}"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")  # mounted since
    assert renewer.run() is False
    assert ran == ["certbot"] and "stand-in" in str(renewer.last_error)


def test_a_readable_bundle_passes_everywhere(tmp_path: Path) -> None:
    cfg, bundle = _config(tmp_path, _lineage(tmp_path))
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert settings.load(["--config", str(cfg)], environ={}).certs.ca_bundle == bundle
    assert load_config(config_file=cfg, environ={}, renewer=True).certs.ca_bundle == bundle


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_a_root_run_acting_as_the_owner_is_judged_by_the_owners_access(tmp_path: Path) -> None:
    """Review of 97184c8: `docxy certs renew` or `--once` run as root act as the certificates'
    owner (seteuid) and run certbot as that user; os.access by the real uid (root's) passed a
    bundle only root may read, and certbot then failed with its own TLS error."""
    bundle = tmp_path / "root-only.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    bundle.chmod(0o600)
    certs_config = load_config(environ={"DOCXY_CERTS_CA_BUNDLE": str(bundle)}).certs
    assert unreadable_ca_bundle(certs_config) is None  # root's own
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child acts as nobody, as docxy.cli.owner does, and says what it found
        try:
            os.close(read)
            os.setegid(65534)
            os.seteuid(65534)
            os.write(write, str(unreadable_ca_bundle(certs_config)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as said:
        found = said.read()
    os.waitpid(pid, 0)
    assert found == f"certs.ca_bundle: cannot read {bundle}"

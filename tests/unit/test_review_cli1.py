"""Review faults: the TLS pair's readability is judged where it is read (``docxy serve``, the
renewer), not by every command's config load. certbot's ``privkey.pem`` is root's, mode 600: a
non-root operator or cron job sharing the mirror's config ran ``docxy cache ls`` and was told
``tls.key_path: cannot read`` (exit 2). A missing file fails the same ``os.access`` check and
stands in for it here (these tests may run as root, who may read a mode-000 file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docxy.cache import open_configured
from docxy.cli.exits import EXIT_CONFIG, EXIT_FAILED
from docxy.cli.main import main
from docxy.config import load_config
from docxy.core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

MIRROR = "https://127.0.125.1:13310"  # nothing listens there: warm fails to connect


def _config(tmp_path: Path, *, cert: bool = True, key: bool = False) -> tuple[Path, Path, Path]:
    """A TOML config whose TLS pair is (partly) unreadable; (config, cert, key)."""
    cert_path, key_path = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    if cert:
        cert_path.write_text("not a certificate")
    if key:
        key_path.write_text("not a key")
    (tmp_path / "cache").mkdir()
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        f'[server]\ntls_listen = "127.0.125.1:13311"\npublic_url = "{MIRROR}"\n'
        f'[tls]\ncert_path = "{cert_path}"\nkey_path = "{key_path}"\n'
        f'[cache]\ndir = "{tmp_path / "cache"}"\n'
    )
    return cfg, cert_path, key_path


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["cache", "ls"], 0),
        (["cache", "du"], 0),
        (["users", "list"], None),
        (["warm", "--mirror", MIRROR, "--timeout", "5", "nginx"], EXIT_FAILED),
    ],
)
def test_commands_that_never_read_the_pair_load_with_an_unreadable_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int | None
) -> None:
    cfg, _, key = _config(tmp_path)
    if argv[0] == "cache":  # one the mirror made, for ls and du to read
        open_configured(load_config(config_file=cfg, environ={}))
    got = main([*argv, "--config", str(cfg)])
    err = capsys.readouterr().err
    assert f"cannot read {key}" not in err
    assert got != EXIT_CONFIG, err
    if code is not None:
        assert got == code, err


def test_serve_still_refuses_an_unreadable_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal stays where the pair is used: before the mirror listens (and in
    ``--show-config``, which the appliance's entry point runs to stop on it at once)."""
    cfg, _, key = _config(tmp_path)
    assert main(["serve", "--show-config", "--config", str(cfg)]) == EXIT_CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"docxy: config error: tls.key_path: cannot read {key} (file {cfg})\n"


def test_the_renewer_still_refuses_an_unreadable_key(tmp_path: Path) -> None:
    """The renewer reads the served pair (to compare and install): its load still refuses."""
    cfg, _, key = _config(tmp_path)
    assert load_config(config_file=cfg, environ={}).tls.key_path == key
    with pytest.raises(ConfigError, match=rf"^tls\.key_path: cannot read {key} \(file "):
        load_config(config_file=cfg, environ={}, renewer=True)


def test_certs_status_of_an_unreadable_cert_is_exit_1_with_its_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: ``docxy certs status`` exits 1 when the pair cannot be read (its JSON says
    why), 2 only when no paths are set. Without certs.domain it was exit 2 ("config error")."""
    cfg, cert, _ = _config(tmp_path, cert=False, key=True)
    assert main(["certs", "status", "--config", str(cfg)]) == EXIT_FAILED
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["cert_path"] == str(cert)
    assert str(cert) in report["error"]
    assert "config error" not in captured.err

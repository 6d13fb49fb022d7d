"""Third review of the settings: what a renewer-only setting does to the mirror, certs.email,
a fully qualified ``hosts`` entry, a TOML file that is not UTF-8 (or starts with a BOM)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from docxy.cli.exits import EXIT_CONFIG
from docxy.cli.main import main
from docxy.config import describe, load_config
from docxy.core.errors import ConfigError
from docxy.core.hosts import host_key
from docxy.tls import certs
from scheduler import settings as scheduler_settings
from scheduler.renewal import Renewer

# Loopback in this review's range only; nothing listens or is asked.
BASE = {"server.listen": "127.0.0.173:8200", "server.admin_listen": ""}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DOCXY_* variable of the shell the tests run in; the cache under tmp_path."""
    import os

    for name in list(os.environ):
        if name.startswith("DOCXY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


# --- 1. a renewer-only setting that is wrong: the renewer refuses, the mirror starts ---------


@pytest.mark.parametrize(
    "environ",
    [
        {"DOCXY_SCHEDULER_HOUR": "13"},  # out of range
        {"DOCXY_SCHEDULER_HOURS": "3"},  # a typo: an unknown scheduler key
        {"DOCXY_SCHEDULER_RETRY_BASE": "7200", "DOCXY_SCHEDULER_RETRY_MAX": "600"},
    ],
)
def test_a_bad_scheduler_setting_leaves_the_mirror_loading_and_says_so(
    environ: dict[str, str],
) -> None:
    config = load_config(BASE, None, environ)
    assert config.scheduler.hour is None and config.scheduler.retry_base == 300.0  # defaults
    assert len(config.renewer_errors) == 1
    key, message = config.renewer_errors[0]
    assert key.startswith("scheduler.") and message.startswith(key)
    name = sorted(environ)[-1] if len(environ) == 1 else "DOCXY_SCHEDULER_RETRY_BASE"
    assert f"(env {name})" in message


def test_the_renewer_still_refuses_a_bad_scheduler_setting(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCXY_CERTS_CONFIG_DIR", str(tmp_path / "le"))
    monkeypatch.setenv("DOCXY_SCHEDULER_HOURS", "3")
    with pytest.raises(ConfigError, match=r"^scheduler.hours: unknown key \(env "):
        scheduler_settings.load([])
    monkeypatch.delenv("DOCXY_SCHEDULER_HOURS")
    with pytest.raises(ConfigError, match=r"^scheduler.hour: expected a whole number 0-11"):
        scheduler_settings.load(["--hour", "13"])


def test_serve_show_config_with_a_bad_scheduler_setting_warns_and_succeeds(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCXY_SCHEDULER_HOUR", "13")
    code = main(["serve", "--show-config", "--listen", "127.0.0.173:8200"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "scheduler.hour = (random)  (default)" in out
    assert "warning: scheduler.hour: expected a whole number 0-11" in err
    assert "the renewer" in err


def test_serve_logs_a_bad_scheduler_setting_at_start(
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``docxy serve`` starts with it, and says so once its log is set up."""
    seen: list[object] = []

    async def fake_run(config: object) -> None:
        seen.append(config)

    monkeypatch.setattr("docxy.http.server.run", fake_run)
    monkeypatch.setattr("docxy.cli.main.setup_logging", lambda level: None)
    monkeypatch.setenv("DOCXY_SCHEDULER_MINUTE", "75")
    with caplog.at_level(logging.WARNING):
        assert main(["serve", "--listen", "127.0.0.173:8200", "--set", "server.admin_listen="]) == 0
    assert len(seen) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("scheduler.minute: expected a whole number 0-59" in m for m in warned), warned


def test_docxy_cache_ls_runs_with_a_bad_scheduler_setting(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCXY_SCHEDULER_CERTBOT_TIMEOUT", "0")
    code = main(["cache", "ls"])
    err = capsys.readouterr().err
    assert code != EXIT_CONFIG, err


# --- 2. certs.email: checked at load, not by certbot at the first issuance --------------------


@pytest.mark.parametrize(
    "email",
    ["ops at example.com", "mailto:ops@example.com", "ops@localhost", "ops@@example.com", "ops@"],
)
def test_a_malformed_certs_email_fails_each_renewal_run_without_stopping_the_renewer(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, email: str
) -> None:
    """Refused at the renewer's start, it took the container down (supervisord's FATAL, then a
    restart loop) where the address used to fail certbot's runs alone: now the renewer starts,
    and each run fails, saying why (its status, /health), certbot never told the address."""
    monkeypatch.setenv("DOCXY_CERTS_CONFIG_DIR", str(tmp_path / "le"))
    monkeypatch.setenv("DOCXY_CERTS_EMAIL", email)
    settings = scheduler_settings.load([])
    assert settings.refused is not None
    assert settings.refused.startswith("certs.email: expected an e-mail address")

    def no_certbot(*_: object, **__: object) -> None:
        raise AssertionError("certbot run with a refused certs.email")

    monkeypatch.setattr(certs, "run_certbot", no_certbot)
    renewer = Renewer(settings)
    assert renewer.run() is False
    assert renewer.last_error == settings.refused


def test_a_malformed_certs_email_is_a_warning_for_the_mirror() -> None:
    config = load_config(BASE, None, {"DOCXY_CERTS_EMAIL": "ops at example.com"})
    assert config.certs.email is None
    (key, message), *_ = config.renewer_errors
    assert key == "certs.email" and message.endswith("(env DOCXY_CERTS_EMAIL)")


@pytest.mark.parametrize(
    "email", ["ops@example.com", " Ops.Team+le@mail.example.co.uk ", "a@x.example,b@y.example"]
)
def test_a_certs_email_certbot_takes_is_taken(email: str) -> None:
    config = load_config(BASE, None, {"DOCXY_CERTS_EMAIL": email})
    assert config.certs.email == email.strip()
    assert getattr(config, "renewer_errors", ()) == ()


def test_docxy_certs_obtain_refuses_a_malformed_email(
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_certbot(*args: object, **kwargs: object) -> str:
        raise AssertionError("certbot run with a malformed e-mail")

    monkeypatch.setattr("docxy.tls.certs.run_certbot", no_certbot)
    args = ["certs", "obtain", "--domain", "mirror.test", "--email", "ops at example.com"]
    args += ["--webroot", str(tmp_path / "w"), "--config-dir", str(tmp_path / "le")]
    args += ["--acme-server", "http://127.0.0.173:8299/directory"]  # never asked either way
    assert main(args) == EXIT_CONFIG
    assert "certs.email: expected an e-mail address" in capsys.readouterr().err


# --- 3. a hosts entry with a trailing dot, as a Host header with one is taken ----------------


def test_a_fully_qualified_hosts_entry_is_the_name_without_its_dot() -> None:
    for written in ("ghcr.mirror.lan.", "GHCR.mirror.lan.:8443"):
        config = load_config(
            BASE | {"upstreams": "ghcr.io", "upstreams.ghcr.io.hosts": written}, None, {}
        )
        (entry,) = config.upstreams[0].hosts
        assert entry == written.lower().replace(".:", ":").rstrip(".")
        assert host_key(entry) == host_key(written)  # as a request's Host is compared


def test_a_hosts_entry_and_its_dotted_spelling_are_one_host() -> None:
    with pytest.raises(ConfigError, match="already picks ghcr.io"):
        load_config(
            BASE
            | {
                "upstreams": "ghcr.io,quay.io",
                "upstreams.ghcr.io.hosts": "m.lan",
                "upstreams.quay.io.hosts": "m.lan.",
            },
            None,
            {},
        )


@pytest.mark.parametrize("bad", ["m..lan", ".m.lan", "m.lan..", "."])
def test_an_empty_label_in_a_hosts_entry_is_still_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="expected HOST or HOST:PORT"):
        load_config(BASE | {"upstreams": "ghcr.io", "upstreams.ghcr.io.hosts": bad}, None, {})


# --- 4. a TOML file that is not UTF-8, or starts with a BOM ----------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"[certs]\nemail = 'j\xe9r\xf4me@example.com'\n",  # Latin-1
        "[server]\nlisten = '127.0.0.173:8200'\n".encode("utf-16"),
    ],
)
def test_a_toml_file_not_in_utf8_is_a_config_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "docxy.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as caught:
        load_config(BASE, path, {})
    message = str(caught.value)
    assert message.startswith(f"config file {path}: not UTF-8"), message


def test_a_toml_file_not_in_utf8_exits_2_with_one_line(
    clean_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "docxy.toml"
    path.write_bytes(b"[server]\n# caf\xe9\nlisten = '127.0.0.173:8200'\n")
    assert main(["serve", "--show-config", "--config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("docxy: config error: config file") and err.count("\n") == 1, err


def test_a_toml_file_with_a_utf8_bom_is_read(tmp_path: Path) -> None:
    """Windows Notepad (before 2019) saved UTF-8 with a BOM: tomllib's "Invalid statement (at
    line 1, column 1)" named nothing the user could see in the file."""
    path = tmp_path / "docxy.toml"
    path.write_bytes(b"\xef\xbb\xbf[server]\nlisten = '127.0.0.173:8201'\n")
    config = load_config({"server.admin_listen": ""}, path, {})
    assert str(config.server.listen) == "127.0.0.173:8201"
    rows = {key: source for key, _, source in describe(config)}
    assert rows["server.listen"] == f"file {path}"


# --- 5. a secret's file saved with a UTF-8 BOM -----------------------------------------------


@pytest.mark.parametrize(
    ("flags", "password_of"),
    [
        ({"upstream.username": "u", "upstream.password_file": "{file}"}, "upstream"),
        (
            {
                "upstreams": "ghcr.io",
                "upstreams.ghcr.io.username": "u",
                "upstreams.ghcr.io.password_file": "{file}",
            },
            "ghcr.io",
        ),
    ],
)
def test_a_secret_file_saved_with_a_bom_holds_the_secret_alone(
    tmp_path: Path, flags: dict[str, str], password_of: str
) -> None:
    """Notepad's "UTF-8 with BOM": the mark was read as the password's first character, a
    login the upstream refused at the first pull, with nothing at start-up to say why."""
    secret = tmp_path / "password"
    secret.write_bytes(b"\xef\xbb\xbfhunter2 is long\r\n")
    given = {key: value.format(file=secret) for key, value in flags.items()}
    config = load_config(BASE | given, None, {})
    upstream = config.upstream if password_of == "upstream" else config.upstreams[0]
    assert upstream.password == "hunter2 is long"

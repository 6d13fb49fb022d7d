"""The command line: ``main(argv) -> int``, ``--show-config``, and config errors as exit 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from docxy import __version__
from docxy.cli.exits import EXIT_CONFIG
from docxy.cli.main import main
from docxy.config import SETTINGS

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

SECRET = "hunter2-but-longer"


def show(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, tuple[str, str]]:
    """Run ``serve --show-config``; return key → (value, source)."""
    assert main(["serve", "--show-config", *args]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = {}
    for line in out.splitlines():
        setting, _, source = line.rpartition("  (")
        key, _, value = setting.partition(" = ")
        assert source.endswith(")"), line
        rows[key] = (value, source[:-1])
    return rows


def config_failure(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["serve", *args]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("docxy: config error: ")
    return err.strip()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"docxy {__version__}\n"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    assert "--show-config" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_CONFIG
    assert "serve" in capsys.readouterr().out


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--lisen", "127.0.0.1:1"]) == 2
    assert "--lisen" in capsys.readouterr().err


def test_show_config_defaults(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rows = show(capsys)
    assert rows["server.listen"] == ("127.0.0.1:8080", "default")
    assert rows["server.public_url"] == ("http://127.0.0.1:8080", "derived from server.listen")
    assert rows["upstream.registry"] == ("https://registry-1.docker.io", "default")
    assert rows["upstream.library_prefix"] == ("true", "default")
    assert rows["cache.dir"] == (str(tmp_path / "xdg" / "docxy"), "default")
    assert rows["scheduler.hour"] == ("(random)", "default")
    assert len(rows) == sum(len(keys) for keys in SETTINGS.values())  # every one, once


def test_show_config_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rows = show(
        capsys,
        "--listen",
        "127.0.0.1:9999",
        "--public-url",
        "https://mirror.example.com/",
        "--upstream",
        "http://127.0.0.1:5000",
        "--auth-realm",
        "http://127.0.0.1:5001/token",
        "--no-library-prefix",
        "--no-cache",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--log-level",
        "debug",
        "--set",
        "upstream.read_timeout=120",
        "--set",
        "cache.max_size=1G",
    )
    assert rows["server.listen"] == ("127.0.0.1:9999", "flag")
    assert rows["server.public_url"] == ("https://mirror.example.com", "flag")
    assert rows["upstream.registry"] == ("http://127.0.0.1:5000", "flag")
    assert rows["upstream.auth_realm"] == ("http://127.0.0.1:5001/token", "flag")
    assert rows["upstream.library_prefix"] == ("false", "flag")
    assert rows["cache.enabled"] == ("false", "flag")
    assert rows["cache.dir"] == (str(tmp_path / "cache"), "flag")
    assert rows["log.level"] == ("DEBUG", "flag")
    assert rows["upstream.read_timeout"] == ("120", "flag")
    assert rows["cache.max_size"] == ("1G", "flag")


def test_show_config_says_unset_as_the_readme_does(capsys: pytest.CaptureFixture[str]) -> None:
    """No Python ``None``: what the settings table's default column says, in parentheses."""
    rows = show(capsys, "--upstreams", "ghcr.io")
    assert not [key for key, (value, _) in rows.items() if "None" in value]
    assert rows["server.tls_listen"][0] == "(off)"
    assert rows["tls.cert_path"][0] == "(none)"
    assert rows["upstream.auth_realm"][0] == "(discovered)"
    assert rows["upstreams.ghcr.io.auth_realm"][0] == "(discovered)"
    assert rows["upstreams.ghcr.io.password"][0] == "(none)"
    assert rows["access.allow"][0] == "(everyone)"
    assert rows["server.trusted_proxies"][0] == "(none)"
    assert rows["cache.max_size"][0] == "20G"


def test_show_config_values_load_back(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Every value shown that is set reads back, through ``--set``, as the same value: a
    list, networks, a size, a path, a number, a boolean are printed as they are written."""
    given = [
        "--set=limits.exempt=10.20.0.0/16, 2001:db8:42::/48",
        "--set=access.repositories=library/*, team/**",
        "--set=limits.bandwidth=1536K",
        "--set=server.admin_hosts=docxy,prometheus",
        f"--set=certs.webroot={tmp_path / 'webroot'}",
        "--set=upstream.read_timeout=2.5",
    ]
    rows = show(capsys, *given)
    assert rows["limits.exempt"][0] == "10.20.0.0/16, 2001:db8:42::/48"
    assert rows["limits.bandwidth"][0] == "1536K"
    again = [
        f"--set={key}={value}"
        for key, (value, _) in rows.items()
        if not value.startswith("(") and not key.startswith("upstreams.")
    ]
    assert {key: value for key, (value, _) in show(capsys, *again).items()} == {
        key: value for key, (value, _) in rows.items()
    }


def test_show_config_precedence(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "docxy.toml"
    config.write_text(
        '[server]\nlisten = "127.0.0.1:7000"\n'
        '[upstream]\nregistry = "https://file.example"\nauth_realm = "https://file.example/t"\n'
        '[log]\nlevel = "warning"\n'
    )
    monkeypatch.setenv("DOCXY_CONFIG", str(config))
    monkeypatch.setenv("DOCXY_UPSTREAM_REGISTRY", "https://env.example")
    monkeypatch.setenv("DOCXY_LOG_LEVEL", "error")
    rows = show(capsys, "--log-level", "debug")
    assert rows["server.listen"] == ("127.0.0.1:7000", f"file {config}")
    assert rows["upstream.auth_realm"] == ("https://file.example/t", f"file {config}")
    assert rows["upstream.registry"] == ("https://env.example", "env DOCXY_UPSTREAM_REGISTRY")
    assert rows["log.level"] == ("DEBUG", "flag")


def test_config_flag_beats_docxy_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chosen, other = tmp_path / "chosen.toml", tmp_path / "other.toml"
    chosen.write_text('[upstream]\nregistry = "https://chosen.example"\n')
    other.write_text('[upstream]\nregistry = "https://other.example"\n')
    monkeypatch.setenv("DOCXY_CONFIG", str(other))
    rows = show(capsys, "--config", str(chosen))
    assert rows["upstream.registry"] == ("https://chosen.example", f"file {chosen}")


def test_show_config_hides_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCXY_UPSTREAM_USERNAME", "bob")
    monkeypatch.setenv("DOCXY_UPSTREAM_PASSWORD", SECRET)
    assert main(["serve", "--show-config"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "upstream.password = (set)  (env DOCXY_UPSTREAM_PASSWORD)" in out.splitlines()


def test_seed_cert_aliases(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    monkeypatch.setenv("DOCXY_CERT_PATH", str(cert))
    monkeypatch.setenv("DOCXY_KEY_PATH", str(key))
    rows = show(capsys)
    assert rows["tls.cert_path"] == (str(cert), "env DOCXY_CERT_PATH")
    assert rows["tls.key_path"] == (str(key), "env DOCXY_KEY_PATH")


def test_bad_flag_value(capsys: pytest.CaptureFixture[str]) -> None:
    error = config_failure(capsys, "--listen", "nowhere")
    assert error.startswith("docxy: config error: server.listen: ")
    assert error.endswith("(flag)")


def test_bad_set_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    error = config_failure(capsys, "--set", "upstream.read_timeout")
    assert "--set upstream.read_timeout" in error


def test_unknown_set_key(capsys: pytest.CaptureFixture[str]) -> None:
    error = config_failure(capsys, "--set", "upstream.nope=1")
    assert error == "docxy: config error: upstream.nope: unknown key (flag)"


def test_unknown_env_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCXY_SERVER_FOO", "1")
    error = config_failure(capsys, "--show-config")
    assert error == "docxy: config error: server.foo: unknown key (env DOCXY_SERVER_FOO)"


def test_unknown_toml_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "docxy.toml"
    config.write_text("[upstream]\nregistryy = 'https://x.example'\n")
    error = config_failure(capsys, "--config", str(config))
    assert error == f"docxy: config error: upstream.registryy: unknown key (file {config})"


def test_bad_env_url(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCXY_UPSTREAM_REGISTRY", "registry.example")
    error = config_failure(capsys)
    assert error.startswith("docxy: config error: upstream.registry: not an http(s) URL")
    assert error.endswith("(env DOCXY_UPSTREAM_REGISTRY)")


def test_unreadable_cert(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("key")
    missing = tmp_path / "missing.pem"
    error = config_failure(capsys, "--cert", str(missing), "--key", str(key))
    assert error == f"docxy: config error: tls.cert_path: cannot read {missing} (flag)"


def test_wildcard_listen_without_public_url(capsys: pytest.CaptureFixture[str]) -> None:
    error = config_failure(capsys, "--listen", "0.0.0.0:8080")
    assert error.startswith("docxy: config error: server.public_url: required")


def test_password_not_echoed_in_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCXY_UPSTREAM_PASSWORD", SECRET)
    error = config_failure(capsys, "--show-config")
    assert error.startswith("docxy: config error: upstream.username: ")
    assert SECRET not in error


def test_certificate_not_pem_stops_serve_before_listening(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    error = config_failure(
        capsys,
        "--listen",
        "127.0.0.1:1",
        "--tls-listen",
        "127.0.0.1:2",  # another port: one shared is refused before the certificate is read
        "--cert",
        str(cert),
        "--key",
        str(key),
    )
    assert error.startswith("docxy: config error: tls.cert_path")
    assert error.endswith("(flag)")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def serve_args(tmp_path: Path, *args: str) -> list[str]:
    # An upstream nobody answers on: the mirror must stop before it would ever ask.
    return ["--upstream", "http://127.0.0.1:9", "--cache-dir", str(tmp_path / "cache"), *args]


def test_a_listener_that_cannot_bind_is_one_line_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, busy_port: int
) -> None:
    error = config_failure(capsys, *serve_args(tmp_path, "--listen", f"127.0.0.1:{busy_port}"))
    assert error == (
        f"docxy: config error: server.listen: cannot listen on 127.0.0.1:{busy_port}: "
        "Address already in use (flag)"
    )


def test_a_busy_tls_listener_names_its_key_and_source(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    busy_port: int,
) -> None:
    monkeypatch.setenv("DOCXY_SERVER_TLS_LISTEN", f"127.0.0.1:{busy_port}")
    from lab.ports import free_port

    error = config_failure(capsys, *serve_args(tmp_path, "--listen", f"127.0.0.1:{free_port()}"))
    assert error.startswith("docxy: config error: server.tls_listen: cannot listen on 127.0.0.1:")
    assert error.endswith("(env DOCXY_SERVER_TLS_LISTEN)")


def test_an_address_not_on_this_machine_is_a_config_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    error = config_failure(
        capsys,
        *serve_args(tmp_path, "--listen", "192.0.2.1:8080", "--public-url", "http://x.example"),
    )
    assert error.startswith("docxy: config error: server.listen: cannot listen on 192.0.2.1:8080")


def test_config_after_a_certs_action_is_the_config_file_never_certbots_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`docxy certs status --config docxy.toml`, written as `docxy cache ls --config` takes it,
    was read as an abbreviation of the action's --config-dir: the file became certbot's
    directory, the settings were never read, and the error blamed tls.cert_path."""
    from docxy.tls.context import self_signed

    cert, key = self_signed(tmp_path, "mirror.test")
    config = tmp_path / "docxy.toml"
    config.write_text(f'[tls]\ncert_path = "{cert}"\nkey_path = "{key}"\n')

    assert main(["certs", "status", "--config", str(config)]) == 0, capsys.readouterr().err
    assert '"sans": [\n    "mirror.test"\n  ]' in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["certs", "obtain", "--conf", "x"],  # not --config-dir
        ["serve", "--show", "--list", "127.0.0.1:1"],  # not --show-config, not --listen
        ["users", "add", "--password", "alice"],  # not --password-stdin
    ],
)
def test_an_abbreviated_flag_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """No flag stands for a longer one it begins: a guess at a user's intent is how --config
    became --config-dir."""
    assert main(argv) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


SIGHUP_AT_IMPORT = """
import importlib.abc, runpy, signal, sys

class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "docxy.cli.main":  # the first of the slow imports
            print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, flush=True)
            raise SystemExit(0)
        return None

sys.meta_path.insert(0, Probe())
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a supervisor starts it (a CI job may not)
sys.argv = ["docxy", *sys.argv[1:]]
runpy.run_module("docxy", run_name="__main__")
"""


@pytest.mark.parametrize(("command", "ignored"), [("serve", "True"), ("health", "False")])
def test_python_m_docxy_serve_ignores_sighup_before_its_imports(command: str, ignored: str) -> None:
    """The renewer's SIGHUP to a mirror the supervisor (re)starts: before docxy.cli.main was
    imported (0.3 s) its default action ended the mirror, a failed start to supervisord."""
    done = subprocess.run(
        [sys.executable, "-c", SIGHUP_AT_IMPORT, command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == ignored, done.stderr

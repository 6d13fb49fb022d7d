"""README claims checked against the code (the README review).

Each test ties one statement of README.md to what the code does, where the review found the two
apart, so neither drifts again.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from docxy.cli.main import build_parser, main
from docxy.config import load_config
from docxy.http.server import load_tls
from scheduler import settings as scheduler_settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_certs_takes_set_after_its_action_as_every_other_command_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: "Any setting can be given as `--set section.key=value`", and `docxy certs status
    --config FILE` takes `--config` after the action as `docxy cache ls`, `docxy users list`
    and `docxy warm` take both. `docxy certs status --set ...` was a usage error (exit 2,
    "unrecognized arguments") though `--config` there was taken."""
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    code = main(
        ["certs", "status", "--set", f"tls.cert_path={cert}", "--set", f"tls.key_path={key}"]
    )
    # The settings reached the command: it read the pair there (not a pair: exit 1).
    assert code == 1
    assert json.loads(capsys.readouterr().out)["cert_path"] == str(cert)


def test_certs_set_after_the_action_wins_over_one_before_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As for `docxy users`: given before and after the action, the last one wins."""
    before, after, key = tmp_path / "before.pem", tmp_path / "after.pem", tmp_path / "k.pem"
    for path in (before, after, key):
        path.write_text("not PEM\n")
    code = main(
        [
            "certs",
            "--set",
            f"tls.cert_path={before}",
            "status",
            "--set",
            f"tls.cert_path={after}",
            "--set",
            f"tls.key_path={key}",
        ]
    )
    assert code == 1
    assert json.loads(capsys.readouterr().out)["cert_path"] == str(after)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_cache_gc_takes_max_size_through_set_only_as_the_readme_says() -> None:
    """README (the cache): gc evicts only with `cache.max_size` set for it, by `docxy cache gc
    --set cache.max_size=...`, the variable or the file, "it has no flag of its own" (the README
    said "flag", and users looked for a `--max-size`)."""
    gc = subcommands(subcommands(build_parser())["cache"])["gc"]
    flags = {flag for action in gc._actions for flag in action.option_strings}
    assert "--set" in flags
    assert not [flag for flag in flags if "size" in flag], flags
    assert "`docxy cache gc --set cache.max_size=20G`" in README
    assert "it has no flag of its own" in README


def test_the_commands_the_exit_codes_name_are_docxys_commands() -> None:
    """README (Settings): "Every `docxy` command (`serve`, `cache`, ...) exits with the same
    codes": the list is the parser's commands, no more, no fewer."""
    listed = README.split("Every `docxy` command (")[1].split(")")[0]
    assert set(re.findall(r"`([a-z]+)`", listed)) == set(subcommands(build_parser()))


@pytest.mark.parametrize("public", ["https://mirror.lan:7443", "https://127.0.0.84:7443"])
def test_the_mirrors_own_certificate_names_its_public_host(tmp_path: Path, public: str) -> None:
    """README (TLS, warm): with TLS and no certificate paths the mirror serves its own
    self-signed certificate, which clients are to trust (`configure-client.sh --ca-cert
    docxy-tls/selfsigned-cert.pem`, `docxy warm --ca-file` the same file). It named
    ``localhost`` whatever ``server.public_url`` said, so every client that reached the mirror
    by its name (or address) refused it: "x509: certificate is valid for localhost, not
    mirror.lan", and warm "IP address mismatch"."""
    config = load_config(
        {
            "server.listen": "127.0.0.84:7300",  # nothing is bound: load_tls only reads them
            "server.tls_listen": "127.0.0.84:7301",
            "server.public_url": public,
            "cache.dir": str(tmp_path / "cache"),
        },
        environ={},
    )
    tls = load_tls(config)
    assert tls is not None
    host = urlsplit(public).hostname
    assert tls.status()["sans"] == [host]
    # and it is kept across a restart for that name (made anew only for another one)
    serial = tls.status()["serial"]
    again = load_tls(config)
    assert again is not None and again.status()["serial"] == serial


def test_the_readme_says_which_host_the_mirrors_own_certificate_names() -> None:
    """The TLS section names the host the test above checks (it said `localhost`)."""
    tls = README.split("\n## TLS and certificates\n")[1].split("\n## ")[0]
    assert (
        "names another host than `certs.domain` (without one, the host of `server.public_url`"
        in (" ".join(tls.split()))
    )


def test_every_docxy_command_takes_set_after_its_action_and_the_renewer_does_not() -> None:
    """README (Settings): "Any setting can be given to a `docxy` command as `--set
    section.key=value` after the command and its action (...; the renewer ... takes no
    `--set`)"."""
    text = " ".join(README.split())
    assert "as `--set section.key=value` after the command and its action" in text
    assert "the renewer, `python -m scheduler`, takes no `--set`" in text
    leaves = []
    for command in subcommands(build_parser()).values():
        leaves += list(subcommands(command).values()) or [command]
    assert len(leaves) > 10
    for leaf in leaves:
        flags = {flag for action in leaf._actions for flag in action.option_strings}
        assert "--set" in flags, leaf.prog
    assert "--set" not in scheduler_settings.build_parser()._option_string_actions

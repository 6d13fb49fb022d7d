"""README claims checked against the code (the README review).

Each test ties one statement of README.md to what the code does, where the review found the two
apart, so neither drifts again.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from docxy.cli.main import build_parser, main

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

"""README claims checked against the code (the README review).

Each test ties one statement of README.md to what the code does, where the review found the two
apart, so neither drifts again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docxy.cli.main import main

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

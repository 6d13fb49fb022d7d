"""Review of secrets and privacy (secrets3): what a message shows of a value it refuses.

Every check here feeds a secret that is marked (``QS-SECRET``, a password's odd byte) through a
path that refuses it, and greps what the user is shown. Nothing listens on the loopback port
named (127.0.0.176:8301): the paths refuse before any connection.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from docxy.cli.main import main
from docxy.config import load_config
from docxy.core.errors import ConfigError
from scheduler import renewal
from scheduler import settings as settings_mod
from tests.unit.test_review_tls3 import renewer_env

__all__ = ["renewer_env"]  # a fixture of this file's tests too

NOWHERE = "http://127.0.0.176:8301"  # nothing listens there, nothing is sent there


# --- 1. docxy warm --password-stdin: a password that is not UTF-8 -------------------------------


def test_warm_refuses_a_password_not_utf8_saying_so_and_nothing_of_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password piped from a Latin-1 file or terminal reaches Python as a lone surrogate
    (stdin's surrogateescape); httpx's BasicAuth encoded it at once and the command died in a
    traceback ending "can't encode character '\\udce9' in position 1": a character of the
    password and its place (a cron mail, a CI log). ``docxy users add`` refuses the same
    password saying what is wrong (1c59435); warm now does too, exit 2, before any request."""
    monkeypatch.setattr("sys.stdin", io.StringIO("p\udce9ssw0rd-QS-SECRET\n"))
    code = main(["warm", "--mirror", NOWHERE, "--username", "bob", "--password-stdin", "alpine"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "not UTF-8" in err, err
    assert "udce9" not in err and "\udce9" not in err and "QS-SECRET" not in err, err
    assert "position" not in err, err


# --- 2. a URL setting with a query string: refused, and the query not shown ---------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("upstream.registry", "https://127.0.0.176:8300/?token=QS-SECRET"),
        ("upstream.auth_realm", "https://127.0.0.176:8300/token?account=bob&password=QS-SECRET"),
        ("shared.endpoint", "http://127.0.0.176:8302/b?X-Amz-Signature=QS-SECRET"),
        ("server.public_url", "https://127.0.0.176:8303/#access_token=QS-SECRET"),
        # a login and a query at once: neither is shown
        ("upstream.registry", "https://bob:pw-QS-SECRET@127.0.0.176:8300/?t=QS-SECRET"),
    ],
)
def test_a_url_setting_with_a_query_is_refused_without_showing_the_query(
    key: str, value: str
) -> None:
    """A URL copied with its query (a token service's link with the account's password, a
    presigned S3 URL's X-Amz-Signature) is refused at load, rightly, but the refusal quoted the
    whole URL: 'URL must not carry a query, fragment or credentials: 'https://...?token=...''
    to stderr and, in the appliance, to the container's log (README: query strings are never
    logged). A login in it was hidden already (``redacted``); the query now is too."""
    with pytest.raises(ConfigError) as refused:
        load_config({key: value}, environ={})
    message = str(refused.value)
    assert message.startswith(f"{key}: URL must not carry a query"), message
    assert "QS-SECRET" not in message, message
    assert "127.0.0.176" in message, message  # which URL is still said


def test_a_named_upstreams_url_with_a_query_is_refused_without_it() -> None:
    """``--upstreams NAME=URL`` (and ``[[upstreams]]``, ``DOCXY_UPSTREAMS_*_REGISTRY``) go through
    the same check: the same refusal, the query not shown."""
    with pytest.raises(ConfigError) as refused:
        load_config({"upstreams": "ghcr.io=https://ghcr.io/?token=QS-SECRET"}, environ={})
    message = str(refused.value)
    assert message.startswith("upstreams.ghcr.io.registry: URL must not carry a query"), message
    assert "QS-SECRET" not in message, message
    assert "https://ghcr.io/" in message, message


# --- 3. the renewer's pidfile: what it holds when it holds no pid --------------------------------


@pytest.mark.parametrize(
    "held",
    [
        b"DOCXY_UPSTREAM_PASSWORD=QS-SECRET\n",  # scheduler.pidfile set to another file
        b"1234 QS-SECRET\n",
        b"\xe9QS-SECRET\n",  # not even text: its byte and place were said
    ],
)
def test_a_pidfile_holding_no_pid_is_reported_without_what_it_holds(
    renewer_env: Path, tmp_path: Path, held: bytes
) -> None:
    """``scheduler.pidfile`` naming a file that holds no pid (a mistyped path: the .env, a
    secret's file) failed the reload with int()'s words, "invalid literal for int() with base
    10: 'DOCXY_UPSTREAM_PASSWORD=...'": up to 200 characters of that file, in the renewer's
    log, its status file and /health's renewal.last_error (public in open mode then). The reason
    names the file and says it holds no pid, nothing of what it holds."""
    pidfile = tmp_path / "docxy.pid"
    pidfile.write_bytes(held)
    with pytest.raises(renewal.ReloadError) as failed:
        renewal.tell_mirror(settings_mod.load(["--pidfile", str(pidfile)]))
    said = str(failed.value)
    assert "QS-SECRET" not in said and "xe9" not in said and "position" not in said, said
    assert str(pidfile) in said and "not a process id" in said, said

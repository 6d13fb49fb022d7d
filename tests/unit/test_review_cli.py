"""Review faults in the command line (docxy.cli, ``docxy certs``): a user's mistake is one line
on stderr and a failing exit code, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docxy.cli.exits import EXIT_CONFIG, EXIT_FAILED
from docxy.cli.main import main
from docxy.tls.context import self_signed
from lab import REPO_ROOT
from lab.ports import LOOPBACK, free_port

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


def docxy(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """``python -m docxy ARGS`` as a user runs it, with no terminal and nothing on stdin (as
    ``docker exec <container> docxy ...`` without ``-it``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["XDG_CACHE_HOME"] = str(cwd / "xdg")
    env.update(settings)
    return subprocess.run(
        [sys.executable, "-m", "docxy", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,  # no controlling terminal: getpass reads stdin, as in a container
        check=False,
    )


def test_users_add_without_a_terminal_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    """``docker exec mirror docxy users add alice`` (no -it): no terminal to prompt on and
    nothing on stdin. getpass then raises EOFError, which escaped as a traceback."""
    done = docxy("users", "add", "alice", cwd=tmp_path, DOCXY_AUTH_DIR=str(tmp_path / "auth"))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == EXIT_FAILED, done
    assert "docxy users add:" in done.stderr and "--password-stdin" in done.stderr
    assert (
        not (tmp_path / "auth" / "users").exists()
        or "alice" not in (tmp_path / "auth" / "users").read_text()
    )


def test_certs_obtain_into_a_webroot_it_cannot_make_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A webroot (or certificate path) the user may not write: the OSError escaped from
    ``docxy certs`` as a traceback. Root can write anywhere, so a path under a regular file
    stands in for one the user may not write (the same OSError, another errno)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    argv = [
        "certs",
        "obtain",
        "--domain",
        "mirror.test",
        "--email",
        "a@mirror.test",
        "--config-dir",
        str(tmp_path / "letsencrypt"),
        "--webroot",
        str(blocker / "webroot"),
    ]
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("docxy certs obtain: ") and str(blocker / "webroot") in err, err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ([], "cache.dir"),  # no certificate: the bootstrap one goes beside cache.dir
        (["--set", "certs.domain=mirror.test"], "tls.cert_path"),  # first start with a domain
        (["--set", "auth.client_certs=true"], "auth.dir"),  # the client CA
    ],
)
def test_serve_with_tls_where_it_cannot_write_is_a_config_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: list[str], key: str
) -> None:
    """``docxy serve --tls-listen`` writes a bootstrap certificate (and, with client
    certificates, its CA) before anything listens. A directory it may not write there (a
    certificate volume owned by root, with the mirror running as docxy) let the OSError out as
    a traceback, where an unwritable cache.dir is one config error line and exit 2."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    paths = {
        "cache.dir": ["--cache-dir", str(blocker / "cache")],
        "tls.cert_path": ["--cert", str(blocker / "cert.pem"), "--key", str(blocker / "key.pem")],
        "auth.dir": ["--set", f"auth.dir={blocker / 'access'}"],
    }
    argv = [
        "serve",
        "--listen", f"{LOOPBACK}:{free_port()}",
        "--tls-listen", f"{LOOPBACK}:{free_port()}",
        "--upstream", f"http://{LOOPBACK}:{free_port()}",
        "--set", "server.admin_listen=",
        *settings,
        *paths[key],
    ]  # fmt: skip
    if key != "cache.dir":
        argv += ["--cache-dir", str(tmp_path / "cache")]
    if key == "auth.dir":  # a certificate that exists: only the CA is left to write
        cert, private = self_signed(tmp_path / "tls", "mirror.test")
        argv += ["--cert", str(cert), "--key", str(private)]
    assert main(argv) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"docxy: config error: {key}: cannot write "), err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("mirror", ["http://[::1", "localhost:5000", "mirror.example.com"])
def test_warm_with_a_mirror_that_is_no_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], mirror: str
) -> None:
    """A typo in --mirror (an unclosed IPv6 bracket) raised httpx.InvalidURL out of
    ``docxy warm`` as a traceback; a host without its scheme was tried and reported per image
    as 'UnsupportedProtocol ... localhost://', exit 1, as if the mirror had failed. Both are
    usage errors: one line naming --mirror, exit 2, nothing sent."""
    assert main(["warm", "--mirror", mirror, "redis"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"docxy warm: --mirror {mirror!r}: "), err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("broken", ["missing", "mismatched"])
def test_certs_status_of_a_pair_it_cannot_serve_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], broken: str
) -> None:
    """``docxy certs status`` printed {"error": ...} for a missing or mismatched pair and
    exited 0, so a script or a monitoring check (``docxy certs status || alert``) saw a good
    certificate. It still prints the JSON, and exits 1."""
    cert, key = self_signed(tmp_path / "a", "a.test")
    if broken == "missing":
        cert = tmp_path / "nowhere" / "cert.pem"
    else:
        _, key = self_signed(tmp_path / "b", "b.test")
    assert main(["certs", "status", "--cert", str(cert), "--key", str(key)]) == EXIT_FAILED
    assert "error" in json.loads(capsys.readouterr().out)


# A shell without job control starts background commands with SIGINT ignored, and Python keeps
# an ignored SIGINT ignored (no KeyboardInterrupt): a test run so (`.ci/run &` from a script)
# waited for ever. Ctrl-C at a terminal has Python's own handler, which this puts back before
# docxy runs. (Not ``preexec_fn``: Python code between fork and exec in a test process that has
# threads can hang the child before it execs.)
_AS_AT_A_TERMINAL = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('docxy', run_name='__main__', alter_sys=True)"
)


def _accept_request(server: socket.socket) -> socket.socket:
    """The first connection that sends a registry request: a stray client from an earlier test
    that reaches this port is not taken for ``docxy warm``."""
    while True:
        connection, _ = server.accept()
        head = b""
        try:
            connection.settimeout(30)
            while b"\r\n\r\n" not in head and (chunk := connection.recv(4096)):
                head += chunk
        except BaseException:
            connection.close()
            raise
        if head.startswith(b"GET /v2/"):
            return connection
        connection.close()


def _wait_until_blocked(pid: int, limit: float = 10.0) -> None:
    """Wait (bounded) until ``pid`` sleeps in the kernel: warm blocked reading the answer.

    A SIGINT that lands after the interpreter last looked for signals but before the process
    enters its blocking ``poll`` is only seen when that call returns (CPython's handler merely
    sets a flag): sent the moment warm's request arrives, about one run in thirty waited out
    the whole read timeout. A user's Ctrl-C comes while warm waits; so does this test's."""
    deadline = time.monotonic() + limit
    sleeping = 0
    while time.monotonic() < deadline and sleeping < 3:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
        sleeping = sleeping + 1 if state == "S" else 0
        time.sleep(0.05)


def test_ctrl_c_during_warm_ends_quietly(tmp_path: Path) -> None:
    """Ctrl-C while ``docxy warm`` waits on the mirror (a long download, a stalled mirror)
    printed a KeyboardInterrupt traceback through httpx's and httpcore's frames. It now
    ends with one line and the shell's code for an interrupted command, 130."""
    with socket.create_server((LOOPBACK, 0)) as stalled:  # accepts, never answers
        port = stalled.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
        # a read timeout far past this test's own: only Ctrl-C can end warm in time
        argv = ["warm", "--timeout", "600", "--mirror", f"http://{LOOPBACK}:{port}", "redis"]
        warm = subprocess.Popen(
            [sys.executable, "-c", _AS_AT_A_TERMINAL, *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        connection = None
        try:
            stalled.settimeout(60)
            try:
                connection = _accept_request(stalled)  # warm has sent it, waits for an answer
            except TimeoutError:
                warm.kill()
                pytest.fail(f"docxy warm sent no request within 60 s: {warm.communicate()!r}")
            _wait_until_blocked(warm.pid)
            warm.send_signal(signal.SIGINT)
            _, err = warm.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            warm.kill()
            _, err = warm.communicate()
            pytest.fail(f"docxy warm did not end within 60 s of SIGINT; stderr: {err!r}")
        finally:
            if connection is not None:
                connection.close()
            warm.kill()
            warm.communicate()  # reaped, its pipes closed: nothing left to the next test
    assert "Traceback" not in err, err
    assert warm.returncode == 130, (warm.returncode, err)
    assert err.strip() == "docxy: interrupted", err

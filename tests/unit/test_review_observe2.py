"""Review faults in docxy.observe and docxy.cli (a second review): each test failed on the code
before its mend."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from docxy.cli.exits import EXIT_CONFIG, EXIT_FAILED
from docxy.cli.main import main
from lab import REPO_ROOT
from tests.unit.test_cachecli import UPSTREAM, _populate

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


def into_closed_pipe(cwd: Path, *args: str, unbuffered: bool) -> subprocess.CompletedProcess[str]:
    """``python -m docxy ARGS | head`` when head has gone already: standard output is a pipe
    whose reading end is closed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCXY_", "PYTHONUNBUF"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["XDG_CACHE_HOME"] = str(cwd / "xdg")
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "docxy", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("unbuffered", [False, True])
@pytest.mark.parametrize("action", ["ls", "du", "gc"])
def test_cache_output_into_a_closed_pipe_is_no_traceback(
    tmp_path: Path, action: str, unbuffered: bool
) -> None:
    """``docxy cache ls | head`` on a cache longer than head reads: the write into the closed
    pipe ended in a BrokenPipeError traceback (or, buffered, Python's 'Exception ignored' and
    exit 120); gc said 'cannot change <cache dir>: Broken pipe', blaming the cache."""
    root = tmp_path / "cache"
    asyncio.run(_populate(root))
    args = ("cache", action, "--cache-dir", str(root), "--upstream", UPSTREAM)
    done = into_closed_pipe(tmp_path, *args, unbuffered=unbuffered)
    assert done.stderr == "", done.stderr
    assert done.returncode == EXIT_FAILED


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["cache", "--help"], []])
def test_help_into_a_closed_pipe_is_no_traceback(tmp_path: Path, args: list[str]) -> None:
    """``docxy --help | ...`` whose reader is gone: argparse's message stayed in the buffer,
    and Python's flush at exit said 'Exception ignored ... BrokenPipeError', exit 120."""
    done = into_closed_pipe(tmp_path, *args, unbuffered=False)
    assert done.stderr == "", done.stderr
    assert done.returncode == EXIT_FAILED


def test_warm_takes_settings_by_set_as_every_command_reading_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """README: "Any setting can be given as --set", and warm reads server.public_url,
    upstream.library_prefix and the upstreams: ``docxy warm --set ...`` was a usage error
    (exit 2, 'unrecognized arguments'), while cache and health took it."""
    url = "http://127.0.0.81:9"  # nothing listens there
    code = main(["warm", "--set", f"server.public_url={url}", "--set", "upstreams=ghcr.io", "x"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILED, err
    assert f"cannot reach the mirror at {url}" in err, err
    assert main(["warm", "--set", "nonsense", "x"]) == EXIT_CONFIG

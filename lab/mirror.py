"""Run the Docxy mirror as a child process, the way a user would (`python -m docxy serve`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from lab import REPO_ROOT
from lab.ports import LOOPBACK, free_port

START_TIMEOUT = 30.0


@dataclass
class Mirror:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self, limit: int = 20000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def mirror_env(workdir: Path, env: Mapping[str, str] | None) -> dict[str, str]:
    """The outer environment without DOCXY_* settings, a private cache dir, then `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    python_path = [str(REPO_ROOT), *filter(None, [base.get("PYTHONPATH")])]
    base["PYTHONPATH"] = os.pathsep.join(python_path)
    base["DOCXY_CACHE_DIR"] = str(workdir / "cache")
    # No admin listener on the fixed default port, which parallel mirrors would race for;
    # tests of it pass --set server.admin_listen=127.0.0.1:<free port>.
    base["DOCXY_SERVER_ADMIN_LISTEN"] = ""
    return base | dict(env or {})


def launch_mirror(
    upstream_url: str,
    workdir: Path,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Mirror:
    """Start the mirror and wait until /health answers 200; kill it if it never does."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / f"mirror-{port}.log"
    command = [
        sys.executable,
        "-m",
        "docxy",
        "serve",
        "--listen",
        f"{LOOPBACK}:{port}",
        "--upstream",
        upstream_url,
        *extra_args,
    ]
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=mirror_env(workdir, env),
        )
    mirror = Mirror(f"http://{LOOPBACK}:{port}", port, proc, log_path)
    try:
        wait_healthy(mirror)
    except BaseException:
        stop_mirror(mirror)
        raise
    return mirror


def wait_healthy(mirror: Mirror, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if mirror.proc.poll() is not None:
            raise RuntimeError(
                f"mirror exited with {mirror.proc.returncode}:\n{mirror.log_text(4000)}"
            )
        try:
            response = httpx.get(f"{mirror.url}/health", timeout=2)
            if response.status_code == 200:
                return
            last = f"status {response.status_code}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise RuntimeError(f"mirror not healthy after {timeout}s ({last}):\n{mirror.log_text(4000)}")


def stop_mirror(mirror: Mirror) -> None:
    if mirror.proc.poll() is None:
        mirror.proc.terminate()
        try:
            mirror.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            mirror.proc.kill()
            mirror.proc.wait(timeout=10)

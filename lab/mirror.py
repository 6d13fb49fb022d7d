"""Run the Docxy mirror as a child process, the way a user would (`python -m docxy serve`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab import REPO_ROOT
from lab.ports import LOOPBACK, free_port
from lab.processes import stop_process
from lab.service import start_service


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
    service = start_service(
        f"mirror-{port}",
        command,
        port=port,
        workdir=workdir,
        ready_path="/health",
        env=mirror_env(workdir, env),
    )
    return Mirror(service.url, port, service.proc, service.log_path)


def stop_mirror(mirror: Mirror) -> None:
    stop_process(mirror.proc, grace=10)

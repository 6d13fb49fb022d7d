"""A private dockerd (Debian docker.io 20.10) whose registry mirror is the Docxy under test.

Everything lives in one short temporary directory: daemon.json, --data-root, --exec-root (the
containerd that dockerd starts for itself lives there too), --pidfile, the API socket, the log,
and a DOCKER_CONFIG directory for the CLI. The machine's own daemon is never used: every CLI
call passes `-H unix://<dir>/docker.sock`.

Credentials: with `registry-mirrors`, a pull of `docker.io/...` goes to the mirror with the
credentials the CLI holds for Docker Hub (`https://index.docker.io/v1/`), sent to the daemon in
X-Registry-Auth. So alice's credentials for a mirror pull are an `auths` entry under that key
in DOCKER_CONFIG/config.json; `docker login` is not used (it would contact Docker Hub).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lab.processes import base_env, pid_alive, run, stop_pid, stop_process, unmount_under, wait_for

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
START_TIMEOUT = 60.0


def docker_cli() -> str:
    """The docker CLI to drive the daemon with ($DOCXY_DOCKER_CLI, else `docker` on PATH)."""
    return os.environ.get("DOCXY_DOCKER_CLI") or shutil.which("docker") or "docker"


@dataclass(frozen=True)
class Dockerd:
    root: Path
    socket: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def config_dir(self) -> Path:
        return self.root / "docker-config"

    def docker(
        self, *args: str, timeout: float = 180.0, check: bool = False, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker -H <our socket> ARGS...` with our DOCKER_CONFIG."""
        argv = [docker_cli(), "-H", self.host, *args]
        return run(argv, env=self.env, timeout=timeout, check=check, stdin=stdin)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def set_docker_hub_credentials(self, user: str, password: str) -> None:
        """Give the CLI Docker Hub credentials, which dockerd then presents to the mirror."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        config = {"auths": {DOCKER_HUB_AUTH_KEY: {"auth": token}}}
        (self.config_dir / "config.json").write_text(json.dumps(config))


def daemon_config(mirror_url: str) -> dict[str, object]:
    return {
        "bridge": "none",
        "iptables": False,
        "ip6tables": False,
        "storage-driver": "vfs",
        "registry-mirrors": [mirror_url],
        "debug": True,
    }


@contextmanager
def running_dockerd(
    *, mirror_url: str, egress_proxy: str, extra_config: Mapping[str, object] | None = None
) -> Iterator[Dockerd]:
    """Start dockerd with `mirror_url` as its registry mirror; stop and clean up afterwards.

    `egress_proxy` is the loopback egress guard (lab.clients.egress) that dockerd's
    HTTP(S)_PROXY points at, so a fallback to registry-1.docker.io is refused, not sent.
    `extra_config` adds daemon.json keys (e.g. max-concurrent-downloads for a benchmark).
    """
    # Short path: containerd's sockets live under the exec root (unix paths max 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="dxd-", dir="/tmp"))
    sock = root / "docker.sock"
    config_dir = root / "docker-config"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps({"auths": {}}))
    config = daemon_config(mirror_url) | dict(extra_config or {})
    (root / "daemon.json").write_text(json.dumps(config))
    env = base_env(egress_proxy)
    env["DOCKER_CONFIG"] = str(config_dir)
    env["DOCKER_HOST"] = f"unix://{sock}"
    argv = [
        shutil.which("dockerd") or "dockerd",
        "--config-file",
        str(root / "daemon.json"),
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "docker.pid"),
        "-H",
        f"unix://{sock}",
    ]
    with open(root / "dockerd.log", "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    daemon = Dockerd(root=root, socket=sock, proc=proc, env=env)
    containerd_pid: int | None = None
    try:
        _wait_ready(daemon)
        containerd_pid = _own_containerd_pid(root)
        yield daemon
    finally:
        stop_process(proc)
        if containerd_pid is not None and pid_alive(containerd_pid):
            stop_pid(containerd_pid, marker=str(root / "exec"))
        unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(daemon: Dockerd) -> None:
    def answers() -> bool:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"dockerd exited with {daemon.proc.returncode}:\n{daemon.log()}")
        return daemon.docker("info", timeout=15).returncode == 0

    try:
        wait_for(answers, timeout=START_TIMEOUT, what="dockerd to answer `docker info`")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{daemon.log()[-4000:]}") from exc


def _own_containerd_pid(root: Path) -> int | None:
    """The containerd dockerd started for itself (it writes the pid under the exec root)."""
    pid_file = root / "exec" / "containerd" / "containerd.pid"
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None

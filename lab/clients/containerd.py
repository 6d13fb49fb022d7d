"""A private containerd (Debian containerd 1.6) and `ctr` pulls through the Docxy mirror.

This is the Kubernetes / Docker 29 path: containerd is given a hosts directory whose
`docker.io/hosts.toml` names the mirror as both the mirror host and the `server`, so it never
falls back to Docker Hub; it adds `?ns=docker.io` to every request and sends no `/v2/` ping.
Images are unpacked with the `native` snapshotter (overlayfs is not available everywhere,
e.g. overlay on overlay in CI containers).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lab.processes import base_env, run, stop_process, unmount_under, wait_for

SNAPSHOTTER = "native"
START_TIMEOUT = 60.0
_DISABLED_PLUGINS = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
]


def config_toml(root: Path) -> str:
    disabled = ", ".join(f'"{name}"' for name in _DISABLED_PLUGINS)
    return f"""\
version = 2
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = [{disabled}]

[grpc]
  address = "{root / "containerd.sock"}"

[ttrpc]
  address = "{root / "containerd.sock.ttrpc"}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"
"""


def hosts_toml(mirror_url: str) -> str:
    """hosts.toml for docker.io: the mirror only, with no fallback to Docker Hub."""
    return f"""\
server = "{mirror_url}"

[host."{mirror_url}"]
  capabilities = ["pull", "resolve"]
"""


@dataclass(frozen=True)
class Containerd:
    root: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def address(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def log_path(self) -> Path:
        return self.root / "containerd.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ctr(
        self, *args: str, timeout: float = 180.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        argv = [shutil.which("ctr") or "ctr", "--address", str(self.address), *args]
        return run(argv, env=self.env, timeout=timeout, check=check)

    def hosts_dir(self, mirror_url: str) -> Path:
        """Write DIR/docker.io/hosts.toml pointing at `mirror_url` and return DIR."""
        directory = self.root / "hosts" / mirror_url.split("//", 1)[1].replace(":", "_")
        (directory / "docker.io").mkdir(parents=True, exist_ok=True)
        (directory / "docker.io" / "hosts.toml").write_text(hosts_toml(mirror_url))
        return directory

    def pull(
        self,
        ref: str,
        *,
        mirror_url: str | None = None,
        hosts_dir: Path | None = None,
        user: str | None = None,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """`ctr images pull` of a docker.io reference through the mirror at `mirror_url`, or of
        any reference as the hosts directory `hosts_dir` (one of the two) says."""
        if hosts_dir is None:
            assert mirror_url is not None, "pull needs a mirror_url or a hosts_dir"
            hosts_dir = self.hosts_dir(mirror_url)
        args = ["images", "pull", "--snapshotter", SNAPSHOTTER, "--hosts-dir", str(hosts_dir)]
        if user is not None:
            args += ["--user", user]
        return self.ctr(*args, ref, timeout=timeout)

    def run_image(self, ref: str, name: str, *command: str) -> subprocess.CompletedProcess[str]:
        """Run a command in a fresh container (own empty network namespace), then remove it."""
        return self.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, ref, name, *command)


@contextmanager
def running_containerd(*, egress_proxy: str) -> Iterator[Containerd]:
    """Start containerd in its own directory; stop it and clean up afterwards.

    `egress_proxy` (lab.clients.egress) becomes HTTP(S)_PROXY for containerd and ctr.
    """
    root = Path(tempfile.mkdtemp(prefix="dxc-", dir="/tmp"))
    (root / "config.toml").write_text(config_toml(root))
    env = base_env(egress_proxy)
    argv = [shutil.which("containerd") or "containerd", "--config", str(root / "config.toml")]
    with open(root / "containerd.log", "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    daemon = Containerd(root=root, proc=proc, env=env)
    try:
        _wait_ready(daemon)
        yield daemon
    finally:
        stop_process(proc)
        unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(daemon: Containerd) -> None:
    def answers() -> bool:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"containerd exited with {daemon.proc.returncode}:\n{daemon.log()}")
        return daemon.ctr("version", timeout=15).returncode == 0

    try:
        wait_for(answers, timeout=START_TIMEOUT, what="containerd to answer `ctr version`")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{daemon.log()[-4000:]}") from exc

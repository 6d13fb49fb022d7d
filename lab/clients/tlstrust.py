"""Make real clients reach the mirror by a TLS name on loopback, and trust its certificate.

- `hosts_entry`: one `127.0.0.1 NAME` line appended to /etc/hosts (what dockerd's and skopeo's
  resolvers read); exactly that line is removed afterwards, even when the test fails.
- `docker_ca`: `/etc/docker/certs.d/HOST:PORT/ca.crt`, dockerd's per-registry trust; removed
  afterwards together with the directories it had to create.
- `running_dockerd_direct_to`: `lab.clients.dockerd.running_dockerd`, except that NAME is in
  the daemon's NO_PROXY. A name (unlike 127.0.0.1) would otherwise be sent to the egress guard;
  NAME resolves to 127.0.0.1 through `hosts_entry`, so nothing leaves loopback, and every other
  host still ends at the guard.
"""

from __future__ import annotations

import fcntl
import secrets
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

from lab.clients import dockerd as dockerd_module
from lab.clients.dockerd import Dockerd, running_dockerd
from lab.processes import base_env

HOSTS = Path("/etc/hosts")
DOCKER_CERTS_D = Path("/etc/docker/certs.d")


@contextmanager
def hosts_entry(name: str, hosts: Path = HOSTS, address: str = "127.0.0.1") -> Iterator[str]:
    """Resolve `name` to `address` (127.0.0.1, or one in a test's own network namespace) for
    every process on the machine while inside."""
    line = f"{address} {name} # docxy-test {secrets.token_hex(4)}\n"
    with hosts.open("r+") as handle:  # in place: /etc/hosts is often a bind mount
        fcntl.flock(handle, fcntl.LOCK_EX)
        text = handle.read()
        added = line if text.endswith("\n") or not text else "\n" + line
        handle.write(added)
    try:
        yield line
    finally:
        with hosts.open("r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            text = handle.read()
            if added in text:
                handle.seek(0)
                handle.write(text.replace(added, "", 1))
                handle.truncate()


@contextmanager
def docker_ca(host_port: str, ca: Path, base: Path = DOCKER_CERTS_D) -> Iterator[Path]:
    """dockerd trusts `ca` for the registry (or mirror) at `host_port` while inside."""
    created = [parent for parent in (base.parent, base) if not parent.exists()]
    target = base / host_port
    assert not target.exists(), f"{target} exists already: not ours to replace"
    target.mkdir(parents=True)
    created.append(target)
    try:
        shutil.copyfile(ca, target / "ca.crt")
        yield target / "ca.crt"
    finally:
        (target / "ca.crt").unlink(missing_ok=True)
        for directory in reversed(created):
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()


def env_direct_to(name: str, proxy_url: str) -> dict[str, str]:
    """`base_env(proxy_url)` with `name` (a loopback name) exempted from the proxy."""
    env = base_env(proxy_url)
    env["NO_PROXY"] = env["no_proxy"] = name
    return env


@contextmanager
def running_dockerd_direct_to(
    name: str, *, mirror_url: str, egress_proxy: str
) -> Iterator[Dockerd]:
    """A private dockerd whose registry mirror is reached by `name`, not through the guard."""
    with ExitStack() as stack:
        started = running_dockerd(mirror_url=mirror_url, egress_proxy=egress_proxy)
        # The daemon's environment is built once, at start: patch only for that moment.
        with mock.patch.object(
            dockerd_module, "base_env", lambda proxy: env_direct_to(name, proxy)
        ):
            daemon = stack.enter_context(started)
        yield daemon

"""Containers and images of a private dockerd (lab.clients.dockerd), through the docker CLI.

Only host networking (or none): the test daemons have no bridge networks. `running_container`
removes the container and its anonymous volumes afterwards, whatever happened. `layer_files`
lists what each layer of an image holds (`docker save`).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lab.clients.dockerd import Dockerd, docker_cli


@dataclass(frozen=True)
class Container:
    daemon: Dockerd
    name: str

    def docker(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.daemon.docker(*args, timeout=timeout)

    def inspect(self) -> dict[str, Any]:
        result = self.daemon.docker("container", "inspect", self.name, timeout=60, check=True)
        found = json.loads(result.stdout)
        assert isinstance(found, list) and len(found) == 1
        entry: dict[str, Any] = found[0]
        return entry

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.inspect()["State"]
        return state

    def health(self) -> str:
        """Docker's verdict from the image's HEALTHCHECK: starting, healthy or unhealthy."""
        return str(self.state().get("Health", {}).get("Status", ""))

    def exec(self, *argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.daemon.docker("exec", self.name, *argv, timeout=timeout)

    def logs(self) -> str:
        result = self.daemon.docker("logs", self.name, timeout=60)
        return result.stdout + result.stderr

    def exit_codes(self, *, since: str) -> list[str]:
        """Exit statuses of this container's `die` events since `since`, oldest first (a
        restart policy resets State.ExitCode once it has restarted the container)."""
        argv = ["events", "--since", since, "--until", daemon_time(self.daemon)]
        argv += ["--filter", f"container={self.name}", "--filter", "event=die"]
        argv += ["--format", "{{.Actor.Attributes.exitCode}}"]
        return self.daemon.docker(*argv, timeout=60, check=True).stdout.split()

    def report(self) -> str:
        """Everything worth reading when an assertion about the container fails."""
        return f"--- state ---\n{json.dumps(self.state(), indent=1)}\n--- logs ---\n{self.logs()}"


def daemon_time(daemon: Dockerd) -> str:
    """The daemon's clock now, as `docker events --since/--until` take it."""
    result = daemon.docker("system", "info", "--format", "{{.SystemTime}}", check=True)
    return result.stdout.strip()


def layer_files(daemon: Dockerd, image: str) -> list[list[str]]:
    """The paths in each layer of `image`, base layer first (from `docker save`)."""
    argv = [docker_cli(), "-H", daemon.host, "save", image]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=daemon.env)
    assert proc.stdout is not None
    names: dict[str, list[str]] = {}
    manifest: list[dict[str, Any]] = []
    with proc, tarfile.open(fileobj=proc.stdout, mode="r|") as saved:
        for member in saved:
            content = saved.extractfile(member) if member.isfile() else None
            if content is None:
                continue
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=content, mode="r|") as layer:
                    names[member.name] = [entry.name for entry in layer]
            elif member.name == "manifest.json":
                manifest = json.load(content)
    assert proc.returncode == 0
    return [names[path] for path in manifest[0]["Layers"]]


def docker_run_args(
    image: str,
    name: str,
    *,
    env: Mapping[str, str],
    volumes: Sequence[str] = (),
    options: Sequence[str] = (),
    command: Sequence[str] = (),
) -> list[str]:
    argv = ["run", "--detach", "--name", name, "--network", "host"]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    for volume in volumes:
        argv += ["--volume", volume]
    return [*argv, *options, image, *command]


@contextmanager
def running_container(
    daemon: Dockerd,
    image: str,
    *,
    env: Mapping[str, str],
    volumes: Sequence[str] = (),
    options: Sequence[str] = (),
    command: Sequence[str] = (),
) -> Iterator[Container]:
    """`docker run --detach --network host ...`; `docker rm --force --volumes` afterwards."""
    name = f"docxy-test-{secrets.token_hex(4)}"
    argv = docker_run_args(image, name, env=env, volumes=volumes, options=options, command=command)
    daemon.docker(*argv, timeout=300, check=True)
    try:
        yield Container(daemon, name)
    finally:
        daemon.docker("rm", "--force", "--volumes", name, timeout=120)

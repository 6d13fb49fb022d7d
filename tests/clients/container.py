"""A container of a private dockerd (tests.clients.dockerd), driven through the docker CLI.

Only host networking (or none): the test daemons have no bridge networks. `running_container`
removes the container and its anonymous volumes afterwards, whatever happened.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.clients.dockerd import Dockerd


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

    def report(self) -> str:
        """Everything worth reading when an assertion about the container fails."""
        return f"--- state ---\n{json.dumps(self.state(), indent=1)}\n--- logs ---\n{self.logs()}"


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

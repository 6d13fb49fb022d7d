"""A child process serving HTTP(S) on a loopback port, waited on until it answers.

`start_service` writes the command line and then the process's output to `<workdir>/<name>.log`,
polls `ready_path` until one of `ready_statuses` comes back (bounded: a process that exits or
never answers is stopped and its log tail raised), and returns a `Service` to stop later.
The registry, the mirror and the benchmarks' nginx all start this way.
"""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from lab.certs import CertPair
from lab.ports import LOOPBACK
from lab.processes import stop_process

START_TIMEOUT = 30.0
POLL_INTERVAL = 0.05


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    tls: CertPair | None = None
    """The certificate it serves, which clients trust (None: plain HTTP)."""

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client needs to trust this service."""
        return self.tls.context() if self.tls is not None else True

    @property
    def cacert(self) -> Path | None:
        return self.tls.cert if self.tls is not None else None

    def log_text(self, limit: int | None = None) -> str:
        """The log, or its last `limit` characters."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text if limit is None else text[-limit:]

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; always reaps the child."""
        stop_process(self.proc, grace=grace)


def start_service(
    name: str,
    command: Sequence[str],
    *,
    port: int,
    workdir: Path,
    ready_path: str,
    ready_statuses: Collection[int] = (200,),
    env: Mapping[str, str] | None = None,
    tls: CertPair | None = None,
    cpus: str | None = None,
    timeout: float = START_TIMEOUT,
) -> Service:
    """Start `command` (cwd `workdir`) and wait until it answers on `port`.

    `cpus` pins it and its children to those CPUs (`taskset -c`, e.g. "0" for one core).
    """
    argv = list(command) if cpus is None else ["taskset", "-c", cpus, *command]
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=dict(env) if env is not None else None,
        )
    service = Service(name, proc, port, log_path, tls)
    try:
        _wait_ready(service, ready_path, ready_statuses, timeout)
    except BaseException:
        service.stop()
        raise
    return service


def _wait_ready(service: Service, path: str, statuses: Collection[int], timeout: float) -> None:
    deadline, last = time.monotonic() + timeout, "no attempt"
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited with {service.proc.returncode}:\n{service.log_text(4000)}"
            )
        try:
            status = httpx.get(service.url + path, timeout=2, verify=service.verify).status_code
            if status in statuses:
                return
            last = f"status {status}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(POLL_INTERVAL)
    raise RuntimeError(
        f"{service.name} not ready after {timeout:g}s ({last}):\n{service.log_text(4000)}"
    )

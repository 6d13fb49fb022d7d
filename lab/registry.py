"""A real Distribution registry (Debian's `docker-registry`, v2.8) with token auth, on loopback.

Storage is a filesystem directory in the bed's work dir; the CDN reads blobs from it directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from lab.ports import LOOPBACK, free_port

REGISTRY_BINARY = "docker-registry"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class TokenAuth:
    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


@dataclass(frozen=True)
class BasicAuth:
    """htpasswd (bcrypt) Basic auth: a plain private registry without a token service."""

    realm: str
    htpasswd: Path


def _auth(auth: TokenAuth | BasicAuth) -> dict[str, object]:
    if isinstance(auth, BasicAuth):
        return {"htpasswd": {"realm": auth.realm, "path": str(auth.htpasswd)}}
    return {
        "token": {
            "realm": auth.realm,
            "service": auth.service,
            "issuer": auth.issuer,
            "rootcertbundle": str(auth.rootcertbundle),
        }
    }


def _config(port: int, storage: Path, auth: TokenAuth | BasicAuth) -> str:
    # YAML is a superset of JSON, so the config is written as JSON (no YAML library needed).
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"{LOOPBACK}:{port}", "secret": os.urandom(16).hex()},
        "auth": _auth(auth),
    }
    return json.dumps(config, indent=2)


class RegistryProcess:
    """`docker-registry serve` as a child process; `stop()` always kills it."""

    def __init__(self, binary: str, workdir: Path, auth: TokenAuth | BasicAuth) -> None:
        self.binary = binary
        self.workdir = workdir
        self.auth = auth
        self.storage = workdir / "storage"
        self.log_path = workdir / "registry.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        return (
            self.storage / "docker/registry/v2/blobs" / algorithm / hexpart[:2] / hexpart / "data"
        )

    def start(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config_path = self.workdir / "config.yml"
        config_path.write_text(_config(self.port, self.storage, self.auth))
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "serve", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited early:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.url}/v2/", timeout=2)
                if response.status_code == 401:
                    return
                last_error = f"status {response.status_code}"
            except httpx.TransportError as exc:
                last_error = repr(exc)
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry not ready ({last_error}):\n{self.log_tail()}")

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

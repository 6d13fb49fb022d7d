"""A real Distribution registry (Debian's `docker-registry`, v2.8) on loopback.

Token auth (the bed's), htpasswd Basic auth (the second upstream) or none (the benchmarks'
upstream); optionally a pull-through cache of `remote` (Distribution's proxy mode), and TLS.
Storage is a filesystem directory (the bed's CDN reads blobs from it directly, the benchmarks
write blobs straight into it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lab.certs import CertPair
from lab.ports import LOOPBACK, free_port
from lab.service import Service, start_service

REGISTRY_BINARY = "docker-registry"


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


def registry_config(
    port: int,
    storage: Path,
    *,
    auth: TokenAuth | BasicAuth | None = None,
    remote: str | None = None,
    tls: CertPair | None = None,
) -> str:
    """The registry's config.yml: `remote` makes it a pull-through cache of that registry."""
    http: dict[str, object] = {"addr": f"{LOOPBACK}:{port}", "secret": os.urandom(16).hex()}
    if tls is not None:
        http["tls"] = {"certificate": str(tls.cert), "key": str(tls.key)}
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if auth is not None:
        config["auth"] = _auth(auth)
    if remote is not None:
        config["proxy"] = {"remoteurl": remote}
    # YAML is a superset of JSON, so the config is written as JSON (no YAML library needed).
    return json.dumps(config, indent=2)


class RegistryProcess:
    """`docker-registry serve` as a child process; `stop()` always kills it.

    Its config and log are `<workdir>/<name>.yml` and `.log`; storage is `storage`, by default
    `<workdir>/storage`. `cpus` pins it (`taskset -c`).
    """

    def __init__(
        self,
        binary: str,
        workdir: Path,
        auth: TokenAuth | BasicAuth | None = None,
        *,
        name: str = "registry",
        storage: Path | None = None,
        remote: str | None = None,
        tls: CertPair | None = None,
        cpus: str | None = None,
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.auth = auth
        self.name = name
        self.storage = storage if storage is not None else workdir / "storage"
        self.remote = remote
        self.tls = tls
        self.cpus = cpus
        self.log_path = workdir / f"{name}.log"
        self.port = 0
        self._service: Service | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        return (
            self.storage / "docker/registry/v2/blobs" / algorithm / hexpart[:2] / hexpart / "data"
        )

    def start(self) -> Service:
        """Start it on a free port and wait until `/v2/` answers (401 with auth, else 200)."""
        self.storage.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config_path = self.workdir / f"{self.name}.yml"
        config = registry_config(
            self.port, self.storage, auth=self.auth, remote=self.remote, tls=self.tls
        )
        config_path.write_text(config)
        self._service = start_service(
            self.name,
            [self.binary, "serve", str(config_path)],
            port=self.port,
            workdir=self.workdir,
            ready_path="/v2/",
            ready_statuses=(200,) if self.auth is None else (401,),
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            tls=self.tls,
            cpus=self.cpus,
        )
        return self._service

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            service.stop(grace=5)

"""A second upstream for the many-upstreams tests: a plain private registry with Basic auth.

(The tests call it "lab": its name in their mirror's `upstreams` is `lab.test`.)

Debian's ``docker-registry`` with an htpasswd file (Distribution takes bcrypt hashes only), no
token service, seeded with one runnable image. The Docker-Hub-like bed (token auth) is the other.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from docxy import __version__
from lab import need
from lab.bed import TestImage
from lab.bed.images import BUSYBOX, Pusher, _seed_single
from lab.registry import REGISTRY_BINARY, BasicAuth, RegistryProcess

USER = "lab-robot"
REPO = "team/tool"


class BasicPusher(Pusher):
    """Pushes with Basic credentials instead of a bearer token."""

    def __init__(self, registry_url: str, user: str, password: str) -> None:
        super().__init__(registry_url, lambda repo: "")
        raw = f"{user}:{password}".encode()
        self._authorization = "Basic " + base64.b64encode(raw).decode()

    def _headers(self, repo: str) -> dict[str, str]:
        return {"Authorization": self._authorization}


@dataclass
class BasicUpstream:
    url: str
    user: str
    password: str
    image: TestImage
    registry: RegistryProcess

    def fetched_by_docxy(self) -> list[str]:
        """The registry's access log lines of requests a Docxy mirror sent (its User-Agent)."""
        lines = self.registry.log_tail(1 << 22).splitlines()
        return [line for line in lines if line.endswith('"docxy/' + __version__ + '"')]


@contextmanager
def start_basic_upstream(workdir: Path) -> Iterator[BasicUpstream]:
    """Start the registry under `workdir`, seed `team/tool:1`, stop it afterwards."""
    binary = need.binary(REGISTRY_BINARY)
    need.static_busybox(BUSYBOX)
    password = secrets.token_urlsafe(12)
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = workdir / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"{USER}:{hashed}\n")
    registry = RegistryProcess(binary, workdir, BasicAuth("docxy-lab", htpasswd))
    registry.start()
    pusher = BasicPusher(registry.url, USER, password)
    try:
        image = _seed_single(pusher, REPO, "1", [], True)
        yield BasicUpstream(registry.url, USER, password, image, registry)
    finally:
        pusher.close()
        registry.stop()

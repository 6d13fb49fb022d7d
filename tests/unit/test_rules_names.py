"""Which name the repository rules see: the one the client wrote in the path, with ``library/``
on Docker Hub; a pull by path prefix through another upstream is ``ghcr.io/owner/img``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from docxy.config import load_config
from docxy.edge.admission import Admission
from tests.unit.asgi import call_asgi
from tests.unit.test_admission import inner

RULES = {
    "access.repositories": "library/*, ghcr.io/myorg/**",
    "upstreams": "ghcr.io",
    "upstreams.ghcr.io.hosts": "ghcr.mirror.example.com",
}


def admission(**extra: str) -> Admission:
    return Admission(inner, load_config({**RULES, **extra}, environ={}))


async def refused_as(path: str, host: str = "mirror.example.com") -> str | None:
    """The name the refusal names, or None when the request was let through."""
    answer = await call_asgi(admission(), "GET", path, host=host)
    if answer.status == 200:
        return None
    assert answer.status == 403
    error: dict[str, Any] = json.loads(answer.body)["errors"][0]
    assert error["code"] == "DENIED"
    return str(error["detail"]["name"])


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("/v2/ghcr.io/myorg/app/manifests/1", None),  # ghcr.io/myorg/app: as written
        ("/v2/ghcr.io/myorg/team/app/blobs/sha256:" + "a" * 64, None),
        ("/v2/ghcr.io/other/app/manifests/1", "ghcr.io/other/app"),
        ("/v2/ghcr.io/library/app/manifests/1", "ghcr.io/library/app"),  # not Docker Hub's
        ("/v2/redis/manifests/1", None),  # library/redis on Docker Hub
        ("/v2/myorg/app/manifests/1", "myorg/app"),  # Docker Hub's myorg, not ghcr.io's
    ],
)
async def test_prefix_routed_names_are_matched_as_written(path: str, refused: str | None) -> None:
    assert await refused_as(path) == refused


@pytest.mark.parametrize(
    ("path", "host", "refused"),
    [
        # containerd's ?ns= and a mirror host name pick ghcr.io too: the same name as a prefix
        ("/v2/myorg/app/manifests/1?ns=ghcr.io", "mirror.example.com", None),
        ("/v2/library/app/manifests/1?ns=ghcr.io", "mirror.example.com", "ghcr.io/library/app"),
        ("/v2/library/app/manifests/1", "ghcr.mirror.example.com", "ghcr.io/library/app"),
        ("/v2/myorg/app/manifests/1", "ghcr.mirror.example.com", None),
        # Docker Hub by its own name is Docker Hub
        ("/v2/docker.io/library/redis/manifests/1", "mirror.example.com", None),
        ("/v2/redis/manifests/1?ns=docker.io", "mirror.example.com", None),
    ],
)
async def test_every_way_to_pick_an_upstream_gives_the_rules_one_name(
    path: str, host: str, refused: str | None
) -> None:
    """A deny rule for ``ghcr.io/**`` or an allow list of ``library/*`` cannot be walked around
    with ``?ns=ghcr.io`` or ghcr.io's host name (the path then holds ``library/app`` only)."""
    assert await refused_as(path, host) == refused

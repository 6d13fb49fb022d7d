"""The mirror's own ``/v2/`` probe (docxy.upstream.probe): each registry host once a round,
however many upstream names point at it."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from docxy.config import load_config
from docxy.http.app import create_app

PUBLIC = "https://mirror.example.com"


class Registries:
    """Answers each ``/v2/`` as a registry does (``down`` hosts: a 503), and keeps them."""

    def __init__(self, down: frozenset[str] = frozenset()) -> None:
        self.down = down
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(f"{request.url.host}{request.url.path}")
        if request.url.host in self.down:
            return httpx.Response(503)
        realm = f'Bearer realm="https://auth.{request.url.host}/token",service="x"'
        return httpx.Response(401, headers={"WWW-Authenticate": realm})


async def probed(registries: Registries, *, rounds_done: int) -> list[str]:
    """What the started mirror's first round of probes asked (``rounds_done`` hosts)."""
    config = load_config(
        {
            "server.public_url": PUBLIC,
            "upstream.registry": "https://hub.example",
            # Two more names for the default's registry (one with its default port written),
            # one name for another.
            "upstreams": "hub.alias=https://hub.example,hub.port=https://hub.example:443,"
            "ghcr.test=https://ghcr.example",
        },
        environ={},
    )
    app = create_app(config, probe=True, transport=httpx.MockTransport(registries))
    async with app.test_app():
        for _ in range(200):
            if len(registries.asked) >= rounds_done:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # time for a second ask of a host, were there one
    return registries.asked


async def test_each_registry_host_is_probed_once_a_round() -> None:
    asked = await probed(Registries(), rounds_done=2)
    assert asked == ["hub.example/v2/", "ghcr.example/v2/"]


async def test_a_host_in_trouble_is_one_warning_naming_its_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="docxy.upstream.probe")
    asked = await probed(Registries(down=frozenset({"hub.example"})), rounds_done=2)
    assert asked == ["hub.example/v2/", "ghcr.example/v2/"]
    said = [r.getMessage() for r in caplog.records if "in trouble" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith("upstream docker.io, hub.alias, hub.port in trouble: "), said

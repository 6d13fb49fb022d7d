"""``/setup.sh``: the client script as shipped, with the mirror's public URL filled in."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from quart import Quart

from docxy.config import load_config
from docxy.http.app import create_app
from docxy.http.setup_script import SetupScriptError, fill_in, shipped_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "configure-client.sh"


def expected(url: str, registries: str = "docker.io") -> str:
    """The repository's script with its MIRROR_DEFAULT and REGISTRIES_DEFAULT lines set."""
    lines = SCRIPT.read_text().splitlines(keepends=True)
    index = lines.index('MIRROR_DEFAULT=""\n')
    lines[index] = f'MIRROR_DEFAULT="{url}"\n'
    index = lines.index('REGISTRIES_DEFAULT=""\n')
    lines[index] = f'REGISTRIES_DEFAULT="{registries}"\n'
    return "".join(lines)


def test_the_shipped_script_is_the_repositorys() -> None:
    assert shipped_script() == SCRIPT.read_text()


@pytest.mark.parametrize(
    ("public_url", "filled"),
    [
        ("https://mirror.example.com", "https://mirror.example.com"),
        ("https://mirror.example.com/", "https://mirror.example.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://[2001:db8::1]:8443/docker", "https://[2001:db8::1]:8443/docker"),
    ],
)
def test_fill_in_sets_the_default_mirror(public_url: str, filled: str) -> None:
    assert fill_in(SCRIPT.read_text(), public_url) == expected(filled)


@pytest.mark.parametrize(
    "public_url",
    [
        'https://x.example/"; rm -rf / #',
        "https://x.example/$(id)",
        "https://x.example/`id`",
        "https://x.example/\\n",
        "ftp://x.example",
    ],
)
def test_fill_in_refuses_what_the_shell_would_interpret(public_url: str) -> None:
    with pytest.raises(SetupScriptError):
        fill_in(SCRIPT.read_text(), public_url)


def test_fill_in_needs_exactly_one_placeholder() -> None:
    with pytest.raises(SetupScriptError):
        fill_in("#!/bin/sh\necho no placeholder\n", "https://mirror.example.com")
    with pytest.raises(SetupScriptError, match="REGISTRIES_DEFAULT"):
        fill_in('MIRROR_DEFAULT=""\n', "https://mirror.example.com")


def test_fill_in_sets_the_registries() -> None:
    filled = fill_in(
        SCRIPT.read_text(), "https://m.example", ("docker.io", "lab.test=http://127.0.0.1:5000")
    )

    assert filled == expected("https://m.example", "docker.io lab.test=http://127.0.0.1:5000")


@pytest.mark.parametrize(
    "registry",
    ["ghcr.io;id", "ghcr.io $(id)", 'a.b"', "lab.test=http://h/$(id)", "x=ftp://h", "GHCR.IO"],
)
def test_fill_in_refuses_a_registry_the_shell_would_interpret(registry: str) -> None:
    with pytest.raises(SetupScriptError):
        fill_in(SCRIPT.read_text(), "https://m.example", ("docker.io", registry))


async def test_route_fills_in_every_configured_registry() -> None:
    app = mirror_app(
        "https://mirror.example.com",
        upstreams="ghcr.io,lab.test=http://10.0.0.5:5000/,odd.test=https://odd.example/r",
    )
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/setup.sh")
        body = await response.get_data(as_text=True)

    assert response.status_code == 200
    # [upstream] (https://registry.example) is not Docker Hub: its host gets a hosts.toml too.
    default = "registry.example=https://registry.example"
    registries = (
        f"docker.io {default} ghcr.io=https://ghcr.io lab.test=http://10.0.0.5:5000 odd.test"
    )
    assert body == expected("https://mirror.example.com", registries)


async def test_strangers_get_the_registries_names_without_their_urls() -> None:
    """Off ``access.allow`` (or in users mode), /health shows strangers no upstream URL, and
    /setup.sh, served to anyone, listed an internal registry's address all the same."""
    upstreams = "ghcr.io,lab.test=http://10.0.0.5:5000/"
    app = mirror_app(
        "https://mirror.example.com", upstreams=upstreams, **{"access.allow": "192.0.2.0/24"}
    )
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/setup.sh")
        body = await response.get_data(as_text=True)

    assert response.status_code == 200
    assert body == expected("https://mirror.example.com", "docker.io ghcr.io lab.test")
    assert "10.0.0.5" not in body


async def test_route_serves_the_script_with_this_mirrors_url() -> None:
    app = mirror_app("https://mirror.example.com")
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/setup.sh")
        body = await response.get_data(as_text=True)
        head = await test_app.test_client().head("/setup.sh")

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/x-shellscript")
    registries = "docker.io registry.example=https://registry.example"  # [upstream]'s host too
    assert body == expected("https://mirror.example.com", registries)
    assert head.status_code == 200


async def test_route_renders_a_bad_public_url_as_a_registry_error() -> None:
    # A host the config takes (a path is refused there since fc5fea5) that no script may hold.
    app = mirror_app("https://mirror.exa$mple.com")
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/setup.sh")
        body = json.loads(await response.get_data(as_text=True))

    assert response.status_code == 500
    assert "cannot be put in a shell script" in body["errors"][0]["message"]


def mirror_app(public_url: str, **settings: str) -> Quart:
    """A cache-less mirror at `public_url` (with more `settings`) whose upstream must not be
    asked."""
    config = load_config(
        {
            "server.public_url": public_url,
            "upstream.registry": "https://registry.example",
            "cache.enabled": "false",
            **settings,
        },
        environ={},
    )
    return create_app(config, probe=False, transport=httpx.MockTransport(_no_upstream))


def _no_upstream(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"/setup.sh must not reach the upstream: {request.url}")

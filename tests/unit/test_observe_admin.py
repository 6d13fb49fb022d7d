"""The admin listener: its setting, serving on its own port, and a port already taken."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from docxy.config import HostPort, load_config
from docxy.core.errors import ConfigError
from docxy.http.state import MirrorState
from docxy.observe import Observer, create_admin_app, serve_admin
from docxy.upstream.client import Upstream
from lab.ports import LOOPBACK, free_port
from tests.unit.asgi import call_asgi


def test_admin_listen_is_loopback_by_default_and_can_be_turned_off() -> None:
    assert load_config(environ={}).server.admin_listen == HostPort("127.0.0.1", 9180)
    off = load_config(environ={"DOCXY_SERVER_ADMIN_LISTEN": ""})
    assert off.server.admin_listen is None
    moved = load_config({"server.admin_listen": "0.0.0.0:9100"}, environ={})
    assert moved.server.admin_listen == HostPort("0.0.0.0", 9100)


def test_a_bad_admin_listen_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"server\.admin_listen: .*env DOCXY_SERVER_ADMIN_LISTEN"):
        load_config(environ={"DOCXY_SERVER_ADMIN_LISTEN": "nine-one-eight-zero"})


def make_observer(tmp_path: Path) -> Observer:
    config = load_config({"cache.dir": str(tmp_path), "cache.enabled": "false"}, environ={})
    return Observer(MirrorState(config, Upstream.from_config(config.upstream)))


@contextlib.asynccontextmanager
async def admin_serving(tmp_path: Path) -> AsyncIterator[int]:
    """An admin listener on a free loopback port (yielded), until the block ends."""
    port = free_port()
    stop = asyncio.Event()
    app = create_admin_app(make_observer(tmp_path))
    serving = asyncio.get_running_loop().create_task(
        serve_admin(app, HostPort(LOOPBACK, port), stop.wait)
    )
    try:
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)


async def test_serves_until_told_to_stop(tmp_path: Path) -> None:
    async with admin_serving(tmp_path) as port:
        async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}") as client:
            for _ in range(200):  # until the listener is up (bounded)
                try:
                    answer = await client.get("/status.json")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the admin listener never answered")
        assert answer.status_code == 200
        assert answer.json()["cache"]["enabled"] is False


async def test_a_port_in_use_is_logged_and_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = create_admin_app(make_observer(tmp_path))
        never = asyncio.Event()
        with caplog.at_level(logging.ERROR, logger="docxy.observe.admin"):
            await asyncio.wait_for(serve_admin(app, HostPort(LOOPBACK, port), never.wait), 30)
    assert f"cannot listen on {LOOPBACK}:{port}" in caplog.text
    assert "server.admin_listen" in caplog.text


@pytest.mark.parametrize(
    "host",
    ["evil.example:9180", "evil.example", "localhost.evil.example:9180", "127.0.0.1.nip.io:9180"],
)
async def test_a_foreign_host_name_is_refused(tmp_path: Path, host: str) -> None:
    # DNS rebinding: a page on evil.example re-resolves its name to 127.0.0.1 and reads the
    # ssh -L tunnel; the browser still sends Host: evil.example, which is what gives it away.
    app = create_admin_app(make_observer(tmp_path), HostPort("127.0.0.1", 9180))
    for path in ("/status.json", "/metrics", "/status"):
        answer = await call_asgi(app, "GET", path, host=host)
        assert answer.status == 403
        assert json.loads(answer.body)["errors"][0]["code"] == "DENIED"


@pytest.mark.parametrize(
    "host", ["localhost:9180", "127.0.0.1:9180", "127.0.0.5", "[::1]:9180", "10.0.0.7:9100"]
)
async def test_loopback_and_address_hosts_are_served(tmp_path: Path, host: str) -> None:
    # An address literal cannot be rebound: only a DNS name can change what it points at.
    app = create_admin_app(make_observer(tmp_path), HostPort("0.0.0.0", 9100))
    answer = await call_asgi(app, "GET", "/status.json", host=host)
    assert answer.status == 200


async def test_the_listen_name_itself_is_served(tmp_path: Path) -> None:
    app = create_admin_app(make_observer(tmp_path), HostPort("mirror.lan", 9180))
    assert (await call_asgi(app, "GET", "/status.json", host="mirror.lan:9180")).status == 200
    assert (await call_asgi(app, "GET", "/status.json", host="other.lan:9180")).status == 403


async def test_a_real_listener_refuses_a_rebound_name(tmp_path: Path) -> None:
    port = free_port()
    stop = asyncio.Event()
    app = create_admin_app(make_observer(tmp_path), HostPort(LOOPBACK, port))
    serving = asyncio.get_running_loop().create_task(
        serve_admin(app, HostPort(LOOPBACK, port), stop.wait)
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}") as client:
            for _ in range(200):  # until the listener is up (bounded)
                try:
                    answer = await client.get(
                        "/status.json", headers={"Host": f"evil.example:{port}"}
                    )
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the admin listener never answered")
        assert answer.status_code == 403
        assert answer.json()["errors"][0]["code"] == "DENIED"
        assert "cache" not in answer.text
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)


async def test_the_admin_port_is_held_from_the_check_on(tmp_path: Path) -> None:
    """The port was checked with a socket closed at once, and bound again by hypercorn later:
    the mirror's own listener on that port, bound but not yet listening at the check, took it
    in between, and the admin task crashed with a traceback. The checked socket is the one
    served: nothing else can bind the port meanwhile."""
    async with admin_serving(tmp_path) as port:
        await asyncio.sleep(0)  # serve_admin has run up to hypercorn's start
        with socket.socket() as late:
            late.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                late.bind((LOOPBACK, port))
                late.listen()


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"server.listen": "127.0.0.1:9180"}, True),
        ({"server.listen": "0.0.0.0:9180"}, True),
        ({"server.listen": "[::]:9180"}, True),
        ({"server.listen": "127.0.0.1:5000", "server.admin_listen": "0.0.0.0:5000"}, True),
        ({"server.listen": "127.0.0.1:80", "server.tls_listen": "127.0.0.1:9180"}, True),
        ({"server.listen": "127.0.0.2:9180"}, False),
        ({"server.listen": "127.0.0.1:5000"}, False),
    ],
)
def test_an_admin_listener_on_the_mirrors_own_port_is_refused_at_start(
    settings: dict[str, str], refused: bool
) -> None:
    """Whichever of the two bound first, the other failed later: a traceback from the
    admin task, or the mirror itself unable to listen."""
    if refused:
        with pytest.raises(ConfigError, match=r"server\.admin_listen: .*port too"):
            load_config(settings, environ={})
    else:
        load_config(settings, environ={})

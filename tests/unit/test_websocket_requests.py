"""A WebSocket upgrade is a request like any other at the edge: logged, admitted and counted.

The mirror serves no WebSocket (Quart answers an upgrade ``400``), but hypercorn hands one to
the app as a ``websocket`` scope, and every edge layer let such scopes by: an upgrade was not in
the access log, not checked against ``access.allow``, and took nothing from its client's
request bucket. Here the layers are stacked as ``docxy.http.server.run`` stacks them, around the
real app, and called with the scope hypercorn gives an upgrade.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from docxy.config import load_config
from docxy.edge.admission import Admission
from docxy.edge.framing import Framing
from docxy.http.app import create_app
from docxy.http.middleware import AccessLog, Guard
from docxy.http.state import mirror_state
from tests.unit.asgi import client_receive
from tests.unit.logs import AccessLines

GUARD = 10.0  # seconds before a would-be hang becomes a test failure
App = Any


def upgrade_scope(path: str, client: str, *, denial: bool = True) -> dict[str, Any]:
    """The scope hypercorn gives a WebSocket upgrade (``denial``: with the extension that lets
    the app answer it with an HTTP response, as hypercorn's has)."""
    return {
        "type": "websocket",
        "asgi": {"spec_version": "2.3", "version": "3.0"},
        "scheme": "ws",
        "http_version": "1.1",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"mirror.test"), (b"upgrade", b"websocket")],
        "client": (client, 40000),
        "server": ("127.0.0.1", 8080),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}} if denial else {},
    }


async def upgrade(app: App, path: str, client: str, *, denial: bool = True) -> list[Any]:
    """The messages the stack sent for an upgrade of ``path`` from ``client``."""
    sent: list[Any] = []
    connect, leave = {"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}
    receive = client_receive(connect, leave)  # the client says nothing more

    async def send(message: Any) -> None:
        sent.append(message)

    await asyncio.wait_for(app(upgrade_scope(path, client, denial=denial), receive, send), GUARD)
    return sent


def denial(sent: list[Any]) -> tuple[int, Any]:
    """The status and the parsed body of an upgrade's denial; nothing else was sent."""
    kinds = [message["type"] for message in sent]
    assert kinds[0] == "websocket.http.response.start", kinds
    assert set(kinds[1:]) == {"websocket.http.response.body"}, kinds
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return sent[0]["status"], json.loads(body)


@asynccontextmanager
async def edge(**settings: str) -> AsyncIterator[App]:
    """The app with the edge layers around it, in the order the server stacks them."""
    config = load_config(
        {"upstream.registry": "https://registry.test", "cache.enabled": "false", **settings},
        environ={},
    )
    upstream = httpx.MockTransport(lambda request: httpx.Response(200, json={}))
    app = create_app(config, probe=False, transport=upstream)
    admission = Admission(app, config, mirror_state(app).access)
    async with app.test_app():
        yield AccessLog(Framing(Guard(admission, None)))


async def test_an_upgrade_from_an_address_off_the_allow_list_is_denied_and_logged(
    access_log: AccessLines,
) -> None:
    async with edge(**{"access.allow": "192.0.2.0/24"}) as app:
        status, body = denial(await upgrade(app, "/v2/", "198.51.100.7"))
    assert status == 403 and body["errors"][0]["code"] == "DENIED"
    assert "198.51.100.7" in body["errors"][0]["message"]
    [line] = access_log()
    assert line.startswith("GET /v2/ 403 "), line
    assert line.endswith(" done"), line


async def test_an_upgrade_takes_from_its_clients_request_bucket() -> None:
    async with edge(**{"limits.requests_per_minute": "2"}) as app:
        for _ in range(2):
            assert denial(await upgrade(app, "/v2/", "192.0.2.1"))[0] == 400  # Quart's answer
        status, body = denial(await upgrade(app, "/v2/", "192.0.2.1"))
        assert status == 429 and body["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert denial(await upgrade(app, "/v2/", "192.0.2.2"))[0] == 400  # another client's


async def test_an_admitted_upgrade_is_answered_400_and_logged_as_its_get(
    access_log: AccessLines,
) -> None:
    async with edge() as app:
        sent = await upgrade(app, "/v2/library/redis/manifests/latest", "192.0.2.1")
    assert denial(sent)[0] == 400
    assert all(message["type"] != "websocket.accept" for message in sent)
    [line] = access_log()
    assert line.startswith("GET /v2/library/redis/manifests/latest 400 "), line


async def test_without_the_denial_extension_a_refused_upgrade_is_closed_and_logged_403(
    access_log: AccessLines,
) -> None:
    """A server that cannot send an HTTP answer to an upgrade gets a close before the
    handshake, which it answers 403 (hypercorn does): the access log says 403."""
    async with edge(**{"access.allow": "192.0.2.0/24"}) as app:
        sent = await upgrade(app, "/v2/", "198.51.100.7", denial=False)
    assert [message["type"] for message in sent] == ["websocket.close"]
    [line] = access_log()
    assert line.startswith("GET /v2/ 403 "), line

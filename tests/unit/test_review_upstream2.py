"""Review faults in the upstream client (docxy.upstream), each shown failing first.

(``test_review_upstream.py`` holds an earlier review's routing fault.) The servers here are
real loopback ones on 127.0.0.129, ports 8700-8799: httpx's timeouts only act on a network
stream, which a fake transport has none of.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from docxy.config import load_config
from docxy.core.errors import UpstreamTimeout, UpstreamUnavailable
from docxy.upstream.client import (
    Upstream,
    UpstreamClient,
    make_http_client,
    read_small,
    upstream_ssl_context,
)
from docxy.upstream.direct import DirectSettings, get
from docxy.upstream.tokens import MirrorTokens
from lab.ports import bound_socket

HOST = "127.0.0.129"
READ_TIMEOUT = 0.5

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def loopback_server(handler: Handler) -> AsyncIterator[str]:
    """An asyncio server on ``HOST`` at a free port (``lab.ports``); its base URL."""
    sock = bound_socket(HOST)
    port = sock.getsockname()[1]
    server = await asyncio.start_server(handler, sock=sock)
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await server.wait_closed()


async def request_line(reader: asyncio.StreamReader) -> str:
    """The request's first line; its headers read off (bounded by the reader's limit)."""
    first = (await reader.readline()).decode("latin-1")
    for _ in range(100):
        if (await reader.readline()) in (b"\r\n", b"\n", b""):
            break
    return first


def client_for(registry: str) -> UpstreamClient:
    config = dataclasses.replace(
        load_config({}, environ={}).upstream,
        registry=registry,
        connect_timeout=1.0,
        read_timeout=READ_TIMEOUT,
    )
    return UpstreamClient(make_http_client(config))


async def test_a_trickling_token_answer_does_not_hold_the_repository_for_ever() -> None:
    """The token service answers with a 100 kB ``Content-Length`` and then sends a byte every
    0.1 s, well inside the 0.5 s read timeout, which httpx applies to each read only. The
    mirror's token request for the repository read on for 10000 s, and it is a shared one
    (``Coalesced``): every later miss of that repository joined it, so the repository had no
    token, and no miss an answer, until the mirror restarted. The answer must come whole within
    the read timeout: a 504 (``UpstreamTimeout``) for this miss, and the next asks again."""
    realm_asked = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal realm_asked
        line = await request_line(reader)
        try:
            if line.startswith("GET /v2/ "):
                challenge = f'Bearer realm="{base}/token",service="lab"'
                writer.write(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n"
                    + f"WWW-Authenticate: {challenge}\r\n\r\n".encode()
                )
                await writer.drain()
                return
            realm_asked += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{")
            for _ in range(100):  # bounded: 10 s at most
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.write(b" ")
        except ConnectionError:
            pass
        finally:
            writer.close()

    async with loopback_server(handle) as base:
        client = client_for(base)
        tokens = MirrorTokens(client)
        upstream = Upstream(base)
        try:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                async with asyncio.timeout(4 * READ_TIMEOUT + 1):
                    await tokens.headers(upstream, "team/app")
            assert time.monotonic() - started < 2 * READ_TIMEOUT + 1
            assert realm_asked == 1
        finally:
            await client.http.aclose()


async def test_a_kept_connection_the_upstream_closed_as_it_was_reused_is_retried() -> None:
    """The upstream answers a manifest GET on a kept-alive connection, then closes that
    connection as the next GET arrives on it, unanswered (its idle timeout ran out just then:
    a race every server with a keep-alive timeout has). httpx raises ``RemoteProtocolError``
    and does not retry; the mirror answered the pull 502 and counted the upstream as
    unreachable, where the fills' direct GETs (``_get_once``) try once more on a new
    connection, as Docker's own client does. The second GET must get its 200, on a new
    connection, and the upstream's health must show no failure."""
    connections = 0
    answered: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            for _ in range(10):  # requests on this connection, bounded
                line = await request_line(reader)
                if not line:
                    return
                if len(answered) == 1 and connections == 1:
                    return  # closed with the request unanswered
                answered.append(line.split()[1])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async with loopback_server(handle) as base:
        client = client_for(base)
        upstream = Upstream(base)
        path = "/v2/team/app/manifests/1"
        try:
            for _ in range(2):
                answer = await client.send(upstream, "GET", upstream.url(path), [])
                assert await read_small(answer) == b"{}"  # read whole: its connection is kept
                assert answer.status_code == 200
            assert answered == [path, path]
            assert connections == 2
            assert client.health_of(upstream).failures == {}
        finally:
            await client.http.aclose()


def trickled_headers(seconds_apart: float) -> Handler:
    """A registry that sends its answer's status line and headers a byte at a time, each byte
    ``seconds_apart`` after the last (well inside the read timeout), 10 s at most."""
    head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 95 + b"\r\nContent-Length: 2\r\n\r\n{}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_line(reader)
        try:
            for at in range(min(len(head), int(10 / seconds_apart))):
                writer.write(head[at : at + 1])
                await writer.drain()
                await asyncio.sleep(seconds_apart)
            writer.write(head[int(10 / seconds_apart) :])
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handle


async def test_trickled_answer_headers_end_the_request() -> None:
    """Before a body there are the headers: a registry (or a token service) that sends them a
    byte every 0.1 s, each inside the 0.5 s read timeout, held ``UpstreamClient.send`` for as
    long as it liked, and a manifest's fetch or a token's is shared by every miss that wants
    it. The headers must come within the client's own timeouts added up (a free connection,
    the connect, the request's write, the answer's read: 3 s here)."""
    async with loopback_server(trickled_headers(0.1)) as base:
        client = client_for(base)
        upstream = Upstream(base)
        try:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                async with asyncio.timeout(6):
                    url = upstream.url("/v2/team/app/manifests/1")
                    answer = await client.send(upstream, "GET", url, [])
                    await answer.aclose()
            assert time.monotonic() - started < 4.5
            assert client.health_of(upstream).failures == {"timeout": 1}
        finally:
            await client.http.aclose()


async def test_trickled_answer_headers_end_a_direct_get() -> None:
    """The same for a fill's direct GET (``http.client``, whose socket timeout applies to each
    read): the fill, shared by every client of the blob, waited on the trickle. The headers
    must come within the connect and read timeouts added up (1.5 s here)."""
    async with loopback_server(trickled_headers(0.1)) as base:
        settings = DirectSettings(upstream_ssl_context(), 1.0, READ_TIMEOUT)
        url = f"{base}/v2/team/app/blobs/sha256:{'0' * 64}"
        started = time.monotonic()
        try:
            with pytest.raises(UpstreamTimeout):
                answer = await asyncio.wait_for(asyncio.to_thread(get, settings, url, []), 4)
                answer.close()
            assert time.monotonic() - started < 3
        finally:
            settings.idle.close()


@pytest.mark.parametrize(
    ("retry_after", "asked"),
    [
        ("120", 1),
        ("0", 3),
    ],
)
async def test_a_token_service_429_with_retry_after_is_not_asked_again_before_it(
    retry_after: str, asked: int
) -> None:
    """The upstream's token service answers the mirror 429 with ``Retry-After: 120``. The
    failure was not remembered, so each miss of any repository asked it again at once (the
    clients' own requests then went on, passed through): as many token requests as misses,
    to a service that asked for two minutes' rest. Until its ``Retry-After`` the mirror asks
    it for no new token (the miss fails as before, without the request); ``Retry-After: 0``
    asks again at once."""
    token_asks = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal token_asks
        if request.url.path == "/v2/":
            challenge = 'Bearer realm="https://auth.test/token",service="registry.test"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        token_asks += 1
        errors = {"errors": [{"code": "TOOMANYREQUESTS"}]}
        return httpx.Response(429, json=errors, headers={"Retry-After": retry_after})

    client = UpstreamClient(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    tokens = MirrorTokens(client)
    upstream = Upstream("https://registry.test")
    try:
        for repository in ("team/a", "team/b", "team/c"):
            with pytest.raises(UpstreamUnavailable):
                await tokens.headers(upstream, repository)
        assert token_asks == asked
    finally:
        await client.http.aclose()

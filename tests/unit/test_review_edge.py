"""Review of the network edge (docxy/edge, docxy/core/forwarded.py, docxy/core/cidr.py): each
test asserts the behaviour the README promises and is ``xfail(strict=True)`` until mended."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from docxy.config import load_config
from docxy.core.cidr import parse_address, parse_networks
from docxy.core.forwarded import client_address
from docxy.edge.admission import BANDWIDTH_GRACE, Admission
from tests.unit.test_admission import Clock

CHUNK = 1000  # bytes of a body chunk

PROXY = parse_address("127.0.0.1")
TRUSTED = parse_networks("127.0.0.1")


@pytest.mark.parametrize(
    "element",
    [
        # a proxy writing proto and host (the client's Host header, quoted) before for=
        'proto=https;host="mirror.example;for=198.51.100.7;";for=203.0.113.5',
        # for= first, but a quoted host with a ',' then ';' splits the element in two
        'for=203.0.113.5;host="mirror.example,for=198.51.100.7;"',
        # an escaped quote does not end the quoted-string
        'host="m\\";for=198.51.100.7;x=\\"";for=203.0.113.5',
    ],
)
def test_a_quoted_forwarded_value_cannot_name_the_client(element: str) -> None:
    """RFC 7239 parameters are tokens or quoted-strings; ``,`` and ``;`` inside a quoted one
    separate nothing. The proxy's element names 203.0.113.5 (the peer it received the request
    from); what the client wrote into its Host header, quoted by the proxy, is not a ``for=``."""
    assert PROXY is not None
    client = client_address(PROXY, [("forwarded", element)], TRUSTED, "forwarded")
    assert str(client) == "203.0.113.5"


@pytest.mark.parametrize(
    "forwarded",
    [
        'for=192.0.2.9, host="m.example;for=198.51.100.7',  # a quoted-string that never ends
        "for=192.0.2.9, for=198.51.100.7;for=192.0.2.10",  # for= twice in one element
        "for=192.0.2.9, for=198.51.100.7;host",  # a pair without a value
        'for=192.0.2.9, for=198.51.100.7;host="a"b',  # text after a quoted-string
    ],
)
def test_a_malformed_forwarded_element_names_no_client(forwarded: str) -> None:
    """An element that is not all ``name=value`` pairs, or names ``for`` twice, is no address:
    the walk stops at it and the last trusted hop is the client (the proxy), never a ``for=``
    picked out of the element (before: the first ``for=`` matched, 198.51.100.7)."""
    assert PROXY is not None
    client = client_address(PROXY, [("forwarded", forwarded)], TRUSTED, "forwarded")
    assert str(client) == "127.0.0.1"


@pytest.mark.parametrize(
    ("client_wrote", "client"),
    [
        ('for="x', "203.0.113.9"),  # an open quote before the proxy's element
        ('for="x, for=198.51.100.7', "203.0.113.9"),
        ('for=192.0.2.1;host="a', "203.0.113.9"),
        ('for="x, y", for="z', "203.0.113.9"),
    ],
)
def test_a_clients_open_quote_does_not_swallow_the_proxys_own_element(
    client_wrote: str, client: str
) -> None:
    """A proxy that appends its element to the client's header line (nginx's
    ``proxy_set_header Forwarded "$http_forwarded, for=$remote_addr"``): a client's quoted-string
    left open made the whole line one unreadable entry, and the walk took the trusted proxy
    itself for the client (10.0.0.2, inside an ``access.allow`` of 10.0.0.0/8): its own element,
    the tail that cuts cleanly, names the client."""
    proxy = parse_address("10.0.0.2")
    assert proxy is not None
    line = f"{client_wrote}, for=203.0.113.9"
    trusted = parse_networks("10.0.0.2")
    found = client_address(proxy, [("forwarded", line)], trusted, "forwarded")
    assert str(found) == client


def test_well_formed_forwarded_elements_still_name_the_client() -> None:
    """What proxies write: quoted IPv6 with a port, spaces after ``;`` and ``,``, ``For`` in
    any case, empty pairs, an unquoted address with a port: the rightmost untrusted one."""
    assert PROXY is not None
    lines = [
        'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711"',
        "proto=https; for=198.51.100.7:8080;;host=m.example",
    ]
    client = client_address(PROXY, [("forwarded", line) for line in lines], TRUSTED, "forwarded")
    assert str(client) == "198.51.100.7"
    client = client_address(PROXY, [("forwarded", lines[0])], TRUSTED, "forwarded")
    assert str(client) == "2001:db8:cafe::17"


async def _reading_blob(scope: Any, receive: Any, send: Any) -> None:
    """A blob GET as the routes answer it: the head, then each chunk once read from the disk
    (``BlobReader.read`` awaits a worker thread: other requests run meanwhile)."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(3):
        await asyncio.sleep(0)  # the pread in a worker thread
        await send({"type": "http.response.body", "body": b"x" * CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _download(gate: Admission, client: str, got: list[int]) -> None:
    """A GET of a blob through ``gate``; the body bytes of a ``200`` are added to ``got``."""
    path = "/v2/library/redis/blobs/sha256:" + "a" * 64
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "client": (client, 40000),
        "docxy": {},
    }
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif status == [200]:
            got.append(len(message.get("body", b"")))

    await gate(scope, receive, send)  # type: ignore[arg-type]


async def test_downloads_started_at_once_stay_within_the_bandwidth_grace() -> None:
    """``limits.bandwidth`` with 40 downloads opened at once by one client (it may hold
    ``connections_per_client``, 128, by default). The README: "a client more than ten seconds
    of bandwidth in debt (many downloads at once) gets 429 for new requests". Every one of
    them passes admission with no debt yet, and each sends its first chunk before it is
    charged or paced: with the clock standing, the client gets 40 s of its bandwidth at once
    (a cached blob's first chunk is 256 KiB to 4 MiB: some 16 to 32 MiB at line rate per
    burst, whatever the limit says). At most the bucket, the grace and one chunk may go out
    unpaid."""
    gate = Admission(
        _reading_blob, load_config({"limits.bandwidth": "1K"}, environ={}), None, Clock()
    )
    rate = gate.config.limits.bandwidth
    got: list[int] = []
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(_download(gate, "192.0.2.1", got)) for _ in range(40)]
    try:
        for _ in range(20):  # every download is now sending or waiting out its pacing
            await asyncio.sleep(0.01)
        allowed = rate * (1 + BANDWIDTH_GRACE) + CHUNK
        assert sum(got) <= allowed, f"{sum(got)} bytes out at once, rate {rate}/s"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""Review: are HTTP/2 streams each counted against the per-client limits, as HTTP/1.1 requests
are? A real mirror (``python -m docxy serve``: ``docxy.http.server.run``'s stack, hypercorn's
settings from ``hypercorn_config``, h2c allowed) on this review's loopback addresses and
ports, a loopback upstream, and a real HTTP/2 client (``httpx`` with ``http2=True``, HTTP/2 by
prior knowledge on one connection) from addresses of its own, one per client, so each has its
own buckets: the plain listener's h2c, and HTTP/2 over the TLS listener (which offers only
``http/1.1`` by ALPN, but takes the HTTP/2 preface of a client that knows, as the plain one
does)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h2.connection
import h2.events
import httpx
import pytest
from h2.errors import ErrorCodes

from docxy.config import load_config
from docxy.http.server import hypercorn_config
from lab.mirror import mirror_env
from lab.processes import stop_process

MIRROR_HOST = "127.0.47.1"
UPSTREAM_HOST = "127.0.47.2"
H1_CLIENT = "127.0.47.3"  # HTTP/1.1, the yardstick
H2C_CLIENT = "127.0.47.4"  # HTTP/2 on the plain listener
H2_TLS_CLIENT = "127.0.47.5"  # HTTP/2 on the TLS listener
#: ``Upgrade: h2c``, on the plain-only mirror (which H2_TLS_CLIENT never asks)
UPGRADER = H2_TLS_CLIENT
MANIFEST_CLIENT = "127.0.47.6"  # HTTP/2, manifest GETs
SPAMMER = "127.0.47.7"  # HTTP/2, many refused streams
FILLER = "127.0.47.8"  # HTTP/1.1, a pass-through download after the spammer's refusals
SEQUENTIAL = "127.0.47.9"  # HTTP/2, one stream after another
PORTS = range(10500, 10550)

#: requests_per_minute: one place back every 7.5 s, far more than a phase here takes (the
#: test allows for refills all the same, by the time it measures)
RATE = 8
MANIFESTS = 3
H2_STREAMS = 32  # more than RATE + 10: the N + 10 streams all run at once
GUARD = 20.0
BLOB = b"docxy h2 limits blob\n" * 100
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class _Upstream(BaseHTTPRequestHandler):
    """A registry without auth: ``/v2/`` 200, the one blob, every manifest unknown."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        if self.path.endswith(f"/blobs/{BLOB_DIGEST}"):
            status, kind, body = 200, "application/octet-stream", BLOB
        elif "/manifests/" in self.path or "/blobs/" in self.path:
            error = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}
            status, kind, body = 404, "application/json", json.dumps(error).encode()
        else:
            status, kind, body = 200, "application/json", b"{}"
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        if status == 200 and "/blobs/" in self.path:
            self.send_header("docker-content-digest", BLOB_DIGEST)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@dataclass
class Served:
    plain: int  # the plain-only mirror's listener (h2c)
    tls: int  # the other mirror's TLS listener (its plain one redirects to it)
    logs: list[Path]

    def log_text(self) -> str:
        return "\n".join(log.read_text(errors="replace")[-3000:] for log in self.logs)


_given: set[int] = set()


def _port(host: str) -> int:
    """A port of the range not handed out yet (a child process binds it later)."""
    for port in PORTS:
        if port in _given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port in {PORTS} on {host}")


LIMITS = (
    f"limits.requests_per_minute={RATE}",
    f"limits.manifests_per_minute={MANIFESTS}",
    f"limits.h2_max_streams={H2_STREAMS}",
    "limits.fills_total=1",
)


def _start(
    tmp: Path, upstream: int, plain: int, tls: int | None, settings: tuple[str, ...] = LIMITS
) -> subprocess.Popen[bytes]:
    """``python -m docxy serve`` with ``settings``, TLS on ``tls`` if any."""
    command = [
        sys.executable,
        *("-m", "docxy", "serve", "--listen", f"{MIRROR_HOST}:{plain}"),
        *("--upstream", f"http://{UPSTREAM_HOST}:{upstream}", "--no-cache"),
    ]
    for setting in settings:
        command += ["--set", setting]
    if tls is not None:
        command += ["--tls-listen", f"{MIRROR_HOST}:{tls}"]
        command += ["--public-url", f"https://{MIRROR_HOST}:{tls}"]
    else:
        command += ["--public-url", f"http://{MIRROR_HOST}:{plain}"]
    tmp.mkdir()
    with (tmp / "mirror.log").open("wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=mirror_env(tmp, None)
        )


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + GUARD
    while True:  # bounded: GUARD seconds
        try:
            if httpx.get(url + "/health", timeout=1, verify=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the mirror did not start:\n" + log.read_text())
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Two mirrors, h2c allowed, the limits under review: one plain only, one with TLS too;
    their upstream."""
    tmp = tmp_path_factory.mktemp("h2limits")
    upstream = ThreadingHTTPServer((UPSTREAM_HOST, _port(UPSTREAM_HOST)), _Upstream)
    thread = threading.Thread(target=upstream.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        plain, other, tls = _port(MIRROR_HOST), _port(MIRROR_HOST), _port(MIRROR_HOST)
        procs.append(_start(tmp / "plain", upstream.server_port, plain, None))
        procs.append(_start(tmp / "tls", upstream.server_port, other, tls))
        logs = [tmp / "plain" / "mirror.log", tmp / "tls" / "mirror.log"]
        _wait(f"http://{MIRROR_HOST}:{plain}", procs[0], logs[0])
        _wait(f"https://{MIRROR_HOST}:{tls}", procs[1], logs[1])
        yield Served(plain, tls, logs)
    finally:
        for proc in procs:
            stop_process(proc, grace=15)
        upstream.shutdown()
        upstream.server_close()
        thread.join(GUARD)


def client(source: str, *, h2: bool) -> httpx.AsyncClient:
    """A client from ``source``: HTTP/2 only (prior knowledge, on http:// and https:// alike),
    or HTTP/1.1 only; the bootstrap certificate taken as it is."""
    transport = httpx.AsyncHTTPTransport(
        local_address=source, http1=not h2, http2=h2, verify=False, retries=0
    )
    return httpx.AsyncClient(transport=transport, timeout=GUARD)


@dataclass
class Outcome:
    statuses: list[int]
    retry_after: list[str | None]
    versions: set[str]
    connections: set[int]
    bodies: list[bytes]
    elapsed: float

    def count(self, status: int) -> int:
        return self.statuses.count(status)


async def burst(
    base: str, source: str, path: str, count: int, *, h2: bool, concurrent: bool = True
) -> Outcome:
    """``count`` GETs of ``path`` from ``source``: at once (HTTP/2: streams of one connection;
    HTTP/1.1: one after another on one connection) or one after another."""
    started = time.monotonic()
    async with client(source, h2=h2) as c:
        if concurrent and h2:
            responses = await asyncio.gather(*(c.get(base + path) for _ in range(count)))
        else:
            responses = [await c.get(base + path) for _ in range(count)]
    return Outcome(
        [r.status_code for r in responses],
        [r.headers.get("retry-after") for r in responses if r.status_code == 429],
        {r.http_version for r in responses},
        {id(r.extensions.get("network_stream")) for r in responses},
        [r.content for r in responses if r.status_code == 429],
        time.monotonic() - started,
    )


def refills(outcome: Outcome, per_minute: int) -> int:
    """Places a bucket of ``per_minute`` may have got back while ``outcome`` ran."""
    return int(outcome.elapsed * per_minute / 60)


def assert_limited(outcome: Outcome, per_minute: int, extra: int) -> None:
    """``per_minute`` + ``extra`` requests: ``per_minute`` served (and any refills), the rest
    ``429`` with a ``Retry-After`` of whole seconds, 1 to the time one place takes."""
    served = len(outcome.statuses) - outcome.count(429)
    assert per_minute <= served <= per_minute + refills(outcome, per_minute), outcome
    assert outcome.count(429) >= extra - refills(outcome, per_minute), outcome
    for value in outcome.retry_after:
        assert value is not None and value.isdigit(), outcome.retry_after
        assert 1 <= int(value) <= 60 // per_minute + 1, outcome.retry_after


async def test_http2_streams_are_each_counted_against_requests_per_minute(
    served: Served,
) -> None:
    """``limits.requests_per_minute`` N: N + 10 requests over HTTP/1.1, and N + 10 streams at
    once on one h2c connection, and on one HTTP/2 connection over TLS, from three clients:
    each is served N and refused the 10 others, ``429 TOOMANYREQUESTS`` with the same
    ``Retry-After`` and body."""
    plain = f"http://{MIRROR_HOST}:{served.plain}"
    tls = f"https://{MIRROR_HOST}:{served.tls}"
    h1 = await burst(plain, H1_CLIENT, "/v2/", RATE + 10, h2=False)
    h2c = await burst(plain, H2C_CLIENT, "/v2/", RATE + 10, h2=True)
    h2 = await burst(tls, H2_TLS_CLIENT, "/v2/", RATE + 10, h2=True)
    assert h1.versions == {"HTTP/1.1"}
    assert h2c.versions == {"HTTP/2"} and len(h2c.connections) == 1, h2c
    assert h2.versions == {"HTTP/2"} and len(h2.connections) == 1, h2
    for outcome in (h1, h2c, h2):
        assert_limited(outcome, RATE, 10)
    assert {*h1.bodies, *h2c.bodies, *h2.bodies} == {h1.bodies[0]}
    assert b"TOOMANYREQUESTS" in h1.bodies[0]


async def test_sequential_streams_on_one_connection_are_counted(served: Served) -> None:
    """N + 10 streams one after another on one h2c connection: N served, 10 refused."""
    plain = f"http://{MIRROR_HOST}:{served.plain}"
    outcome = await burst(plain, SEQUENTIAL, "/v2/", RATE + 10, h2=True, concurrent=False)
    assert outcome.versions == {"HTTP/2"} and len(outcome.connections) == 1, outcome
    assert_limited(outcome, RATE, 10)


async def test_http2_manifest_gets_are_counted_against_manifests_per_minute(
    served: Served,
) -> None:
    """``limits.manifests_per_minute`` M: M + 5 manifest GETs at once on one h2c connection:
    M answered (the upstream's 404), 5 refused ``429`` ("too many manifest fetches"), which
    spend none of ``requests_per_minute``: the client's other requests are still served."""
    plain = f"http://{MIRROR_HOST}:{served.plain}"
    path = "/v2/library/img/manifests/latest"
    outcome = await burst(plain, MANIFEST_CLIENT, path, MANIFESTS + 5, h2=True)
    assert outcome.versions == {"HTTP/2"} and len(outcome.connections) == 1, outcome
    assert_limited(outcome, MANIFESTS, 5)
    assert all(b"too many manifest fetches" in body for body in outcome.bodies), outcome.bodies
    rest = await burst(plain, MANIFEST_CLIENT, "/v2/", RATE - MANIFESTS, h2=True)
    assert rest.count(429) == 0, rest  # the refused manifests' places were given back


async def test_refused_streams_leak_no_stream_place_nor_fill(served: Served) -> None:
    """Four times ``limits.h2_max_streams`` pass-through downloads at once on one connection:
    all but N refused by ``requests_per_minute``, and of the N, those that found the one
    permit of ``limits.fills_total`` taken refused by that. Every stream is answered (a
    refused stream that kept its place would leave the connection refusing streams,
    ``REFUSED_STREAM``, once 32 had been), the connection takes a second round, and a
    pass-through download from another client is served after (no permit left held)."""
    plain = f"http://{MIRROR_HOST}:{served.plain}"
    path = f"/v2/library/img/blobs/{BLOB_DIGEST}"  # a pass-through: each served one a fill
    async with client(SPAMMER, h2=True) as c:
        started = time.monotonic()
        first = await asyncio.gather(*(c.get(plain + path) for _ in range(4 * H2_STREAMS)))
        elapsed = time.monotonic() - started
        # the same connection still takes streams: a second round, all refused now
        again = await asyncio.gather(*(c.get(plain + path) for _ in range(2 * H2_STREAMS)))
    statuses = [r.status_code for r in first]
    assert len({id(r.extensions.get("network_stream")) for r in first + again}) == 1
    assert set(statuses) <= {200, 429} and 200 in statuses, statuses
    by_rate = [r for r in first if r.status_code == 429 and b"too many requests" in r.content]
    assert len(by_rate) >= 4 * H2_STREAMS - RATE - int(elapsed * RATE / 60), statuses
    assert {r.status_code for r in again} == {429}
    async with client(FILLER, h2=False) as c:
        blob = await c.get(plain + path)
    assert blob.status_code == 200, (blob.status_code, blob.text, served.log_text())
    assert blob.content == BLOB


async def test_the_mirror_bounds_streams_a_connection(served: Served) -> None:
    """The mirror's SETTINGS name ``limits.h2_max_streams`` as the streams one connection may
    have open at once, on both listeners."""
    for base, source in (
        (f"http://{MIRROR_HOST}:{served.plain}", H2C_CLIENT),
        (f"https://{MIRROR_HOST}:{served.tls}", H2_TLS_CLIENT),
    ):
        reader, writer = await asyncio.open_connection(
            MIRROR_HOST,
            int(base.rsplit(":", 1)[1]),
            local_addr=(source, 0),
            ssl=_no_verify() if base.startswith("https") else None,
        )
        try:
            conn = h2.connection.H2Connection()
            conn.initiate_connection()
            writer.write(conn.data_to_send())
            await writer.drain()
            data = await asyncio.wait_for(reader.read(65536), GUARD)
            conn.receive_data(data)
            assert conn.remote_settings.max_concurrent_streams == H2_STREAMS
        finally:
            await closed(writer)


async def closed(writer: asyncio.StreamWriter) -> None:
    """Close a test connection and wait until it is: a transport left to the loop's end (a
    TLS one's shutdown above all) was reported unclosed at another test's teardown."""
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), GUARD)


def _no_verify() -> ssl.SSLContext:
    """The mirror's bootstrap certificate taken as it is."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.mark.parametrize(("setting", "streams"), [("0", 1), ("1", 1), ("7", 7), ("1000", 1000)])
def test_hypercorn_is_told_the_setting(setting: str, streams: int) -> None:
    """hypercorn's ``h2_max_concurrent_streams`` (its default: 100) is ``limits.h2_max_streams``
    (1 when h2c is refused, which no stream then reaches), never more than 1000."""
    config = load_config({"limits.h2_max_streams": setting}, environ={})
    assert hypercorn_config(config, None).h2_max_concurrent_streams == streams
    with pytest.raises(Exception, match="h2_max_streams"):
        load_config({"limits.h2_max_streams": "1001"}, environ={})


async def upgraded_status(port: int, source: str) -> tuple[int, dict[bytes, bytes]]:
    """One request by ``Upgrade: h2c`` on a connection of its own: its answer, on stream 1."""
    conn = h2.connection.H2Connection()
    settings = conn.initiate_upgrade_connection()
    assert settings is not None
    reader, writer = await asyncio.open_connection(MIRROR_HOST, port, local_addr=(source, 0))
    try:
        writer.write(
            b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
        assert head.startswith(b"HTTP/1.1 101"), head
        writer.write(conn.data_to_send())
        await writer.drain()
        for _ in range(100):  # bounded: reads until stream 1's answer
            data = await asyncio.wait_for(reader.read(65536), GUARD)
            assert data, "closed before an answer"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 1:
                    headers = dict(event.headers or [])
                    return int(headers[b":status"]), headers
            writer.write(conn.data_to_send())
        raise AssertionError("no answer on stream 1")
    finally:
        await closed(writer)


async def test_a_request_upgraded_to_h2c_is_counted(served: Served) -> None:
    """``Upgrade: h2c``, its request answered on stream 1, a connection each: counted as any."""
    answers = [await upgraded_status(served.plain, UPGRADER) for _ in range(RATE + 3)]
    statuses = [status for status, _ in answers]
    assert statuses.count(429) == 3 and statuses[:RATE] == [200] * RATE, statuses
    assert all(headers[b"retry-after"].isdigit() for status, headers in answers if status == 429)


async def test_http2_is_refused_on_both_listeners_by_default(tmp_path: Path) -> None:
    """``limits.h2_max_streams`` 0 (the default): HTTP/2 by prior knowledge is told
    ``GOAWAY HTTP_1_1_REQUIRED`` on the plain listener and on the TLS one alike; a client
    offering ``h2`` and ``http/1.1`` by ALPN is given ``http/1.1``."""
    plain, tls = _port(MIRROR_HOST), _port(MIRROR_HOST)
    # no upstream listens: nothing here reaches one (a closed loopback port of the range)
    proc = _start(tmp_path / "mirror", _port(UPSTREAM_HOST), plain, tls, settings=())
    try:
        _wait(f"https://{MIRROR_HOST}:{tls}", proc, tmp_path / "mirror" / "mirror.log")
        for port, context in ((plain, None), (tls, _no_verify())):
            reader, writer = await asyncio.open_connection(
                MIRROR_HOST, port, local_addr=(H1_CLIENT, 0), ssl=context
            )
            try:
                conn = h2.connection.H2Connection()
                conn.initiate_connection()
                writer.write(conn.data_to_send())
                await writer.drain()
                events = conn.receive_data(await asyncio.wait_for(reader.read(65536), GUARD))
                ends = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
                assert [e.error_code for e in ends] == [ErrorCodes.HTTP_1_1_REQUIRED], events
            finally:
                await closed(writer)
        transport = httpx.AsyncHTTPTransport(local_address=H1_CLIENT, http2=True, verify=False)
        async with httpx.AsyncClient(transport=transport, timeout=GUARD) as c:
            response = await c.get(f"https://{MIRROR_HOST}:{tls}/health")
        assert response.http_version == "HTTP/1.1"
    finally:
        stop_process(proc, grace=15)


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_says_the_setting_covers_http2_on_the_tls_listener() -> None:
    """The TLS listener offers only ``http/1.1`` by ALPN, but takes the HTTP/2 preface of a
    client that sends it anyway (:func:`test_http2_streams_are_each_counted_against_requests_
    per_minute` is served so; refused by default): the settings table's row and the threat
    model say so, not "plain HTTP" alone."""
    text = README.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `limits.h2_max_streams`"))
    assert "TLS listener" in row, row
    model = text[text.index("- **HTTP/2 over plain TCP (h2c)**") :][:1500]
    assert "prior knowledge" in model, model[:400]

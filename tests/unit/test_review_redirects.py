"""Review faults where the mirror follows an upstream's redirects (docxy.upstream.client's
``send``, docxy.upstream.direct's ``get``), each shown failing first.

Every server here listens on 127.0.0.150-153, ports 8800-8849; a "public" upstream is a name
whose connections the test resolves to one of them, while the redirect rule is told it is a
public address (which is never contacted)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from docxy.config import load_config
from docxy.core.errors import UpstreamTimeout, UpstreamUnavailable
from docxy.http.app import create_app
from docxy.upstream import direct, redirects
from docxy.upstream.client import Upstream, UpstreamClient, read_small, upstream_ssl_context
from docxy.upstream.direct import BadRedirect, DirectSettings, open_get
from lab.bed.httpserver import QuietHandler, RequestLog
from lab.certs import issue
from tests.unit.asgi import call_asgi

A, B, C = "127.0.0.150", "127.0.0.151", "127.0.0.152"
BLOB = "/v2/r/blobs/sha256:" + "1" * 64
PUBLIC_NAME = "registry.example"  # connected at A; the rule is told it is a public address


class Redirecting(QuietHandler):
    """``/moved*`` answers 307 to the server's ``location``; anything else 200 ``blob``."""

    def do_GET(self) -> None:  # noqa: N802 - http.server names it
        owner: Bed = self.server.owner  # type: ignore[attr-defined]
        owner.seen.append(self.path)
        if self.path.startswith("/v2/"):
            self.send_bytes(307, b"", "text/plain", {"Location": owner.location})
        else:
            self.send_bytes(200, b"blob", "application/octet-stream")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Bed:
    """A ``Redirecting`` server on ``host:port`` (TLS with ``context``)."""

    def __init__(
        self, host: str, port: int, location: str = "", context: ssl.SSLContext | None = None
    ) -> None:
        self.seen: RequestLog[str] = RequestLog()
        self.location = location
        self.server = _Server((host, port), Redirecting)
        self.server.owner = self  # type: ignore[attr-defined]
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://{host}:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@contextlib.contextmanager
def beds(*made: Callable[[], Bed]) -> Iterator[list[Bed]]:
    started: list[Bed] = []
    try:
        for make in made:
            started.append(make())
        yield started
    finally:
        for bed in started:
            bed.stop()


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for a certificate naming 127.0.0.150."""
    pair = issue("docxy redirects", ca=True, names=[x509.IPAddress(IPv4Address(A))]).write(
        tmp_path / "cert.pem", tmp_path / "key.pem"
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pair.cert, pair.key)
    return server, pair.context()


def _client(context: ssl.SSLContext | None = None, read: float = 5.0) -> UpstreamClient:
    http = httpx.AsyncClient(
        verify=context or upstream_ssl_context(),
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(5.0, read=read),
    )
    settings = DirectSettings(context or upstream_ssl_context(), 5.0, read)
    return UpstreamClient(http, settings)


async def _close(client: UpstreamClient) -> None:
    await client.http.aclose()
    assert client.direct is not None
    client.direct.idle.close()


# --- 1: an HTTPS upstream's redirect to plain HTTP ------------------------------------------


@pytest.fixture
def public_beds(monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.150 and 127.0.0.151 count as public addresses for the redirect rule: a public
    HTTPS upstream and a public plain-HTTP host (between two non-public ones a downgrade is a
    LAN's own choice, and followed: tests/unit/test_review_lanredirect.py)."""
    real = redirects.non_public_address
    public = {IPv4Address(A), IPv4Address(B)}
    monkeypatch.setattr(redirects, "non_public_address", lambda a: a not in public and real(a))


@pytest.mark.usefixtures("public_beds")
async def test_an_https_upstreams_redirect_to_plain_http_is_refused_on_httpx_path(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """A manifest by tag (httpx's path) from an HTTPS upstream redirected to ``http://``: the
    mirror followed, and the manifest came in clear text, unverified. It is a bad redirect."""
    server_context, client_context = tls
    with beds(lambda: Bed(B, 8801), lambda: Bed(A, 8800, context=server_context)) as (plain, reg):
        reg.location = f"{plain.url}/manifest"
        client = _client(client_context)
        upstream = Upstream(reg.url)
        try:
            with pytest.raises(UpstreamUnavailable, match="from HTTPS to plain HTTP"):
                answer = await client.send(upstream, "GET", reg.url + "/v2/r/manifests/t", [])
                await answer.aclose()
        finally:
            await _close(client)
        assert plain.seen.snapshot() == []


@pytest.mark.usefixtures("public_beds")
async def test_an_https_upstreams_redirect_to_plain_http_is_refused_on_the_direct_path(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """The same for a fill's direct GET of a blob: a BadRedirect (502), nothing asked there."""
    server_context, client_context = tls
    with beds(lambda: Bed(B, 8803), lambda: Bed(A, 8802, context=server_context)) as (plain, reg):
        reg.location = f"{plain.url}/blob"
        client = _client(client_context)
        try:
            with pytest.raises(BadRedirect, match="from HTTPS to plain HTTP"):
                answer = await open_get(client, Upstream(reg.url), reg.url + BLOB, [])
                answer.close()
        finally:
            await _close(client)
        assert plain.seen.snapshot() == []
        assert client.health_of(Upstream(reg.url)).reachable  # it answered


async def test_a_plain_http_upstream_may_redirect_to_plain_http() -> None:
    """A plain-HTTP upstream (the bed, a LAN registry) still redirects to plain HTTP, on both
    paths, to another loopback address too."""
    with beds(lambda: Bed(B, 8805), lambda: Bed(A, 8804)) as (storage, reg):
        reg.location = f"{storage.url}/blob"
        client = _client()
        upstream = Upstream(reg.url)
        try:
            answer = await client.send(upstream, "GET", reg.url + BLOB, [])
            assert answer.status_code == 200 and await read_small(answer) == b"blob"
            got = await open_get(client, upstream, reg.url + BLOB, [])
            assert got.status == 200 and got.body.read(10) == b"blob"
            got.close()
        finally:
            await _close(client)
        assert storage.seen.snapshot() == ["/blob", "/blob"]


# --- 2: a public upstream's redirect to a non-public address ---------------------------------


@pytest.fixture
def public_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """``registry.example`` connects to 127.0.0.150 (both paths' lookups), while the redirect
    rule's lookup of the upstream's host says it is 8.8.8.8 (never contacted). Any other name
    is refused: no DNS is asked."""
    real = socket.getaddrinfo

    def connect_lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name == PUBLIC_NAME:
            return real(A, port, *args, **kwargs)
        if redirects.literal_address(str(name)) is None:
            raise socket.gaierror(socket.EAI_NONAME, "no DNS in tests")
        return real(host, port, *args, **kwargs)

    def rule_lookup(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == PUBLIC_NAME:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 0))]
        raise socket.gaierror(socket.EAI_NONAME, "no DNS in tests")

    monkeypatch.setattr(socket, "getaddrinfo", connect_lookup)
    monkeypatch.setattr(direct, "RESOLVE", connect_lookup)
    monkeypatch.setattr(redirects, "RESOLVE", rule_lookup, raising=False)


@pytest.mark.usefixtures("public_name")
async def test_a_public_upstreams_redirect_to_loopback_is_refused_on_httpx_path() -> None:
    """A public upstream answering 307 to ``http://127.0.0.151:8807/``: the mirror asked there
    (an admin port, a metadata service) and relayed a manifest's answer. Not followed."""
    with beds(lambda: Bed(B, 8807), lambda: Bed(A, 8806)) as (inside, _reg):
        _reg.location = f"{inside.url}/admin"
        client = _client()
        registry = f"http://{PUBLIC_NAME}:8806"
        try:
            with pytest.raises(UpstreamUnavailable, match=r"non-public address \(127.0.0.151\)"):
                answer = await client.send(
                    Upstream(registry), "GET", registry + "/v2/r/manifests/t", []
                )
                await answer.aclose()
        finally:
            await _close(client)
        assert inside.seen.snapshot() == []
        assert _reg.seen.snapshot() == ["/v2/r/manifests/t"]  # the upstream itself was asked


@pytest.mark.usefixtures("public_name")
async def test_a_public_upstreams_redirect_to_loopback_is_refused_on_the_direct_path() -> None:
    with beds(lambda: Bed(B, 8809), lambda: Bed(A, 8808)) as (inside, _reg):
        _reg.location = "http://0x7f000097:8809/admin"  # 127.0.0.151, as the resolver reads it
        client = _client()
        registry = f"http://{PUBLIC_NAME}:8808"
        try:
            with pytest.raises(BadRedirect, match="non-public address"):
                answer = await open_get(client, Upstream(registry), registry + BLOB, [])
                answer.close()
        finally:
            await _close(client)
        assert inside.seen.snapshot() == []
        assert _reg.seen.snapshot() == [BLOB]


@pytest.mark.parametrize(
    ("location", "said"),
    [
        ("http://cdn.test/m", "from HTTPS to plain HTTP (cdn.test)"),
        ("https://169.254.169.254/latest/meta-data/", "non-public address (169.254.169.254)"),
    ],
)
async def test_a_manifest_redirected_where_it_may_not_go_is_a_502_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str, said: str
) -> None:
    """Through the routes, a pull of a tag from a public HTTPS upstream (a fake transport:
    nothing is contacted) that redirects the manifest: the client gets the registry's JSON
    error, 502, saying why, and the place it was sent to is never asked."""
    asked: list[str] = []

    def registry(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if request.url.path == "/v2/":
            return httpx.Response(200)
        if request.url.host == "registry.test":
            return httpx.Response(307, headers={"Location": location})
        return httpx.Response(404, stream=httpx.ByteStream(b"relayed"))  # had it been asked

    def lookup(host: str, *args: Any) -> list[tuple[Any, ...]]:
        assert host == "registry.test"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 0))]

    monkeypatch.setattr(redirects, "RESOLVE", lookup)
    config = load_config(
        {"upstream.registry": "https://registry.test", "cache.dir": str(tmp_path / "cache")},
        environ={},
    )
    app = create_app(config, probe=False, transport=httpx.MockTransport(registry))
    async with app.test_app():
        got = await call_asgi(app, "GET", "/v2/team/app/manifests/latest", host="mirror.test")
    assert got.status == 502
    error = json.loads(got.body)["errors"][0]
    assert error["code"] == "UNAVAILABLE" and said in error["message"]
    assert all(url.startswith("https://registry.test/") for url in asked), asked


# --- the rule itself (docxy.upstream.redirects): nothing here is contacted -------------------

PUBLIC = "https://8.8.8.8"  # a public upstream, by literal address


@pytest.mark.parametrize(
    "target",
    [
        "https://169.254.169.254/latest/meta-data/",  # link-local: a cloud's metadata service
        "https://127.0.0.1:9100/metrics",
        "https://127.1/",  # 127.0.0.1, as the resolver reads it
        "https://2130706433/",  # likewise
        "https://0x7f.1/",  # likewise
        "https://10.0.0.5/",
        "https://172.16.0.1/",
        "https://192.168.1.1/",
        "https://100.64.0.1/",  # shared address space (CGNAT)
        "https://0.0.0.0/",
        "https://[::1]/",
        "https://[::]/",
        "https://[fe80::1]/",
        "https://[fd00::1]/",
        "https://[::ffff:127.0.0.1]/",  # IPv4-mapped
        "https://localhost:8080/",
        "https://LOCALHOST./",
        "https://admin.localhost/",
    ],
)
def test_a_public_upstream_may_not_redirect_to_a_non_public_address(target: str) -> None:
    said = redirects.hop_refusal(target, over_https=True, registry=PUBLIC)
    assert said is not None and "non-public address" in said and "ca_origins" in said


@pytest.mark.parametrize(
    "target", ["https://8.8.4.4/blob", "https://cdn.example/blob", "https://[2606:4700::1]/x"]
)
def test_a_public_upstream_may_redirect_to_a_public_host(target: str) -> None:
    assert redirects.hop_refusal(target, over_https=True, registry=PUBLIC) is None


@pytest.mark.parametrize(
    "registry",
    ["http://127.0.0.1:5000", "https://10.1.2.3", "http://[fd00::5]:5000", "http://localhost:5000"],
)
def test_a_non_public_upstream_may_redirect_to_non_public_addresses(registry: str) -> None:
    for target in ("http://10.0.0.5:9000/b", "http://127.0.0.1:9000/b", "http://[::1]:9/b"):
        over_https = registry.startswith("https")
        target = target.replace("http:", "https:") if over_https else target
        assert redirects.hop_refusal(target, over_https=over_https, registry=registry) is None


def test_an_origin_in_ca_origins_may_be_non_public() -> None:
    """A public upstream's storage the operator listed in ``ca_origins`` is followed; another
    port of that host is not."""
    listed = ("https://10.0.0.5:9000",)
    ok = redirects.hop_refusal(
        "https://10.0.0.5:9000/b", over_https=True, registry=PUBLIC, listed=listed
    )
    assert ok is None
    other = redirects.hop_refusal(
        "https://10.0.0.5:9001/b", over_https=True, registry=PUBLIC, listed=listed
    )
    assert other is not None


@pytest.mark.parametrize(
    ("answer", "follows"),
    [
        ([("10.0.0.2", 0)], True),  # a LAN registry by name
        # non-public in part: a LAN registry (a private A, a global AAAA; review lanredirect)
        ([("10.0.0.2", 0), ("8.8.8.8", 0)], True),
        ([("8.8.8.8", 0)], False),
        (socket.gaierror(socket.EAI_NONAME, "no such name"), False),
    ],
)
def test_an_upstream_named_by_a_host_name_is_as_public_as_its_addresses(
    monkeypatch: pytest.MonkeyPatch, answer: list[tuple[str, int]] | OSError, follows: bool
) -> None:
    asked: list[str] = []

    def lookup(host: str, *args: Any) -> list[tuple[Any, ...]]:
        asked.append(host)
        if isinstance(answer, OSError):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", address) for address in answer]

    monkeypatch.setattr(redirects, "RESOLVE", lookup)
    said = redirects.hop_refusal(
        "http://10.0.0.9:9000/b", over_https=False, registry="http://registry.lan:5000"
    )
    assert (said is None) is follows
    assert asked == ["registry.lan"]
    asked.clear()  # a public target asks nothing
    assert (
        redirects.hop_refusal("http://8.8.4.4/", over_https=False, registry="http://r.lan") is None
    )
    assert asked == []


def test_plain_http_is_refused_once_a_hop_went_over_https() -> None:
    """Whatever the target's address, and an HTTPS upstream's HTTPS hops are fine."""
    for registry in (PUBLIC, "https://127.0.0.1:5000"):
        said = redirects.hop_refusal("http://8.8.4.4/b", over_https=True, registry=registry)
        assert said is not None and "from HTTPS to plain HTTP" in said
        assert (
            redirects.hop_refusal("https://8.8.4.4/b", over_https=True, registry=registry) is None
        )
    assert redirects.hop_refusal("http://8.8.4.4/b", over_https=False, registry=PUBLIC) is None


# --- 3: a direct GET's handshake and a redirect's drain, trickled ----------------------------


class Trickler:
    """A raw TCP server on ``host:port``: each connection is handed to ``serve`` in a thread of
    its own, with an event set at :meth:`stop` (every loop of theirs ends on it)."""

    def __init__(
        self, host: str, port: int, serve: Callable[[socket.socket, threading.Event], None]
    ) -> None:
        self.listener = socket.create_server((host, port))
        self.listener.settimeout(0.2)
        self.stopping = threading.Event()
        self.connections = 0
        self.url_base = f"{host}:{port}"
        self._serve = serve
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._serve(conn, self.stopping)
            except OSError:
                pass

    def stop(self) -> None:
        self.stopping.set()
        self._accepting.join(timeout=10)
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=10)


def _trickle(conn: socket.socket, stopping: threading.Event, count: int) -> None:
    """A byte every 0.2 s, ``count`` of them, until the server stops."""
    for _ in range(count):
        if stopping.wait(0.2):
            return
        conn.sendall(b"x")


def _in_a_thread(work: Callable[[], Any], seconds: float) -> tuple[bool, Any]:
    """``work()``'s result or exception, and whether it came within ``seconds``."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(work())
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    return (not thread.is_alive()), (outcome[0] if outcome else None)


def test_a_trickled_tls_handshake_has_a_deadline() -> None:
    """A peer that answers a direct GET's ClientHello with a record header, then a byte of it
    every 0.2 s, each inside the connect timeout (1 s here). Suspected of holding the fill's
    worker thread for as long as the peer liked; it does not: Python's ``ssl`` waits for the
    whole handshake within the socket's timeout (the connect timeout), not per read. A guard
    that it stays so."""

    def serve(conn: socket.socket, stopping: threading.Event) -> None:
        conn.recv(65536)  # the ClientHello
        conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB follows...
        _trickle(conn, stopping, 1000)

    server = Trickler(C, 8810, serve)
    settings = DirectSettings(upstream_ssl_context(), 1.0, 1.0)
    try:
        started = time.monotonic()
        done, outcome = _in_a_thread(lambda: direct.get(settings, f"https://{C}:8810/b", []), 8.0)
        waited = time.monotonic() - started
    finally:
        server.stop()
        settings.idle.close()
    assert done, "the handshake was still trickling after 8 s"
    assert isinstance(outcome, UpstreamTimeout), outcome
    assert "no connection within 1s" in outcome.message
    assert waited < 6.0


def test_a_trickled_redirect_body_is_not_drained_for_ever() -> None:
    """A 307 whose 1000-byte body comes a byte every 0.2 s (each inside the read timeout): the
    direct GET read it off to keep the connection, 200 s, before following. The drain has a
    deadline now; the connection it gave up on is dropped, not kept (the blob comes on a new
    one)."""

    def serve(conn: socket.socket, stopping: threading.Event) -> None:
        reader = conn.makefile("rb")
        for _ in range(10):
            line = reader.readline()
            if not line:
                return
            while reader.readline() not in (b"\r\n", b""):
                pass
            if b" /moved " in line:
                head = "HTTP/1.1 307 Temporary Redirect\r\nLocation: /blob\r\n"
                conn.sendall(f"{head}Content-Length: 1000\r\n\r\n".encode())
                _trickle(conn, stopping, 1000)
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nblob")

    server = Trickler(C, 8811, serve)
    settings = DirectSettings(upstream_ssl_context(), 1.0, 1.0)

    def fetch() -> bytes:
        answer = direct.get(settings, f"http://{C}:8811/moved", [])
        try:
            assert answer.status == 200
            return answer.body.read(10)
        finally:
            answer.close()

    try:
        done, outcome = _in_a_thread(fetch, 8.0)
    finally:
        settings.idle.close()  # the blob's connection, kept: the server's reader ends
        server.stop()
    assert done, "the redirect's body was still being drained after 8 s"
    assert outcome == b"blob"
    assert server.connections == 2  # the trickling one was not kept

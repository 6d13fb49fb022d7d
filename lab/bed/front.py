"""The "upstream" the mirror talks to: a Docker-Hub-like front and its CDN.

The front forwards every request to the Distribution registry (streaming, Range passes through)
and adds Docker Hub's `ratelimit-*` headers to manifest GETs, except that a blob GET the
registry would answer with 200 is answered `307 Location: <cdn>/blobs/...?<signature>` instead.
The CDN refuses (403) any request that carries Authorization, checks the signature, and serves
the blob from the registry's storage directory with Range support.

Both servers record what they see in one `UpstreamLog` and consult `Faults`.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from lab.bed.faults import ConnectionCut, Fault, Faults, declared_length, write_body
from lab.bed.httpserver import LoopbackServer, QuietHandler, RequestLog
from lab.ports import LOOPBACK

BlobPathFn = Callable[[str], Path]
RATELIMIT_LIMIT = 100
RATELIMIT_WINDOW = 21600
CHUNK = 1 << 20
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# The front's own HTTP server writes these; the registry's copies would be duplicates.
NOT_RELAYED = HOP_BY_HOP | {"date", "server"}
_V2_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


@dataclass(frozen=True)
class UpstreamRequest:
    """One request seen by the front ("front") or the CDN ("cdn")."""

    site: str
    method: str
    path: str
    query: str
    auth_scheme: str | None
    range: str | None
    accept: str | None
    user_agent: str | None
    status: int

    @property
    def kind(self) -> str:
        """ "manifest", "blob" or "other"."""
        if self.site == "cdn":
            return "blob"
        match = _V2_PATH.match(self.path)
        return "other" if match is None else match["kind"].rstrip("s")

    @property
    def repo(self) -> str | None:
        if self.site == "cdn":
            return parse_qs(self.query).get("name", [None])[0]
        match = _V2_PATH.match(self.path)
        return None if match is None else match["name"]


class UpstreamLog(RequestLog[UpstreamRequest]):
    def manifest_requests(
        self, method: str = "GET", repo: str | None = None
    ) -> list[UpstreamRequest]:
        return self.where(
            lambda r: (
                r.site == "front"
                and r.kind == "manifest"
                and r.method == method
                and (repo is None or r.repo == repo)
            )
        )

    def blob_redirects(self) -> list[UpstreamRequest]:
        """Blob GETs the front answered with 307."""
        return self.where(lambda r: r.site == "front" and r.kind == "blob" and r.status == 307)

    def cdn_fetches(self, method: str = "GET") -> list[UpstreamRequest]:
        return self.where(lambda r: r.site == "cdn" and r.method == method)


def _entry(handler: QuietHandler, site: str, status: int) -> UpstreamRequest:
    parts = urlsplit(handler.path)
    auth = handler.headers.get("Authorization")
    return UpstreamRequest(
        site=site,
        method=handler.command,
        path=parts.path,
        query=parts.query,
        auth_scheme=auth.split(" ", 1)[0] if auth else None,
        range=handler.headers.get("Range"),
        accept=", ".join(handler.headers.get_all("Accept") or []) or None,
        user_agent=handler.headers.get("User-Agent"),
        status=status,
    )


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


def _answer_fault(handler: QuietHandler, fault: Fault) -> None:
    code = "TOOMANYREQUESTS" if fault.status == 429 else "UNKNOWN"
    handler.send_bytes(
        fault.status, _error_body(code, "injected fault"), "application/json", fault.headers
    )


def _drop(handler: QuietHandler) -> None:
    handler.close_connection = True
    try:
        handler.connection.shutdown(2)
    except OSError:
        pass


class CdnServer(LoopbackServer):
    def __init__(self, blob_path: BlobPathFn, faults: Faults, log: UpstreamLog) -> None:
        super().__init__(_CdnHandler)
        self.blob_path = blob_path
        self.faults = faults
        self.log = log
        self.secret = secrets.token_bytes(32)

    def _signature(self, name: str, digest: str, expires: int) -> str:
        message = f"{name}\n{digest}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def signed_url(self, name: str, digest: str) -> str:
        expires = int(time.time()) + 1200
        query = urlencode(
            {"name": name, "expires": expires, "sig": self._signature(name, digest, expires)}
        )
        return f"{self.url}/blobs/{quote(digest, safe=':')}?{query}"

    def check(self, name: str, digest: str, expires: str, sig: str) -> bool:
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(sig, self._signature(name, digest, int(expires)))


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(first, last) for one satisfiable range, None for no/ignored Range, "unsatisfiable"."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first_text, sep, last_text = header[6:].strip().partition("-")
    if not sep:
        return None
    try:
        if first_text == "":
            suffix = int(last_text)
            return (max(0, size - suffix), size - 1) if suffix > 0 and size else "unsatisfiable"
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
    except ValueError:
        return None
    if first >= size or last < first:
        return "unsatisfiable"
    return first, min(last, size - 1)


def _file_chunks(handle: BinaryIO, remaining: int) -> Iterator[bytes]:
    while remaining > 0:
        chunk = handle.read(min(CHUNK, remaining))
        if not chunk:
            return
        remaining -= len(chunk)
        yield chunk


class _CdnHandler(QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve()

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._serve()

    def _refuse(self, server: CdnServer, status: int, message: str) -> None:
        server.log.append(_entry(self, "cdn", status))
        body = f"<Error><Code>AccessDenied</Code><Message>{message}</Message></Error>".encode()
        self.send_bytes(status, body, "application/xml")

    def _serve(self) -> None:
        server: CdnServer = self.owner()
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        digest = unquote(parts.path.removeprefix("/blobs/"))
        if self.headers.get("Authorization") is not None:
            return self._refuse(server, 403, "Authorization header is not allowed")
        if not server.check(
            query.get("name", ""), digest, query.get("expires", ""), query.get("sig", "")
        ):
            return self._refuse(server, 403, "bad or expired signature")
        fault = server.faults.take("cdn", self.command, parts.path)
        if fault is not None and fault.kind == "status":
            server.log.append(_entry(self, "cdn", fault.status))
            return _answer_fault(self, fault)
        path = server.blob_path(digest)
        if not path.is_file():
            return self._refuse(server, 404, "no such blob")
        self._send_file(server, path, digest, fault)

    def _send_file(self, server: CdnServer, path: Path, digest: str, fault: Fault | None) -> None:
        size = path.stat().st_size
        wanted = parse_range(self.headers.get("Range"), size)
        if wanted == "unsatisfiable":
            server.log.append(_entry(self, "cdn", 416))
            return self.send_bytes(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"})
        first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
        status = 206 if isinstance(wanted, tuple) else 200
        length = last - first + 1
        server.log.append(_entry(self, "cdn", status))
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(declared_length(length, fault)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{digest}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with path.open("rb") as handle:
            handle.seek(first)
            try:
                write_body(self.wfile, _file_chunks(handle, length), length, fault)
            except ConnectionCut:
                _drop(self)


class FrontServer(LoopbackServer):
    def __init__(self, registry_url: str, cdn: CdnServer, faults: Faults, log: UpstreamLog) -> None:
        super().__init__(_FrontHandler)
        target = urlsplit(registry_url)
        if target.hostname != LOOPBACK or target.port is None:
            raise ValueError(f"registry must be on {LOOPBACK}: {registry_url}")
        self.registry_port = target.port
        self.cdn = cdn
        self.faults = faults
        self.log = log
        self._lock = threading.Lock()
        self._manifest_gets = 0

    def next_ratelimit_remaining(self) -> int:
        with self._lock:
            self._manifest_gets += 1
            return max(0, RATELIMIT_LIMIT - self._manifest_gets)

    def reset_ratelimit(self) -> None:
        with self._lock:
            self._manifest_gets = 0


class _FrontHandler(QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_PATCH(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def _handle(self) -> None:
        server: FrontServer = self.owner()
        body = self.read_body()
        path = urlsplit(self.path).path
        fault = server.faults.take("front", self.command, path)
        if fault is not None and fault.kind == "status":
            server.log.append(_entry(self, "front", fault.status))
            return _answer_fault(self, fault)
        match = _V2_PATH.match(path)
        conn = http.client.HTTPConnection(LOOPBACK, server.registry_port, timeout=60)
        try:
            # Header by header: a client may repeat Accept, and each line must reach the registry.
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", f"{LOOPBACK}:{server.registry_port}")
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            if match and match["kind"] == "blobs" and self.command == "GET":
                if response.status == 200:
                    return self._redirect(server, match["name"], match["ref"])
            self._relay(server, response, bool(match and match["kind"] == "manifests"), fault)
        finally:
            conn.close()

    def _redirect(self, server: FrontServer, name: str, digest: str) -> None:
        server.log.append(_entry(self, "front", 307))
        location = server.cdn.signed_url(name, digest)
        self.send_bytes(307, b"", "text/html; charset=utf-8", {"Location": location})

    def _relay(
        self,
        server: FrontServer,
        response: http.client.HTTPResponse,
        is_manifest: bool,
        fault: Fault | None,
    ) -> None:
        server.log.append(_entry(self, "front", response.status))
        length_header = response.getheader("Content-Length")
        if length_header is None and self.command != "HEAD":
            data = response.read()
            length = len(data)
            chunks: Iterator[bytes] = iter([data])
        else:
            length = int(length_header or 0)
            chunks = iter(lambda: response.read(CHUNK), b"")
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in NOT_RELAYED:
                self.send_header(name, value)
        self.send_header("Content-Length", str(declared_length(length, fault)))
        if is_manifest and self.command == "GET":
            remaining = server.next_ratelimit_remaining()
            self.send_header("ratelimit-limit", f"{RATELIMIT_LIMIT};w={RATELIMIT_WINDOW}")
            self.send_header("ratelimit-remaining", f"{remaining};w={RATELIMIT_WINDOW}")
            self.send_header("docker-ratelimit-source", LOOPBACK)
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            write_body(self.wfile, chunks, length, fault)
        except ConnectionCut:
            _drop(self)

"""A corpus of hostile raw requests, byte for byte over a socket, against a running mirror.

Each entry names what the server must answer: the status of the first response, and whether it
must then close the connection (every framing error: nothing after it may be read as another
request). The mirror must survive them all, answer ``/health`` afterwards, and log no
traceback.
"""

from __future__ import annotations

import socket

import httpx
import pytest

from lab.mirror import Mirror
from tests.conftest import StartMirror

pytestmark = pytest.mark.e2e

H = b"Host: mirror.test\r\n"
GET_V2 = b"GET /v2/ HTTP/1.1\r\n" + H + b"\r\n"
DIGEST = b"sha256:" + b"a" * 64
TLS_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40)
LONG = b"a" * 20000

# name → (raw bytes, status of the first response, connection must close after it)
CORPUS: dict[str, tuple[bytes, int, bool]] = {
    # request smuggling: framing a proxy in front could read differently
    "content-length and chunked": (
        b"POST /v2/ HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\n" + GET_V2,
        400,
        True,
    ),
    "chunked and content-length": (
        b"POST /v2/ HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n"
        b"\r\n0\r\n\r\n" + GET_V2,
        400,
        True,
    ),
    "two content-lengths": (
        b"POST /v2/ HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        400,
        True,
    ),
    "content-length list": (
        b"POST /v2/ HTTP/1.1\r\n" + H + b"Content-Length: 4, 5\r\n\r\nabcde",
        400,
        True,
    ),
    "signed content-length": (
        b"POST /v2/ HTTP/1.1\r\n" + H + b"Content-Length: +4\r\n\r\nabcd",
        400,
        True,
    ),
    "negative content-length": (
        b"POST /v2/ HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n",
        400,
        True,
    ),
    "space before colon": (
        b"POST /v2/ HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
        True,
    ),
    "gzip then chunked": (
        b"POST /v2/ HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
        True,
    ),
    "unknown coding": (
        b"POST /v2/ HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        501,
        True,
    ),
    "bad chunk size": (
        b"POST /v2/ HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
        400,
        True,
    ),
    # broken request heads
    "tls on the plain port": (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),
        400,
        True,
    ),
    "nul in a header name": (b"GET /v2/ HTTP/1.1\r\n" + H + b"X\x00: y\r\n\r\n", 400, True),
    "control byte in the target": (b"GET /v2/\x01 HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    "nul in the method": (b"G\x00T /v2/ HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    "no host": (b"GET /v2/ HTTP/1.1\r\n\r\n", 400, True),
    "http/0.9": (b"GET /v2/\r\n\r\n", 400, True),
    "oversized header": (
        b"GET /v2/ HTTP/1.1\r\n" + H + b"X: " + b"a" * 20000 + b"\r\n\r\n",
        431,
        True,
    ),
    "many headers": (b"GET /v2/ HTTP/1.1\r\n" + H + b"X-A: b\r\n" * 3000 + b"\r\n", 431, True),
    # odd but well-formed: the registry's own answers
    "bare line feeds": (b"GET /v2/ HTTP/1.1\n" + H.replace(b"\r\n", b"\n") + b"\n", 401, False),
    "http/1.0": (b"GET /v2/ HTTP/1.0\r\n\r\n", 401, True),
    "long target": (
        b"GET /v2/" + b"a" * 5000 + b"/manifests/x HTTP/1.1\r\n" + H + b"\r\n",
        414,
        False,
    ),
    "traversal": (b"GET /v2/library/../../etc/passwd HTTP/1.1\r\n" + H + b"\r\n", 404, False),
    "encoded nul": (
        b"GET /v2/library%00/x/manifests/latest HTTP/1.1\r\n" + H + b"\r\n",
        400,
        False,
    ),
    "bad digest": (b"GET /v2/library/x/blobs/sha256:zz HTTP/1.1\r\n" + H + b"\r\n", 400, False),
    "asterisk form": (b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", 404, False),
    "connect": (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 404, False),
    "absolute form with credentials": (
        b"GET http://user:pw@evil.example/v2/ HTTP/1.1\r\n" + H + b"\r\n",
        401,
        False,
    ),
    "push attempt": (
        b"POST /v2/library/x/blobs/uploads/ HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n",
        405,
        False,
    ),
    "websocket upgrade": (
        b"GET /v2/ HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        400,
        False,
    ),
    "huge range": (
        b"GET /v2/library/x/blobs/"
        + DIGEST
        + b" HTTP/1.1\r\n"
        + H
        + b"Range: bytes="
        + b"9" * 5000
        + b"-\r\n\r\n",
        401,
        False,
    ),  # fmt: skip
}


def exchange(mirror: Mirror, raw: bytes) -> tuple[bytes, bool]:
    """Send ``raw``; read the first response; whether the server then closed the connection."""
    with socket.create_connection(("127.0.0.1", mirror.port), timeout=30) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 100"):  # an interim answer: the real one follows
            return exchange_rest(sock, body)
        length = _content_length(head)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return head, True
            body += chunk
        closed = b"connection: close" in head.lower() and _reads_eof(sock)
        return head, closed


def exchange_rest(sock: socket.socket, data: bytes) -> tuple[bytes, bool]:
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    return data.partition(b"\r\n\r\n")[0], False


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _reads_eof(sock: socket.socket) -> bool:
    """The server closes: reads end (no second response to a smuggled request)."""
    rest = b""
    try:
        while chunk := sock.recv(65536):
            rest += chunk
    except ConnectionResetError:
        pass
    return b"HTTP/1." not in rest


def test_hostile_raw_requests_get_correct_errors_and_no_traceback(
    start_mirror: StartMirror,
) -> None:
    mirror = start_mirror()
    wrong = {}
    for name, (raw, status, must_close) in CORPUS.items():
        head, closed = exchange(mirror, raw)
        got = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.") else None
        if got != status or (must_close and not closed):
            wrong[name] = (got, closed, head[:120])
    assert not wrong, wrong
    assert httpx.get(f"{mirror.url}/health", timeout=30).status_code == 200
    log = mirror.log_text(10**7)
    assert "Traceback" not in log and "Error in ASGI" not in log

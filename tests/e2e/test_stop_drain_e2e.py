"""Requests still running when the mirror's drain ends (``docxy.http.drain``), end to end.

The real mirror (``python -m docxy serve``, hypercorn, its cache) in front of an upstream that
stalls: a manifest it never answers, a blob whose first 64 KiB it sends and then nothing.
SIGTERM, and the drain (hypercorn's ``graceful_timeout`` less ``CUT_MARGIN``) runs out with
both requests in flight. Before the drain layer the manifest's client got a bodiless ``500``
and the log held a ``CancelledError`` traceback, an ``unexpected error`` and asyncio's "Task
exception was never retrieved".
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from docxy.http.drain import CUT_MARGIN, RETRY_AFTER
from lab.mirror import Mirror, launch_mirror, stop_mirror
from lab.ports import LOOPBACK
from lab.processes import wait_for

pytestmark = pytest.mark.e2e

BLOB = bytes(range(256)) * 4096  # 1 MiB
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
SENT = 64 * 1024  # of the blob, before the upstream stalls
MANIFEST = "/v2/library/stalled/manifests/latest"
BLOB_PATH = f"/v2/library/stalled/blobs/{DIGEST}"
#: hypercorn's drain (docxy.http.server.hypercorn_config) and the time the test allows beyond
DRAIN = 10.0
SLACK = 20.0


class StallingUpstream:
    """A registry that answers ``/v2/`` and then stalls: no answer at all to a manifest, the
    head and the first :data:`SENT` bytes of a blob. Loopback only."""

    def __init__(self) -> None:
        self.sock = socket.create_server((LOOPBACK, 0))
        self.url = f"http://{LOOPBACK}:{self.sock.getsockname()[1]}"
        self.asked: list[str] = []
        self.closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while (path := self._path(conn)) == "/v2/":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2"
                    b"\r\nDocker-Distribution-API-Version: registry/2.0\r\n\r\n{}"
                )
            if path is None:
                return
            if "/blobs/" in path:
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Length: {len(BLOB)}\r\nDocker-Content-Digest: {DIGEST}\r\n\r\n"
                )
                conn.sendall(head.encode() + BLOB[:SENT])
            self.closing.wait()  # the stall: until the test is over

    def _path(self, conn: socket.socket) -> str | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return None
            data += chunk
        path = data.split(b"\r\n", 1)[0].split()[1].decode()
        self.asked.append(path)
        return path

    def close(self) -> None:
        self.closing.set()
        self.sock.close()


@dataclass
class Outcome:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None  # how the body ended if it did not end whole


def fetch(url: str, outcome: Outcome) -> None:
    try:
        with httpx.Client(timeout=DRAIN + SLACK) as client, client.stream("GET", url) as answer:
            outcome.status = answer.status_code
            outcome.headers = dict(answer.headers)
            for chunk in answer.iter_raw():
                outcome.body += chunk
    except httpx.HTTPError as exc:
        outcome.error = repr(exc)


@pytest.fixture
def upstream() -> Iterator[StallingUpstream]:
    stalling = StallingUpstream()
    try:
        yield stalling
    finally:
        stalling.close()


@pytest.fixture
def stalled_mirror(upstream: StallingUpstream, tmp_path: Path) -> Iterator[Mirror]:
    started = launch_mirror(upstream.url, tmp_path / "mirror")
    try:
        yield started
    finally:
        stop_mirror(started)


def test_requests_in_flight_when_the_drain_ends(
    stalled_mirror: Mirror, upstream: StallingUpstream, tmp_path: Path
) -> None:
    mirror = stalled_mirror
    manifest, blob = Outcome(), Outcome()
    clients = [
        threading.Thread(target=fetch, args=(mirror.url + MANIFEST, manifest)),
        threading.Thread(target=fetch, args=(mirror.url + BLOB_PATH, blob)),
    ]
    for client in clients:
        client.start()
    fills = tmp_path / "mirror" / "cache" / "tmp"

    def both_stalled() -> bool:
        return (
            MANIFEST in upstream.asked
            and BLOB_PATH in upstream.asked
            and any(p.is_file() for p in fills.rglob("*"))
        )

    wait_for(both_stalled, timeout=SLACK, what="both requests at the stalled upstream")
    stopped = time.monotonic()
    mirror.proc.send_signal(signal.SIGTERM)
    for client in clients:
        client.join(DRAIN + SLACK)
    took = time.monotonic() - stopped
    assert mirror.proc.wait(SLACK) == 0
    # Not cut at once: the drain was given (the upper bound only catches a hang; the 503
    # below is what shows the mirror, not hypercorn's deadline, ended them).
    assert DRAIN - CUT_MARGIN - 0.5 <= took <= DRAIN + SLACK, took

    # Not answered yet: the registry's 503, which a client retries.
    assert manifest.status == 503, manifest
    assert manifest.headers["retry-after"] == str(RETRY_AFTER)
    assert manifest.headers["docker-distribution-api-version"] == "registry/2.0"
    (error,) = json.loads(manifest.body)["errors"]
    assert error["code"] == "UNAVAILABLE" and "shutting down" in error["message"], error

    # Streaming: cut, and visibly so: short of its Content-Length, the connection closed.
    assert blob.status == 200, blob
    assert blob.headers["content-length"] == str(len(BLOB))
    assert blob.error is not None and "RemoteProtocolError" in blob.error, blob
    assert len(blob.body) < len(BLOB)

    # The fill behind it left nothing: no temp file, no blob.
    cache = tmp_path / "mirror" / "cache"
    # (docxy.lock is the serving mirror's: one mirror per cache.dir, docxy.cache.lock)
    assert [p for p in cache.rglob("*") if p.is_file() and p.name != "docxy.lock"] == []

    # One access-log line per cut request, no traceback, no 500.
    log = mirror.log_text(limit=200_000)
    assert "Traceback" not in log and "Task exception" not in log, log
    assert " 500 " not in log and "unexpected error" not in log, log
    lines = [line for line in log.splitlines() if line.endswith(" stopped")]
    assert len(lines) == 2, log
    (manifest_line,) = [line for line in lines if MANIFEST in line]
    assert "docxy.access: GET " in manifest_line and " 503 " in manifest_line, manifest_line
    (blob_line,) = [line for line in lines if BLOB_PATH in line]
    assert " 200 " in blob_line and "total=" in blob_line, blob_line

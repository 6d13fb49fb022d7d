"""A blob body from the bucket that breaks off: a real S3-compatible store (SeaweedFS on
loopback) behind a loopback proxy that relays its answers and cuts a GET's body after a given
number of bytes (a store restarting, a gateway losing its volume server, a network cut).

- cut before the first byte of the body: nothing was sent to a client yet, so the mirror fills
  from the upstream instead (the client gets the whole blob);
- cut mid-way: bytes have gone to the clients, so the rest of the blob comes from the upstream
  (a ``Range`` GET from where the body broke off): the client gets the whole blob, verified and
  cached, the failure is counted and logged, and the rest's bytes count as the upstream's.
  Should the upstream not give the rest, the clients are cut (never a short 200 that looks
  complete), nothing is cached, the object is not marked corrupt (the store failed, the object
  did not); the next pull comes from the upstream.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from lab.bed import Bed, Fault
from lab.bed.front import UpstreamRequest
from lab.bed.images import generated_chunks
from lab.objectstore import ObjectStore as Weed
from tests.conftest import StartMirror
from tests.e2e.test_cache_e2e import blob_files, committed
from tests.e2e.test_shared_e2e import (
    DEADLINE,
    HELLO,
    MiB,
    fresh_prefix,
    get_blob,
    object_bytes,
    put_object,
    replica,
    shared_health,
)
from tests.e2e.waiting import poll
from tests.unavailable import need_binary

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 30.0
HEAD_LIMIT = 64 * 1024


class CuttingProxy:
    """127.0.0.1:port → ``target`` (host, port), one request per connection (the request's
    ``Connection`` header is made ``close``: it is not signed). The body of a ``200`` answer to
    a ``GET`` is cut after ``cut_at`` bytes (the connection closed); anything else is relayed
    whole. ``cuts`` counts the bodies cut."""

    def __init__(self, target: tuple[str, int], cut_at: int) -> None:
        self.target = target
        self.cut_at = cut_at
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.target, IO_TIMEOUT) as store:
            client.settimeout(IO_TIMEOUT)
            head, rest = _read_head(client)
            lines = head.split(b"\r\n")
            kept = [ln for ln in lines[1:] if not ln.lower().startswith(b"connection:")]
            store.sendall(b"\r\n".join([lines[0], *kept, b"Connection: close"]) + b"\r\n\r\n")
            if rest:
                store.sendall(rest)
            cutting = lines[0].startswith(b"GET ")
            answer, body = _read_head(store)
            cutting = cutting and answer.split(b" ", 2)[1] == b"200"
            client.sendall(answer + b"\r\n\r\n")
            sent = 0
            while True:
                if cutting and sent + len(body) >= self.cut_at:
                    client.sendall(body[: self.cut_at - sent])
                    self.cuts += 1
                    return  # closed mid-body
                client.sendall(body)
                sent += len(body)
                body = store.recv(256 * 1024)
                if not body:
                    return

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        self.listener.close()
        self._accepting.join(IO_TIMEOUT)
        for thread in self._threads:
            thread.join(IO_TIMEOUT)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP message's head (without the blank line) and the bytes read past it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk and len(data) < HEAD_LIMIT, "no complete HTTP head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


@contextmanager
def cutting_proxy(weed: Weed, cut_at: int) -> Iterator[CuttingProxy]:
    host, port = httpx.URL(weed.url).host, httpx.URL(weed.url).port
    assert port is not None
    proxy = CuttingProxy((host, port), cut_at)
    try:
        yield proxy
    finally:
        proxy.close()


def blob_gets(bed: Bed) -> list[UpstreamRequest]:
    """The blob GETs the upstream saw: the front's (a ``Range`` it relays as the registry's
    ``206``, else a ``307`` to the CDN) and the CDN's."""
    return bed.front_log.where(lambda r: r.kind == "blob" and r.method == "GET")


def stored_blob(bed: Bed, weed: Weed, prefix: str, size: int, seed: int) -> str:
    """A blob of the bed's upstream that the bucket holds too (its right bytes); its digest."""
    digest = bed.push_big_blob(HELLO, size, seed=seed)
    put_object(weed, prefix, digest, b"".join(generated_chunks(size, seed)))
    return digest


def test_a_body_cut_before_its_first_byte_is_filled_from_the_upstream(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path, weed: Weed
) -> None:
    """The store answers 200 and its length, then no byte of the body (its gateway lost the
    volume server holding it): no client has a byte yet, so the upstream serves the blob."""
    need_binary("weed")
    prefix = fresh_prefix()
    digest = stored_blob(bed, weed, prefix, 2 * MiB + 11, seed=61)
    with cutting_proxy(weed, cut_at=0) as proxy:
        mirror = replica(start_mirror, tmp_path / "cache", weed, prefix, endpoint=proxy.url)
        bed.front_log.clear()
        assert get_blob(mirror.url, digest) == (200, digest, "")
        assert proxy.cuts == 1
    assert len(bed.front_log.cdn_fetches()) == 1  # from the upstream
    committed(tmp_path / "cache", digest)
    health = shared_health(mirror.url)
    assert (health["hits"], health["corrupt"], health["errors"]) == (0, 0, 1), health
    assert health["reachable"] is False
    assert "shared store" in mirror.log_text() and "in trouble" in mirror.log_text()


def test_a_body_cut_mid_way_is_finished_from_the_upstream(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path, weed: Weed
) -> None:
    """The client had the first MiB of a 200 when the store's body broke off: it got a short
    body and had to pull again. The rest comes from the upstream, only the rest."""
    need_binary("weed")
    prefix = fresh_prefix()
    size = 3 * MiB + 5
    digest = stored_blob(bed, weed, prefix, size, seed=62)
    with cutting_proxy(weed, cut_at=MiB) as proxy:
        mirror = replica(start_mirror, tmp_path / "cache", weed, prefix, endpoint=proxy.url)
        bed.front_log.clear()
        assert get_blob(mirror.url, digest) == (200, digest, "")
        assert proxy.cuts == 1
    [rest] = blob_gets(bed)
    assert (rest.range, rest.status) == (f"bytes={MiB}-", 206), rest  # what it had not yet
    committed(tmp_path / "cache", digest)
    health = shared_health(mirror.url)
    counts = [health[key] for key in ("hits", "resumed", "corrupt", "errors", "reachable")]
    assert counts == [1, 1, 0, 1, False], health
    # The rest spent upstream quota: the access log (and docxy_sent_bytes_total) say so.
    resumed = f" cache=shared upstream_bytes={size - MiB} "
    poll(lambda: resumed in mirror.log_text(), DEADLINE, "the access line counts the rest")
    log = mirror.log_text()
    assert "in trouble" in log and f"broke off after {MiB} bytes" in log
    assert "fill failed" not in log
    stored = object_bytes(weed, prefix, digest)  # the object was right all along
    assert stored is not None and f"sha256:{hashlib.sha256(stored).hexdigest()}" == digest


def test_a_body_cut_mid_way_whose_rest_fails_is_never_served_whole_nor_taken_for_corrupt(
    bed: Bed, start_mirror: StartMirror, tmp_path: Path, weed: Weed
) -> None:
    need_binary("weed")
    prefix = fresh_prefix()
    size = 3 * MiB + 5
    digest = stored_blob(bed, weed, prefix, size, seed=63)
    bed.faults.add(Fault(site="front", kind="status", status=503, path_contains=digest))
    with cutting_proxy(weed, cut_at=MiB) as proxy:
        mirror = replica(start_mirror, tmp_path / "cache", weed, prefix, endpoint=proxy.url)
        bed.front_log.clear()
        status, received, error = get_blob(mirror.url, digest)
        assert proxy.cuts == 1
    assert bed.faults.fired, "the rest was never asked of the upstream"
    assert status == 200 and error and received != digest  # a cut transfer, never a whole one
    assert digest not in blob_files(tmp_path / "cache")
    poll(lambda: shared_health(mirror.url)["errors"] == 1, DEADLINE, "the cut is counted")
    health = shared_health(mirror.url)
    assert (health["hits"], health["corrupt"], health["reachable"]) == (1, 0, False), health
    log = mirror.log_text()
    assert "in trouble" in log and f"blob {digest}: fill failed" in log

    # The client retries (Docker does): the store rests, the upstream serves it whole.
    bed.front_log.clear()
    assert get_blob(mirror.url, digest) == (200, digest, "")
    assert [r.range for r in blob_gets(bed)] == [None, None]  # the front's 307, the CDN's 200
    committed(tmp_path / "cache", digest)
    stored = object_bytes(weed, prefix, digest)  # the object was right all along
    assert stored is not None and f"sha256:{hashlib.sha256(stored).hexdigest()}" == digest

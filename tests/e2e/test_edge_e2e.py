"""The edge against a real running mirror: floods, non-reading and slow clients, the connection
cap, allow lists, repository rules and per-client limits, all from loopback.

Descriptor and memory figures are read from ``/proc/<pid>`` of the mirror. Loops are bounded;
waiting is polling a condition under a generous deadline, never a timed assertion. Different
clients are different loopback source addresses (127.0.0.2, 127.0.0.3).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from docxy.edge.connections import TRIM_DELAY
from lab.bed import Bed
from lab.bed.images import generated_chunks
from lab.mirror import Mirror
from lab.ports import LOOPBACK, free_port
from tests.conftest import StartMirror
from tests.e2e.waiting import eventually

pytestmark = pytest.mark.e2e
DEADLINE = 60.0

MiB = 1 << 20
FLOOD = 3000
HELLO = "library/hello"
BIG = "docxytest/edge-big"
MANIFESTS = (
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)


def fd_count(mirror: Mirror) -> int:
    return len(os.listdir(f"/proc/{mirror.proc.pid}/fd"))


def rss(mirror: Mirror) -> int:
    with open(f"/proc/{mirror.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def client(mirror: Mirror, source: str = "127.0.0.1") -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=mirror.url, transport=transport, timeout=60)


def bearer(http: httpx.Client, repo: str) -> dict[str, str]:
    challenge = http.get("/v2/").headers["WWW-Authenticate"]
    params = dict(part.split("=", 1) for part in challenge.partition(" ")[2].split(","))
    realm, service = params["realm"].strip('"'), params["service"].strip('"')
    answer = http.get(realm, params={"service": service, "scope": f"repository:{repo}:pull"})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['token']}", "Accept": MANIFESTS}


def cached_big_blob(bed: Bed, mirror: Mirror, size: int) -> tuple[str, dict[str, str]]:
    """A blob of ``size`` bytes, pulled once through the mirror so it is served from disk."""
    digest = bed.push_big_blob(BIG, size, seed=77)
    with client(mirror) as http:
        headers = bearer(http, BIG)
        with http.stream("GET", f"/v2/{BIG}/blobs/{digest}", headers=headers) as answer:
            assert answer.status_code == 200
            assert sum(len(c) for c in answer.iter_bytes()) == size
    return digest, headers


def raw_get(mirror: Mirror, path: str, headers: dict[str, str], rcvbuf: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", mirror.port))
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{mirror.port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def flood(mirror: Mirror) -> None:
    for _ in range(FLOOD):
        socket.create_connection(("127.0.0.1", mirror.port)).close()


def test_a_connect_and_close_flood_leaves_no_descriptors_behind(start_mirror: StartMirror) -> None:
    # A long idle timeout: only closing on the peer's EOF can bring the count back.
    mirror = start_mirror("--set", "limits.idle_timeout=600")
    first = fd_count(mirror)
    flood(mirror)  # the first flood also sets the allocator's working set (measured: +20 MiB)
    assert eventually(lambda: fd_count(mirror) <= first + 5, DEADLINE), (first, fd_count(mirror))
    baseline = rss(mirror)
    for _ in range(2):
        flood(mirror)
        assert eventually(lambda: fd_count(mirror) <= first + 5, DEADLINE), (
            first,
            fd_count(mirror),
        )
    assert rss(mirror) <= baseline + 8 * MiB, (baseline, rss(mirror))
    assert httpx.get(f"{mirror.url}/health", timeout=30).status_code == 200


def non_reading_round(mirror: Mirror, path: str, headers: dict[str, str], count: int) -> None:
    """``count`` clients ask for a big blob and never read; each must be cut off."""
    before = fd_count(mirror)
    sockets = [raw_get(mirror, path, headers, 4096) for _ in range(count)]
    try:
        assert eventually(lambda: fd_count(mirror) >= before + count, DEADLINE)  # all being served
        assert eventually(lambda: fd_count(mirror) <= before + 5, DEADLINE), (
            before,
            fd_count(mirror),
        )
        for sock in sockets:  # each was cut: after what it had buffered, the end
            sock.settimeout(30)
            received = 0
            try:
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
            assert received < 32 * MiB
    finally:
        for sock in sockets:
            sock.close()


def test_idle_and_trickling_clients_are_closed_after_the_idle_timeout(
    start_mirror: StartMirror,
) -> None:
    mirror = start_mirror("--set", "limits.idle_timeout=2")
    baseline = fd_count(mirror)
    idle = [socket.create_connection(("127.0.0.1", mirror.port)) for _ in range(20)]
    trickling = [socket.create_connection(("127.0.0.1", mirror.port)) for _ in range(20)]
    try:
        for sock in trickling:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        closed: set[socket.socket] = set()
        for _ in range(100):  # a byte each half second: a head that never ends
            for sock in trickling:
                if sock in closed:
                    continue
                try:
                    sock.sendall(b"a")
                except OSError:
                    closed.add(sock)
            if len(closed) == len(trickling):
                break
            time.sleep(0.5)  # the slow client's own pace, not synchronisation
        assert len(closed) == len(trickling), f"{len(closed)} of {len(trickling)} closed"
        for sock in idle:
            sock.settimeout(30)
            assert sock.recv(100) == b""  # closed by the server, nothing said
        assert eventually(lambda: fd_count(mirror) <= baseline + 5, DEADLINE), fd_count(mirror)
    finally:
        for sock in idle + trickling:
            sock.close()


def test_non_reading_clients_are_closed_and_memory_stays_flat(
    bed: Bed, start_mirror: StartMirror
) -> None:
    mirror = start_mirror("--set", "limits.send_timeout=2", "--set", "limits.idle_timeout=600")
    digest, headers = cached_big_blob(bed, mirror, 32 * MiB)
    path = f"/v2/{BIG}/blobs/{digest}"
    baseline_fds, baseline_rss = fd_count(mirror), rss(mirror)
    for _ in range(4):
        non_reading_round(mirror, path, headers, 40)
    assert fd_count(mirror) <= baseline_fds + 5
    # Dropped connections' buffers are given back TRIM_DELAY after the last one is cut (and a
    # round may end with a few still being torn down). With the trim off: +48 MiB, 3 runs of 3.
    bound = baseline_rss + 16 * MiB
    assert eventually(lambda: rss(mirror) <= bound, deadline=10 * TRIM_DELAY), (
        baseline_rss,
        rss(mirror),
    )
    assert mirror.log_text(10**7).count("closing stalled") >= 4 * 40
    assert "Traceback" not in mirror.log_text(10**7)


def test_a_slow_download_that_keeps_reading_is_not_cut(bed: Bed, start_mirror: StartMirror) -> None:
    # One 4 MiB chunk takes this client ~3 s; the stall timeout is 2 s (1 s failed when this
    # test process itself stalled that long): only progress saves it.
    mirror = start_mirror("--set", "limits.send_timeout=2")
    size = 8 * MiB
    digest, headers = cached_big_blob(bed, mirror, size)
    sock = raw_get(mirror, f"/v2/{BIG}/blobs/{digest}", headers, 16384)
    sock.settimeout(30)
    data = bytearray()
    try:
        while chunk := sock.recv(64 * 1024):
            data += chunk
            if len(data) > size and data.find(b"\r\n\r\n") + 4 + size <= len(data):
                break
            time.sleep(0.05)  # the client's own slowness (~1 MiB/s), not synchronisation
    finally:
        sock.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == digest.removeprefix("sha256:")
    expected = hashlib.sha256(b"".join(generated_chunks(size, seed=77))).hexdigest()
    assert expected == digest.removeprefix("sha256:")


def test_a_connection_over_the_cap_closes_the_longest_idle_one(start_mirror: StartMirror) -> None:
    """At limits.max_connections a newcomer is served and the connection idle the longest is
    closed to make room (d1c6ed5: before, the newcomer got 503, and 20 silent connections
    held the mirror shut for as long as idle_timeout)."""
    mirror = start_mirror("--set", "limits.max_connections=20", "--set", "limits.idle_timeout=600")
    held: list[socket.socket] = []
    try:
        # Each held connection has asked for nothing; the cap counts it all the same.
        for _ in range(20):
            held.append(socket.create_connection(("127.0.0.1", mirror.port)))
        with socket.create_connection(("127.0.0.1", mirror.port), timeout=30) as over:
            over.sendall(b"GET /health HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n")
            answer = over.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        oldest = held[0]
        oldest.settimeout(30)
        assert oldest.recv(1) == b""  # closed by the mirror, the first to have come
    finally:
        for sock in held:
            sock.close()


def test_the_allow_list_with_a_trusted_proxy(start_mirror: StartMirror) -> None:
    mirror = start_mirror(
        "--set", "access.allow=127.0.0.2/32, 10.9.0.0/16",
        "--set", "server.trusted_proxies=127.0.0.4",
    )  # fmt: skip
    with client(mirror, "127.0.0.2") as allowed, client(mirror, "127.0.0.3") as other:
        assert allowed.get("/v2/").status_code == 401  # the registry's usual challenge
        refused = other.get("/v2/")
        assert refused.status_code == 403
        assert refused.json()["errors"][0]["code"] == "DENIED"
        assert other.get("/health").status_code == 200
        spoof = {"X-Forwarded-For": "10.9.1.1"}
        assert other.get("/v2/", headers=spoof).status_code == 403  # not a trusted proxy
    with client(mirror, "127.0.0.4") as proxy:
        assert proxy.get("/v2/", headers={"X-Forwarded-For": "10.9.1.1"}).status_code == 401
        assert proxy.get("/v2/").status_code == 403  # the proxy itself is not allowed
        chain = {"X-Forwarded-For": "10.9.1.1, 192.0.2.50"}  # the client wrote the left part
        assert proxy.get("/v2/", headers=chain).status_code == 403


def test_repository_rules_refuse_with_a_message(bed: Bed, start_mirror: StartMirror) -> None:
    mirror = start_mirror("--set", "access.repositories=library/*")
    with client(mirror) as http:
        headers = bearer(http, HELLO)
        assert http.get("/v2/hello/manifests/latest", headers=headers).status_code == 200
        refused = http.get("/v2/docxytest/multi/manifests/latest", headers=headers)
        assert refused.status_code == 403
        error = refused.json()["errors"][0]
        assert error["code"] == "DENIED"
        assert error["message"].startswith("repository docxytest/multi is not served")
    assert not [r for r in bed.front_log if "docxytest/multi" in r.path]  # never asked upstream


def test_request_rate_limit_under_load_spares_other_clients(start_mirror: StartMirror) -> None:
    limit = 40
    mirror = start_mirror("--set", f"limits.requests_per_minute={limit}")
    started = time.monotonic()
    with client(mirror, "127.0.0.2") as noisy, client(mirror, "127.0.0.3") as quiet:
        with ThreadPoolExecutor(8) as pool:
            flood = pool.map(lambda _: noisy.get("/v2/"), range(3 * limit))
            calm = [quiet.get("/v2/") for _ in range(limit // 4)]
            answers = list(flood)
    elapsed = time.monotonic() - started
    refused = [a for a in answers if a.status_code == 429]
    passed = len(answers) - len(refused)
    assert refused, "no 429 at three times the limit"
    assert limit <= passed <= limit + elapsed * limit / 60 + 1
    assert all(a.json()["errors"][0]["code"] == "TOOMANYREQUESTS" for a in refused)
    assert all(int(a.headers["Retry-After"]) >= 1 for a in refused)
    assert [a.status_code for a in calm] == [401] * (limit // 4)


def test_manifest_fetch_limit(bed: Bed, start_mirror: StartMirror) -> None:
    mirror = start_mirror("--set", "limits.manifests_per_minute=3")
    with client(mirror, "127.0.0.2") as noisy, client(mirror, "127.0.0.3") as quiet:
        headers = bearer(noisy, HELLO)
        path = "/v2/hello/manifests/latest"
        statuses = [noisy.get(path, headers=headers).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        assert noisy.head(path, headers=headers).status_code == 200  # a HEAD is no fetch
        assert quiet.get(path, headers=bearer(quiet, HELLO)).status_code == 200


def test_one_address_cannot_take_every_connection(start_mirror: StartMirror) -> None:
    """The connection cap was only a total: one client holding ``limits.max_connections``
    silent connections (each kept for ``limits.idle_timeout``, renewed as it lapses) left
    every other client a ``503``. Now each address (IPv6: its /64) holds at most
    ``limits.connections_per_client`` (default 128) and gets ``429`` beyond it; the rest of
    the cap stays for the others."""
    cap = 200
    mirror = start_mirror(
        "--set", f"limits.max_connections={cap}", "--set", "limits.idle_timeout=600"
    )  # fmt: skip
    held: list[socket.socket] = []
    try:
        for _ in range(cap):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", mirror.port))
            held.append(sock)
        over = socket.socket()
        over.bind(("127.0.0.2", 0))
        over.connect(("127.0.0.1", mirror.port))
        over.settimeout(30)
        answer = over.recv(4096)
        over.close()
        assert answer.startswith(b"HTTP/1.1 429"), answer
        assert b"retry-after:" in answer and b"TOOMANYREQUESTS" in answer
        with client(mirror, "127.0.0.3") as other:
            assert other.get("/v2/").status_code == 401  # served: the registry's challenge
    finally:
        for sock in held:
            sock.close()


def test_an_exempt_address_is_spared_the_request_rate(bed: Bed, start_mirror: StartMirror) -> None:
    """``limits.exempt`` (here from the environment, as compose passes it): a CI farm behind
    one address (127.0.0.2) pulls past ``limits.requests_per_minute``, another address
    (127.0.0.3) is refused at it, and only the other's refusals are counted."""
    limit = 5
    admin = free_port()
    mirror = start_mirror(
        "--set", f"limits.requests_per_minute={limit}",
        "--set", f"server.admin_listen={LOOPBACK}:{admin}",
        env={"DOCXY_LIMITS_EXEMPT": "127.0.0.2/32, 2001:db8:42::/48"},
    )  # fmt: skip
    path = "/v2/hello/manifests/latest"
    with client(mirror, "127.0.0.2") as farm, client(mirror, "127.0.0.3") as other:
        headers = bearer(farm, HELLO)  # a /v2/ and a token: two requests already
        pulls = [farm.get(path, headers=headers).status_code for _ in range(3 * limit)]
        assert pulls == [200] * (3 * limit)
        assert farm.get("/v2/").status_code == 401  # the registry's challenge, not a 429
        answers = [other.get("/v2/") for _ in range(limit + 3)]
    assert [a.status_code for a in answers] == [401] * limit + [429] * 3
    assert all(a.json()["errors"][0]["code"] == "TOOMANYREQUESTS" for a in answers[limit:])
    metrics = httpx.get(f"http://{LOOPBACK}:{admin}/metrics", timeout=10).text
    assert 'docxy_refused_total{setting="limits.requests_per_minute"} 3.0' in metrics


def websocket_upgrade(mirror: Mirror, source: str) -> bytes:
    """A WebSocket upgrade of ``/v2/`` from ``source``: the head of the answer."""
    sock = socket.create_connection(("127.0.0.1", mirror.port), source_address=(source, 0))
    with sock:
        sock.settimeout(DEADLINE)
        lines = [
            "GET /v2/ HTTP/1.1",
            f"Host: 127.0.0.1:{mirror.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        return head


def test_a_websocket_upgrade_is_admitted_and_logged_like_any_request(
    start_mirror: StartMirror,
) -> None:
    """hypercorn hands an upgrade to the app as a websocket scope, which the edge let by:
    neither the allow list nor the access log saw it (Quart answered 400, nothing served)."""
    mirror = start_mirror("--set", "access.allow=127.0.0.2/32")
    assert websocket_upgrade(mirror, "127.0.0.3").startswith(b"HTTP/1.1 403 ")
    assert websocket_upgrade(mirror, "127.0.0.2").startswith(b"HTTP/1.1 400 ")
    assert eventually(lambda: "GET /v2/ 400 " in mirror.log_text(), DEADLINE), mirror.log_text()
    assert "GET /v2/ 403 " in mirror.log_text()

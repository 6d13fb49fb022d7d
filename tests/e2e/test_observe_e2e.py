"""Metrics and the status page against real traffic: a real dockerd pulling through the mirror,
``docxy warm``, and the page rendered by headless Chromium (Debian ``chromium``).

The mirror runs as a child process with its admin listener on a free loopback port; every
figure is scraped from that listener, as Prometheus or a browser would.
"""

from __future__ import annotations

import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from docxy.cli.main import main
from lab.bed import Bed
from lab.clients.dockerd import Dockerd, running_dockerd
from lab.clients.egress import EgressGuard
from lab.mirror import Mirror
from lab.ports import LOOPBACK, free_port
from tests.conftest import StartMirror
from tests.unavailable import DOCKER, need_binaries, need_binary

pytestmark = pytest.mark.e2e

CHROMIUM_TIMEOUT = 120.0
PHONE = "390,844"


@dataclass
class Observed:
    mirror: Mirror
    admin_url: str

    def scrape(self) -> dict[str, float]:
        response = httpx.get(f"{self.admin_url}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                found[f"{sample.name}{{{labels}}}"] = sample.value
        return found

    def status(self) -> dict[str, object]:
        response = httpx.get(f"{self.admin_url}/status.json", timeout=10)
        assert response.status_code == 200
        report = response.json()
        assert isinstance(report, dict)
        return report


@pytest.fixture
def observed(start_mirror: StartMirror) -> Observed:
    port = free_port()
    mirror = start_mirror("--set", f"server.admin_listen={LOOPBACK}:{port}")
    return Observed(mirror, f"http://{LOOPBACK}:{port}")


def total(seen: dict[str, float], name: str, **labels: str) -> float:
    """Sum of ``name``'s samples carrying every label in ``labels``."""
    wanted = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        value
        for key, value in seen.items()
        if key.split("{")[0] == name and all(w in key.split("{")[1][:-1].split(",") for w in wanted)
    )


def test_the_admin_listener_is_not_the_public_one(observed: Observed) -> None:
    assert httpx.get(f"{observed.mirror.url}/metrics").status_code == 404
    assert httpx.get(f"{observed.mirror.url}/status").status_code == 404
    assert httpx.get(f"{observed.admin_url}/status").status_code == 200


def test_an_idle_keep_alive_connection_counts_as_open(observed: Observed) -> None:
    with httpx.Client(base_url=observed.mirror.url) as client:
        assert client.get("/health").status_code == 200  # the connection stays open, idle
        seen = observed.scrape()
        assert seen["docxy_open_connections{}"] >= 1
        assert seen["docxy_open_requests{}"] == 0


def test_the_served_certificate_expiry_is_exported(start_mirror: StartMirror) -> None:
    admin = free_port()
    mirror = start_mirror(
        "--tls-listen",
        f"{LOOPBACK}:{free_port()}",
        "--set",
        f"server.admin_listen={LOOPBACK}:{admin}",
    )
    observed = Observed(mirror, f"http://{LOOPBACK}:{admin}")
    expiry = observed.scrape()["docxy_tls_cert_expiry_timestamp_seconds{}"]
    days = (expiry - time.time()) / 86400
    assert 80 < days <= 90  # the self-signed bootstrap certificate lives 90 days
    tls = observed.status()["tls"]
    assert isinstance(tls, dict) and tls["not_after"]


def raw_request(port: int, head: str) -> str:
    """``head`` written as is on a new connection; the status line of the answer."""
    with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode()


def test_absolute_form_requests_are_counted_under_their_route(bed: Bed, observed: Observed) -> None:
    """HTTP/1.1 servers must accept ``GET http://host/path``: such a pull is a manifest (and
    a pull of its image) on the metrics and the status page, as its origin form would be."""
    image = bed.images["library/hello"]
    port = observed.mirror.port
    authority = f"{LOOPBACK}:{port}"
    for target in ("/v2/", f"/v2/{image.repo}/manifests/{image.tag}"):
        line = raw_request(
            port,
            f"GET http://{authority}{target} HTTP/1.1\r\nHost: {authority}\r\n"
            "Connection: close\r\n\r\n",
        )
        assert line.startswith("HTTP/1.1 "), line
    seen = observed.scrape()
    assert total(seen, "docxy_http_requests_total", route="ping", method="GET") == 1
    assert total(seen, "docxy_http_requests_total", route="manifest", status_class="2xx") == 1
    assert total(seen, "docxy_http_requests_total", route="other") == 0
    assert observed.status()["top_images"] == [{"image": f"{image.repo}:{image.tag}", "pulls": 1}]


# --- a real docker pull ---------------------------------------------------------------------


@pytest.fixture
def dockerd(observed: Observed, egress: EgressGuard) -> Iterator[Dockerd]:
    need_binaries(*DOCKER)
    with running_dockerd(mirror_url=observed.mirror.url, egress_proxy=egress.url) as daemon:
        yield daemon


def docker_pull(daemon: Dockerd, ref: str) -> None:
    result = daemon.docker("pull", ref)
    assert result.returncode == 0, f"docker pull {ref}: {result.stderr}\n{daemon.log()[-4000:]}"


def test_a_docker_pull_moves_the_counters_and_a_second_pull_only_hits(
    bed: Bed, observed: Observed, dockerd: Dockerd, egress: EgressGuard
) -> None:
    image = bed.images["docxytest/multi"]
    ref = f"{image.short_repo}:{image.tag}"
    before = observed.scrape()
    assert total(before, "docxy_cache_requests_total") == 0

    docker_pull(dockerd, ref)
    first = observed.scrape()
    blob_misses = total(first, "docxy_cache_requests_total", route="blob", outcome="miss")
    assert blob_misses >= 2  # config and layers
    assert total(first, "docxy_cache_fills_total") == blob_misses
    assert total(first, "docxy_sent_bytes_total", source="upstream") > 0
    assert total(first, "docxy_upstream_responses_total", route="blob") >= blob_misses
    assert total(first, "docxy_cache_size_bytes") > 0
    assert total(first, "docxy_http_requests_total", route="blob", status_class="2xx") >= 2
    assert total(first, "docxy_open_requests") == 0

    dockerd.docker("rmi", ref, check=True)
    docker_pull(dockerd, ref)
    second = observed.scrape()
    assert egress.attempts == []
    hits = total(second, "docxy_cache_requests_total", route="blob", outcome="hit")
    assert hits - total(first, "docxy_cache_requests_total", route="blob", outcome="hit") >= 2
    for unchanged in (
        ("docxy_cache_requests_total", {"outcome": "miss"}),
        ("docxy_cache_fills_total", {}),
        ("docxy_sent_bytes_total", {"source": "upstream"}),
        ("docxy_upstream_responses_total", {"route": "blob"}),
        ("docxy_upstream_responses_total", {"route": "manifest"}),
        ("docxy_upstream_duration_seconds_count", {"route": "blob"}),
    ):
        name, labels = unchanged
        assert total(second, name, **labels) == total(first, name, **labels), unchanged
    assert total(second, "docxy_sent_bytes_total", source="cache") > 0
    pulls = observed.status()["top_images"]
    assert pulls == [{"image": f"{image.repo}:{image.tag}", "pulls": 2}]


# --- the page in a real browser -------------------------------------------------------------


def chromium(url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    binary = need_binary("chromium")
    with tempfile.TemporaryDirectory(prefix="docxy-chromium-") as profile:
        command = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-proxy-server",
            f"--user-data-dir={profile}",
            *flags,
            url,
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False
        )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def render(observed: Observed, shot: Path) -> str:
    """The page's DOM as Chromium rendered it; a phone-sized screenshot saved at ``shot``."""
    url = f"{observed.admin_url}/status"
    dom = chromium(url, "--dump-dom").stdout
    chromium(url, f"--screenshot={shot}", f"--window-size={PHONE}", "--hide-scrollbars")
    assert shot.stat().st_size > 1000
    print(f"status page screenshot: {shot}")
    return dom


def text_of(dom: str, ident: str) -> str:
    """The text of the element with ``id=ident``, tags stripped."""
    match = re.search(rf"<(\w+)[^>]*\bid=\"?{ident}\"?[^>]*>(.*?)</\1>", dom, re.S)
    assert match is not None, f"no #{ident} in the page"
    return re.sub(r"<[^>]+>", " ", match.group(2))


def test_status_page_after_pulls_then_with_the_upstream_down(
    bed: Bed, observed: Observed, tmp_path: Path
) -> None:
    need_binary("chromium")
    assert main(["warm", "--mirror", observed.mirror.url, "hello"]) == 0
    assert main(["warm", "--mirror", observed.mirror.url, "hello"]) == 0

    dom = render(observed, tmp_path / "status-ok.png")
    assert text_of(dom, "status").strip() == "ok"
    assert text_of(dom, "upstream-state").strip() == "reachable"
    assert "library/hello:latest" in text_of(dom, "images")
    assert not text_of(dom, "cache-size").startswith(" 0 B")
    assert "None." in text_of(dom, "errors")

    bed.front.stop()
    # A tag the cache lacks: the mirror asks the upstream, and fails (a /v2/ without
    # credentials would not do: it is answered from the challenge the mirror knows).
    answer = httpx.get(f"{observed.mirror.url}/v2/library/hello/manifests/other", timeout=30)
    assert answer.status_code in (502, 504), answer.text
    dom = render(observed, tmp_path / "status-upstream-down.png")
    assert text_of(dom, "status").strip() == "degraded"
    assert text_of(dom, "upstream-state").strip() == "unreachable"
    assert "unreachable" in text_of(dom, "errors")
    assert "library/hello:latest" in text_of(dom, "images")  # what it knew is still shown


def test_status_page_with_an_empty_cache(observed: Observed, tmp_path: Path) -> None:
    need_binary("chromium")
    dom = render(observed, tmp_path / "status-empty.png")
    assert text_of(dom, "cache-size").split()[:2] == ["0", "B"]
    assert "No pulls yet." in text_of(dom, "images")
    assert "None." in text_of(dom, "errors")
    assert "no TLS listener" in text_of(dom, "certificate")


# --- what the limits refuse -----------------------------------------------------------------


def test_what_the_limits_refuse_is_counted_by_the_setting_that_refused_it(
    start_mirror: StartMirror,
) -> None:
    """A connection over ``limits.connections_per_client`` was answered 429 and closed, counted
    nowhere an operator could see; a request over ``limits.requests_per_minute`` was only a
    4xx among the 404s of images that do not exist. Both are now in docxy_refused_total,
    labelled with the setting to raise."""
    admin = free_port()
    mirror = start_mirror(
        "--set", f"server.admin_listen={LOOPBACK}:{admin}",
        "--set", "limits.connections_per_client=2",
        "--set", "limits.requests_per_minute=1",
        "--set", "limits.idle_timeout=600",
    )  # fmt: skip
    observed = Observed(mirror, f"http://{LOOPBACK}:{admin}")
    held: list[socket.socket] = []
    try:
        for _ in range(2):  # from 127.0.0.2, apart from the health checks' 127.0.0.1
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.connect((LOOPBACK, mirror.port))
            held.append(sock)
        over = socket.socket()
        over.bind(("127.0.0.2", 0))
        over.connect((LOOPBACK, mirror.port))
        over.settimeout(30)
        answer = over.recv(4096)
        over.close()
        assert answer.startswith(b"HTTP/1.1 429"), answer
    finally:
        for sock in held:
            sock.close()
    transport = httpx.HTTPTransport(local_address="127.0.0.3")
    with httpx.Client(base_url=mirror.url, transport=transport, timeout=30) as client:
        statuses = [client.get("/v2/").status_code for _ in range(2)]
    assert statuses == [401, 429]  # the registry's challenge, then the limit
    seen = observed.scrape()
    refused = {
        key.split("setting=")[1].rstrip("}"): value
        for key, value in seen.items()
        if key.startswith("docxy_refused_total{")
    }
    assert refused.get("limits.connections_per_client") == 1, refused
    assert refused.get("limits.requests_per_minute") == 1, refused
    assert refused.get("limits.max_connections") == 0, refused

"""``docxy health``: the probe the image's HEALTHCHECK runs against the configured listener."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from docxy.cli import healthcheck
from docxy.cli.exits import EXIT_CONFIG, EXIT_OK
from docxy.cli.healthcheck import EXIT_UNHEALTHY, local_urls
from docxy.cli.main import main
from docxy.config import HostPort
from lab.health import health_server as serving_health
from lab.ports import free_port

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("0.0.0.0", 80, "http://127.0.0.1:80/health"),
        ("", 8080, "http://127.0.0.1:8080/health"),
        ("127.0.0.5", 5000, "http://127.0.0.5:5000/health"),
        ("::1", 81, "http://[::1]:81/health"),
        ("mirror.internal", 80, "http://mirror.internal:80/health"),
    ],
)
def test_local_url_reaches_the_listener_from_this_host(host: str, port: int, url: str) -> None:
    assert local_urls(HostPort(host, port))[0] == url


def test_a_wildcard_ipv6_listener_is_asked_on_both_loopbacks_ipv4_first() -> None:
    """``[::]`` is dual-stack (the mirror turns IPV6_V6ONLY off), and IPv4 loopback exists where
    IPv6 loopback may not (containers)."""
    urls = ["http://127.0.0.1:80/health", "http://[::1]:80/health"]
    assert local_urls(HostPort("::", 80)) == urls
    assert local_urls(HostPort("::", 80))[0] == urls[0]


@pytest.fixture
def health_server(request: pytest.FixtureRequest) -> Iterator[int]:
    with serving_health(request.param, b'{"status": "degraded", "version": "0.1.0"}') as server:
        yield server.port


@pytest.mark.parametrize(
    ("health_server", "code"), [(200, EXIT_OK), (503, EXIT_UNHEALTHY)], indirect=["health_server"]
)
def test_health_follows_the_configured_listener(
    health_server: int,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The listener comes from the config, as in the container (DOCXY_SERVER_LISTEN moved).
    monkeypatch.setenv("DOCXY_SERVER_LISTEN", f"127.0.0.1:{health_server}")
    assert main(["health"]) == code
    out, err = capsys.readouterr()
    said = out if code == EXIT_OK else err
    assert f"127.0.0.1:{health_server}/health" in said
    if code == EXIT_OK:
        assert "degraded" in out  # degraded still serves: healthy for Docker


@pytest.mark.parametrize("body", [b"[1]", b'"ok"', b"not json", b"{}", b'{"status": "UP"}'])
def test_a_200_that_is_no_health_report_is_unhealthy_without_a_traceback(
    body: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another server on the port (host networking, a listener moved onto a port something
    else holds, the mirror never started): its 200 is not the mirror up (it counted as
    healthy until test_review_warm3); what it is said plainly, never a traceback."""
    with serving_health(200, body) as server:
        assert main(["health", "--listen", f"127.0.0.1:{server.port}"]) == EXIT_UNHEALTHY
    err = capsys.readouterr().err
    assert err.startswith(f"http://127.0.0.1:{server.port}/health: HTTP 200, but not Docxy's")
    assert "Traceback" not in err


def test_health_with_nothing_listening_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["health", "--listen", f"127.0.0.1:{port}", "--timeout", "2"]) == EXIT_UNHEALTHY
    assert f"127.0.0.1:{port}/health: Connect" in capsys.readouterr().err


def test_health_config_error_is_said_and_the_listener_still_probed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Never exit 2 (Docker reserves it for a HEALTHCHECK): the error on stderr, and the
    listener probed all the same (more in test_review_observe5)."""
    monkeypatch.setenv("DOCXY_SERVER_LISTEN", "0.0.0.0:80")  # wildcard without a public URL
    monkeypatch.setattr(healthcheck, "probe", lambda urls, timeout: (False, f"{urls[0]}: no"))
    assert main(["health"]) == EXIT_UNHEALTHY
    err = capsys.readouterr().err
    assert "config error: server.public_url" in err and "http://127.0.0.1:80/health: no" in err


@pytest.mark.parametrize("command", [["health"], ["warm", "--mirror", "http://127.0.0.1:9", "a"]])
@pytest.mark.parametrize("timeout", ["-1", "nan", "0", "soon"])
def test_a_timeout_that_is_no_wait_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], command: list[str], timeout: str
) -> None:
    """-1 and nan went on to the socket, and out of main as a traceback; 0 failed with a
    misleading read error."""
    assert main([*command, "--timeout", timeout]) == EXIT_CONFIG  # a usage error: 2
    err = capsys.readouterr().err
    assert "--timeout" in err and "Traceback" not in err

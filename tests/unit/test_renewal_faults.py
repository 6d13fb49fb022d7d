"""Renewer faults found by review, each shown by a test that failed on the code before its fix."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from lab.health import health_server
from scheduler.renewal import wait_for


@pytest.fixture
def mirror_health() -> Iterator[str]:
    """A plain-HTTP listener on loopback answering /health with 200, as the mirror does."""
    with health_server() as server:
        yield f"{server.url}/health"


def test_waiting_for_the_mirror_ignores_a_proxy_from_the_environment(
    mirror_health: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host behind a corporate proxy sets HTTP(S)_PROXY for everything (certbot reaches the CA
    through it). The renewer's wait for the mirror's own listener on this host must not go
    through that proxy, which cannot reach the container's loopback: with it, every first
    issuance waited its 120 s and failed ("did not answer"), for ever."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{unused.getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    wait_for(mirror_health, 0.0)  # one attempt: answered, or ValueError

"""What start-up warns about the upstream settings it accepts (``docxy.upstream.startup``)."""

from __future__ import annotations

import logging

import pytest

from docxy.config import load_config
from docxy.upstream.startup import upstream_warnings, warn_about_upstreams


def warnings_for(env: dict[str, str], **flags: str) -> list[str]:
    settings = {"server.listen": "127.0.0.1:8080", **flags}
    return upstream_warnings(load_config(settings, environ=env))


def test_plain_settings_warn_of_nothing() -> None:
    env = {"DOCXY_UPSTREAMS": "ghcr.io", "DOCXY_UPSTREAMS_GHCR_IO_HOSTS": "ghcr.mirror.example"}
    assert warnings_for(env, **{"server.public_url": "https://mirror.example"}) == []


@pytest.mark.parametrize(
    ("public_url", "hosts", "claimed"),
    [
        ("https://mirror.example", "mirror.example", "mirror.example"),
        ("https://mirror.example", "other.example,mirror.example:443", "mirror.example"),
        ("https://mirror.example:8443", "Mirror.Example", "mirror.example:8443"),
        ("http://127.0.0.1:8080", "127.0.0.1", "127.0.0.1:8080"),  # derived from the listener
    ],
)
def test_hosts_that_take_the_public_url_are_warned(
    public_url: str, hosts: str, claimed: str
) -> None:
    env = {"DOCXY_UPSTREAMS": "ghcr.io", "DOCXY_UPSTREAMS_GHCR_IO_HOSTS": hosts}
    flags = (
        {} if public_url.startswith("http://127.0.0.1:8080") else {"server.public_url": public_url}
    )
    (line,) = warnings_for(env, **flags)
    assert line.startswith("upstreams.ghcr.io.hosts: ")
    assert f"{claimed} of server.public_url ({public_url})" in line
    assert "Docker's registry-mirrors" in line and "ghcr.io" in line
    assert "?ns=docker.io" in line  # the only way left to Docker Hub under that name
    # and the client's login for the name goes with its requests: to ghcr.io's token service
    assert "Docker Hub login" in line and "goes to ghcr.io's token service" in line
    assert "(env DOCXY_UPSTREAMS_GHCR_IO_HOSTS)" in line


def test_another_port_of_the_public_host_is_not_warned() -> None:
    env = {"DOCXY_UPSTREAMS": "ghcr.io", "DOCXY_UPSTREAMS_GHCR_IO_HOSTS": "mirror.example:5000"}
    assert warnings_for(env, **{"server.public_url": "https://mirror.example"}) == []


def test_the_same_upstream_under_two_names_is_said() -> None:
    env = {"DOCXY_UPSTREAMS": "ghcr.io,ghcr.alias.example=https://ghcr.io"}
    (line,) = warnings_for(env, **{"server.public_url": "https://mirror.example"})
    assert line.startswith("upstreams.ghcr.alias.example.registry: ")
    assert "registry host ghcr.io of upstreams.ghcr.io" in line
    assert "one upstream under two names" in line
    # what "alike" means: every setting that would otherwise refuse the pair (ca_file too)
    assert "the same login, auth_realm, ca_file and ca_origins" in line


def test_each_warning_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    env = {"DOCXY_UPSTREAMS": "ghcr.io", "DOCXY_UPSTREAMS_GHCR_IO_HOSTS": "mirror.example"}
    config = load_config(
        {"server.listen": "127.0.0.1:8080", "server.public_url": "https://mirror.example"},
        environ=env,
    )
    with caplog.at_level(logging.WARNING, logger="docxy.upstream.startup"):
        warn_about_upstreams(config)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert caplog.records[0].getMessage() == upstream_warnings(config)[0]

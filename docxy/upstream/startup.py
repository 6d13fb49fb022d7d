"""What start-up warns about in upstream settings it accepts: one log line each.

Refusals are the settings loader's (``docxy.upstream.settings``); these are settings a careful
operator may mean, whose effect is easy to miss::

    upstreams.ghcr.io.hosts = mirror.example.com   # the host of server.public_url: requests by
                                                   # the mirror's own name go to ghcr.io
    two upstreams on one registry host, alike      # one upstream under two names
"""

from __future__ import annotations

import logging

from docxy.config import Config
from docxy.core.hosts import url_host
from docxy.upstream.routing import configured_upstreams
from docxy.upstream.settings import SECTION, same_registry_host

log = logging.getLogger(__name__)


def upstream_warnings(config: Config) -> list[str]:
    lines = [
        f"{shared.later}.registry: {shared.registry} has the registry host {shared.host} of "
        f"{shared.earlier}, with the same login, auth_realm, ca_file and ca_origins: one "
        f"upstream under two names, sharing one cache, one set of tokens and one health entry"
        for shared in same_registry_host(config)
        if not shared.differences
    ]
    claim = _public_host_claim(config)
    return lines if claim is None else [*lines, claim]


def _public_host_claim(config: Config) -> str | None:
    """The line for an upstream whose ``hosts`` pick requests sent to ``server.public_url``."""
    upstreams = configured_upstreams(config)
    public = config.server.public_url
    host = url_host(public)
    found = upstreams.for_host(host)
    if found is None:
        return None
    key = f"{SECTION}.{found.name}.hosts"
    return (
        f"{key}: takes the host {host} of server.public_url ({public}): every request by the "
        f"mirror's own name goes to {found.name}, Docker's registry-mirrors pulls included; "
        f"Docker Hub ([upstream]) is reached by that name only with containerd's ?ns=docker.io; "
        f"and the login a client holds for that name (dockerd's Docker Hub login, sent through "
        f"registry-mirrors) goes to {found.name}'s token service "
        f"({config.sources.get(key, 'default')})"
    )


def warn_about_upstreams(config: Config) -> None:
    for line in upstream_warnings(config):
        log.warning("%s", line)

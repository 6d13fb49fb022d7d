"""Second review of the mirror's own access control (``docxy.access``, the token endpoint and
the README's "Access control" and "Threat model").

Each fault found is a test asserting the right behaviour; it was seen failing (strict xfail)
before the code was mended.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.access.gate import refuse_plain_http
from docxy.config import load_config
from docxy.core.errors import ConfigError


@pytest.mark.parametrize("public_url", ["http://mirror.example:8080", "http://192.0.2.10"])
def test_users_mode_with_a_plain_http_public_url_off_loopback_is_refused(
    tmp_path: Path, public_url: str
) -> None:
    """The README: users mode "needs HTTPS: passwords and tokens must not cross the network in
    clear", a loopback ``server.listen`` being allowed as the back of a TLS proxy on the same
    host. But ``server.public_url`` is what every challenge sends clients to (the realm,
    ``<public_url>/auth/token``): an ``http://`` one on another host sends each ``docker
    login`` password there in clear, whatever the listener, and the mirror started without a
    word. It is refused as a plain-HTTP listener off loopback is, naming
    ``auth.allow_plain_http``."""
    settings = {
        "cache.dir": str(tmp_path),
        "auth.mode": "users",
        "server.listen": "127.0.0.1:8080",
        "server.public_url": public_url,
    }
    config = load_config(settings, environ={})
    with pytest.raises(ConfigError, match="auth.allow_plain_http") as refused:
        refuse_plain_http(config)
    said = str(refused.value)
    assert said.startswith("auth.mode:") and "server.public_url" in said and "\n" not in said
    allowed = load_config({**settings, "auth.allow_plain_http": "true"}, environ={})
    refuse_plain_http(allowed)  # the operator's opt-in, for a network it trusts


@pytest.mark.parametrize(
    "public_url", ["https://mirror.example", "http://127.0.0.1:8080", "http://localhost:8080"]
)
def test_users_mode_behind_a_tls_proxy_or_on_loopback_only_still_starts(
    tmp_path: Path, public_url: str
) -> None:
    """Guard for the above: a TLS proxy in front (an ``https://`` public URL) and a mirror
    reached on loopback only (the tests, a client on the same host) are not refused."""
    settings = {
        "cache.dir": str(tmp_path),
        "auth.mode": "users",
        "server.listen": "127.0.0.1:8080",
        "server.public_url": public_url,
    }
    refuse_plain_http(load_config(settings, environ={}))

"""Users mode over plain HTTP off loopback would take passwords in clear: the mirror refuses
to start (exit 2, one line naming the settings) unless ``auth.allow_plain_http`` says so.
Loopback listeners (the tests, a TLS proxy on the same host) and TLS listeners stay allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from docxy.access.gate import refuse_plain_http
from docxy.config import load_config
from docxy.core.errors import ConfigError
from lab.mirror import mirror_env
from tests.unavailable import need_binary, need_root

USERS = {"auth.mode": "users", "server.public_url": "http://mirror.example:8080"}
#: a loopback listener behind a TLS proxy: clients are sent to the proxy's https:// URL (an
#: http:// one off loopback is refused too: test_review_access2)
BEHIND_TLS = {"server.public_url": "https://mirror.example"}


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "192.0.2.10:8080", "m.test:80"])
def test_users_mode_off_loopback_over_plain_http_is_refused(tmp_path: Path, listen: str) -> None:
    config = load_config({"cache.dir": str(tmp_path), "server.listen": listen, **USERS}, environ={})
    with pytest.raises(ConfigError, match="auth.allow_plain_http") as refused:
        refuse_plain_http(config)
    assert str(refused.value).startswith("auth.mode:")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"server.listen": "127.0.0.1:8080", **USERS, **BEHIND_TLS},  # a TLS proxy in front
        {"server.listen": "127.0.0.5:8080", **USERS, **BEHIND_TLS},
        {"server.listen": "[::1]:8080", **USERS, **BEHIND_TLS},
        {"server.listen": "localhost:8080", **USERS, **BEHIND_TLS},
        {"server.listen": "127.0.0.1:8080", **USERS, "server.public_url": "http://127.0.0.1:8080"},
        {"server.listen": "0.0.0.0:8080", **USERS, "auth.allow_plain_http": "true"},
        {
            "server.listen": "0.0.0.0:80",
            "server.tls_listen": "0.0.0.0:443",
            "server.public_url": "https://mirror.example",
            "auth.mode": "users",
        },
        {"server.listen": "0.0.0.0:8080", "server.public_url": "http://m.example:8080"},  # open
    ],
)
def test_loopback_tls_open_mode_and_the_opt_in_are_allowed(
    tmp_path: Path, settings: dict[str, str]
) -> None:
    config = load_config({"cache.dir": str(tmp_path), **settings}, environ={})
    refuse_plain_http(config)  # no error


def test_serve_exits_2_with_one_line_before_listening(tmp_path: Path) -> None:
    """192.0.2.10 is not an address of this host: the refusal must come before any bind
    (which would fail with another message), and nothing is contacted."""
    env = mirror_env(tmp_path, {"DOCXY_AUTH_MODE": "users", "DOCXY_AUTH_DIR": str(tmp_path)})
    command = [sys.executable, "-m", "docxy", "serve", "--listen", "192.0.2.10:8080"]
    command += ["--public-url", "http://mirror.example:8080", "--upstream", "http://127.0.0.1:9"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "auth.allow_plain_http" in lines[0] and "env DOCXY_AUTH_MODE" in lines[0]
    # with the opt-in, the check passes: what stops it now is the address it cannot bind
    env["DOCXY_AUTH_ALLOW_PLAIN_HTTP"] = "true"
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "server.listen: cannot listen on 192.0.2.10:8080" in result.stderr
    assert "auth.allow_plain_http" not in result.stderr


PROBE_V6ONLY = """
import socket
from docxy.http.server import _HypercornConfig
config = _HypercornConfig(None)
config.bind = ["[::]:0"]
[sock] = config.create_sockets().insecure_sockets
print(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
"""


def test_a_wildcard_ipv6_listener_takes_ipv4_too_whatever_bindv6only_says() -> None:
    """``[::]`` (compose.host.yaml's default) is one socket for both families only while
    ``IPV6_V6ONLY`` is off, which ``net.ipv6.bindv6only=1`` turns on by default: IPv4 clients
    then lost a mirror that had listened on 0.0.0.0. The listener turns it off itself. Run in a
    network namespace of its own (root), whose bindv6only is set to 1."""
    need_root("a network namespace whose bindv6only is 1")
    need_binary("unshare")
    script = f"echo 1 >/proc/sys/net/ipv6/bindv6only && exec {sys.executable} -c '{PROBE_V6ONLY}'"
    probe = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert (probe.returncode, probe.stdout.strip()) == (0, "0"), probe.stderr

"""Review of scripts/install.sh's port check: it asked for host ports 80 and 443 whatever .env
published, so a host whose proxy holds 443, with the mirror moved by DOCXY_HTTPS_PORT (the
README's way to make room for it), stopped at "free ports 80 and 443" before any change.

Same sandbox as tests/unit/test_install_script.py (its box, stand-ins and helpers, its dnsmasq
helper, here on 127.0.56.2:10951). The addresses in .env (127.0.56.1, 127.0.56.3, ports
10955-10958) are values only: nothing listens there. The `ss` stand-in prints the listeners it
was given whatever filter it is asked with, so the script must read which address and port
each one holds.
"""

from __future__ import annotations

import re
import shutil

import pytest

from tests.scriptbox import REPO, Rule, ScriptBox, output
from tests.unit.test_install_script import (
    COMPOSE_UP,
    DOMAIN,
    HEALTHY,
    Resolver,
    env_file,
    install,
    resolver_on,
)
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)
from tests.unit.test_review_install import docker_refuses_this_user

MOVED = "127.0.56.1"


resolver = resolver_on("127.0.56.2", 10951)  # this module's own address and port


def listening(box: ScriptBox, *addresses: str) -> None:
    """The `ss` stand-in: something else (nginx) listens on each ADDRESS:PORT."""
    lines = "".join(
        f"LISTEN 0 511 {address} {'[::]:*' if address.startswith('[') else '0.0.0.0:*'} "
        f'users:(("nginx",pid={812 + i},fd=6))\n'
        for i, address in enumerate(addresses)
    )
    box.stand_in("ss", Rule(r".", stdout=lines))


def healthy_at(box: ScriptBox, port: int, address: str) -> str:
    """The curl stand-in answers /health on PORT at ADDRESS only; the URL the script asks."""
    url = f"https://{DOMAIN}:{port}/health"
    box.stand_in(
        "curl",
        Rule(re.escape(f"--resolve {DOMAIN}:{port}:{address} {url}"), stdout=HEALTHY),
        Rule(r".", rc=7, stderr="curl: (7) the stand-in reaches nothing\n"),
    )
    return url


def write_env(box: ScriptBox, *lines: str) -> None:
    env_file(box).write_text("".join(f"{line}\n" for line in lines))


# --- the HTTPS port moved off a 443 that a proxy holds ------------------------------------------


@pytest.mark.parametrize(
    "held",
    [
        pytest.param(("0.0.0.0:443", "[::]:443"), id="443-wildcard"),
        # The moved port, on other addresses than the mirror's: no conflict.
        pytest.param(("0.0.0.0:443", "127.0.56.3:10955"), id="same-port-other-address"),
    ],
)
def test_a_moved_https_port_lets_the_install_go_on_with_443_taken(
    box: ScriptBox, resolver: Resolver, held: tuple[str, ...]
) -> None:
    """DOCXY_HTTPS_PORT moves compose.yaml's published port (README: room for a proxy on this
    host). The check asked for 443 anyway and stopped a first install that would have run."""
    write_env(box, f"DOCXY_HTTPS_PORT={MOVED}:10955")
    listening(box, *held)
    url = healthy_at(box, 10955, MOVED)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert box.called(COMPOSE_UP)
    assert f"{url}: {HEALTHY}" in result.stdout
    assert f"{MOVED}:10955" in result.stdout and "free" in result.stdout, result.stdout


@pytest.mark.parametrize(
    "held",
    [
        pytest.param(f"{MOVED}:10955", id="same-address"),
        pytest.param("0.0.0.0:10955", id="ipv4-wildcard"),
        # ss prints a dual-stack IPv6 wildcard as *, and [::] only for a v6only socket (which
        # leaves IPv4 free: see test_a_v6only_wildcard_leaves_an_ipv4_address_free).
        pytest.param("*:10955", id="ipv6-wildcard"),
    ],
)
def test_a_moved_https_port_that_is_taken_is_refused_by_name(
    box: ScriptBox, resolver: Resolver, held: str
) -> None:
    write_env(box, f"DOCXY_HTTPS_PORT={MOVED}:10955")
    listening(box, held)

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert not box.called(COMPOSE_UP)
    assert "nginx" in result.stdout
    refusal = result.stderr.replace(str(env_file(box)), ".env")  # its path may hold a 443
    assert f"{MOVED}:10955" in refusal and "DOCXY_HTTPS_PORT" in refusal, refusal
    assert "443" not in refusal.replace("10955", ""), refusal  # 443 is not the mirror's here


def test_443_taken_with_nothing_moved_is_refused_naming_the_variable(
    box: ScriptBox, resolver: Resolver
) -> None:
    listening(box, "0.0.0.0:443")

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert not box.called(COMPOSE_UP)
    assert "free port 443" in result.stderr and "DOCXY_HTTPS_PORT" in result.stderr, output(result)
    assert "DOCXY_HTTP_PORT" not in result.stderr  # 80 is free


def test_free_default_ports_are_said_as_before(box: ScriptBox, resolver: Resolver) -> None:
    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert "Ports 80, 443 and 127.0.0.1:9180: free" in result.stdout
    assert "HTTP-01" not in result.stderr


# --- the plain port moved: Let's Encrypt still asks port 80 -------------------------------------


def test_a_moved_http_port_goes_on_with_80_taken_and_warns_of_lets_encrypt(
    box: ScriptBox, resolver: Resolver
) -> None:
    """The domain's certificate comes by HTTP-01 on port 80 of the domain's address: with the
    mirror's plain port elsewhere it cannot be issued unless something forwards 80 to it. Said,
    not refused (a proxy on 80 may forward the challenge)."""
    write_env(box, f"DOCXY_HTTP_PORT={MOVED}:10956", f"DOCXY_HTTPS_PORT={MOVED}:10955")
    listening(box, "0.0.0.0:80", "0.0.0.0:443")
    healthy_at(box, 10955, MOVED)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert box.called(COMPOSE_UP)
    warning = result.stderr
    assert "DOCXY_HTTP_PORT" in warning and "HTTP-01" in warning and "port 80" in warning, warning


def test_a_taken_http_port_is_refused_by_name(box: ScriptBox, resolver: Resolver) -> None:
    write_env(box, "DOCXY_HTTP_PORT=10956")
    listening(box, "[::]:10956")

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert "port 10956" in result.stderr and "DOCXY_HTTP_PORT" in result.stderr, output(result)


# --- host networking: the listeners DOCXY_SERVER_(TLS_)LISTEN name ------------------------------


def host_networking(box: ScriptBox, *lines: str) -> None:
    shutil.copy(REPO / "compose.host.yaml", box.base / "clone" / "compose.host.yaml")
    write_env(box, "COMPOSE_FILE=compose.host.yaml", *lines)


def test_host_networking_checks_the_tls_listen_port(box: ScriptBox, resolver: Resolver) -> None:
    host_networking(box, f"DOCXY_SERVER_TLS_LISTEN={MOVED}:10957")
    listening(box, "0.0.0.0:443")
    url = healthy_at(box, 10957, MOVED)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert f"{url}: {HEALTHY}" in result.stdout


def test_host_networking_refuses_a_taken_tls_listen_port_by_name(
    box: ScriptBox, resolver: Resolver
) -> None:
    host_networking(box, f"DOCXY_SERVER_TLS_LISTEN={MOVED}:10957")
    listening(box, "0.0.0.0:10957")

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert "DOCXY_SERVER_TLS_LISTEN" in result.stderr and "10957" in result.stderr, output(result)


# --- how ss shows what it holds: mapped IPv4, the v6only wildcard -------------------------------


def test_an_ipv4_mapped_listener_on_the_moved_address_is_refused(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A Java server binds IPv4 through an IPv6 socket: ss shows [::ffff:127.0.0.1]:8080. It
    was compared as ::ffff:127.0.0.1 with the mirror's 127.0.0.1, taken for free, and compose up
    failed on the bind after the run had made its changes."""
    test_a_moved_https_port_that_is_taken_is_refused_by_name(
        box, resolver, f"[::ffff:{MOVED}]:10955"
    )


def test_a_v6only_wildcard_leaves_an_ipv4_address_free(box: ScriptBox, resolver: Resolver) -> None:
    """[::] in ss's output is a v6only socket (a dual-stack one shows as *): an IPv4 address's
    bind on the same port works, and the run was refused."""
    test_a_moved_https_port_lets_the_install_go_on_with_443_taken(
        box, resolver, ("0.0.0.0:443", "[::]:10955")
    )


def test_a_v6only_wildcard_clashes_with_an_ipv6_address(box: ScriptBox, resolver: Resolver) -> None:
    write_env(box, "DOCXY_HTTPS_PORT=[::1]:10955")
    listening(box, "[::]:10955")

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert not box.called(COMPOSE_UP)
    assert "[::1]:10955" in result.stderr and "DOCXY_HTTPS_PORT" in result.stderr, output(result)


# --- HTTP-01: port 80 is port 80, on whichever public address -----------------------------------


def test_port_80_on_a_named_address_does_not_warn_of_http01(
    box: ScriptBox, resolver: Resolver
) -> None:
    write_env(box, "DOCXY_HTTP_PORT=203.0.113.7:80")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert "HTTP-01" not in result.stderr, result.stderr
    assert "Ports 203.0.113.7:80, 443 and 127.0.0.1:9180: free" in result.stdout, result.stdout


@pytest.mark.parametrize("address", ["127.0.0.1", "[::1]"])
def test_port_80_on_loopback_only_warns_of_http01(
    box: ScriptBox, resolver: Resolver, address: str
) -> None:
    """Let's Encrypt cannot reach a loopback address: the warning stays."""
    write_env(box, f"DOCXY_HTTP_PORT={address}:80")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert "HTTP-01" in result.stderr and "DOCXY_HTTP_PORT" in result.stderr, result.stderr


# --- the ports said are the ports taken ---------------------------------------------------------


def test_a_dry_run_that_cannot_ask_docker_names_only_the_taken_port(
    box: ScriptBox, resolver: Resolver
) -> None:
    listening(box, "0.0.0.0:443")
    docker_refuses_this_user(box)

    result = install(box, resolver, "--dry-run")

    assert result.returncode == 0, output(result)
    assert "Port 443 is in use, by Docxy or not" in result.stdout, result.stdout
    assert "80" not in result.stdout.split("is in use")[0].splitlines()[-1], result.stdout


def test_one_port_checked_is_said_in_the_singular(box: ScriptBox, resolver: Resolver) -> None:
    # With the admin listener off (host networking), the one left is port 80.
    host_networking(box, "DOCXY_SERVER_TLS_LISTEN=https", "DOCXY_SERVER_ADMIN_LISTEN=")

    result = install(box, resolver)

    assert "DOCXY_SERVER_TLS_LISTEN" in result.stdout and "not checked" in result.stdout, output(
        result
    )
    assert "Port 80: free" in result.stdout, result.stdout

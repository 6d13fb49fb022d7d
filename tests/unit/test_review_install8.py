"""Review of scripts/install.sh's port checks, third pass: the ufw advice with host networking,
the admin port, an old `ss`'s unbracketed IPv6 listeners, and the one choice of compose file.

Same sandbox as tests/unit/test_install_script.py (its box, stand-ins and helpers, its dnsmasq
helper, here on 127.0.67.2:11502). The addresses and ports in .env (127.0.67.1, ports
11510-11539) are values only: nothing listens there. The `ss` stand-in prints the listeners it
was given whatever filter it is asked with, so the script must read which address and port
each one holds.
"""

from __future__ import annotations

import re

import pytest

from tests.scriptbox import Rule, ScriptBox, output
from tests.unit.test_install_script import COMPOSE_UP, Resolver, install, resolver_on
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)
from tests.unit.test_review_install5 import compose_files, install_v6, with_host_file
from tests.unit.test_review_install6 import healthy_at, host_networking, listening, write_env

MOVED = "127.0.67.1"


resolver = resolver_on("127.0.67.2", 11502)  # this module's own address and port


def ufw_active(box: ScriptBox) -> None:
    box.stand_in("ufw", Rule(r"^status", stdout="Status: active\n\nTo Action From\n"))


def allowed(stderr: str) -> list[str]:
    """The ports the ufw advice opens: every `ufw allow PORT/tcp` it says."""
    return re.findall(r"ufw allow (\d+)/tcp", stderr)


# --- 1. the ufw advice names the ports host networking takes ------------------------------------


def test_ufw_advice_names_the_moved_listen_ports_and_port_80_for_http01(
    box: ScriptBox, resolver: Resolver
) -> None:
    """With DOCXY_SERVER_LISTEN/TLS_LISTEN moved, `ufw allow 80/tcp && ufw allow 443/tcp`
    opened ports the mirror does not take and left its own closed: clients' HTTPS dropped.
    Port 80 is still named: Let's Encrypt's HTTP-01 comes there, to what forwards it."""
    host_networking(box, "DOCXY_SERVER_LISTEN=[::]:11510", "DOCXY_SERVER_TLS_LISTEN=[::]:11511")
    ufw_active(box)
    healthy_at(box, 11511, "127.0.0.1")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    ports = allowed(result.stderr)
    assert "11510" in ports and "11511" in ports, result.stderr
    assert "443" not in ports, result.stderr
    assert "80" in ports and "HTTP-01" in result.stderr, result.stderr
    assert not box.called(r"^ufw (allow|enable|disable)"), "the firewall is the operator's"


def test_ufw_advice_leaves_out_a_loopback_listener(box: ScriptBox, resolver: Resolver) -> None:
    """ufw lets loopback through: a port bound on 127.0.0.1 needs no rule (and no other host
    reaches it)."""
    host_networking(box, f"DOCXY_SERVER_TLS_LISTEN={MOVED}:11512")
    ufw_active(box)
    healthy_at(box, 11512, MOVED)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert allowed(result.stderr) == ["80"], result.stderr


def test_ufw_advice_for_the_default_ports_is_as_before(box: ScriptBox, resolver: Resolver) -> None:
    host_networking(box)
    ufw_active(box)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert "sudo ufw allow 80/tcp && sudo ufw allow 443/tcp" in result.stderr, result.stderr


# --- 2. the admin port --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "held", "said", "name"),
    [
        pytest.param((), "127.0.0.1:9180", "127.0.0.1:9180", "DOCXY_ADMIN_PORT", id="default"),
        pytest.param((), "0.0.0.0:9180", "127.0.0.1:9180", "DOCXY_ADMIN_PORT", id="v4-wildcard"),
        pytest.param((), "*:9180", "127.0.0.1:9180", "DOCXY_ADMIN_PORT", id="dual-wildcard"),
        pytest.param(
            ("DOCXY_ADMIN_PORT=11520",),
            "127.0.0.1:11520",
            "127.0.0.1:11520",
            "DOCXY_ADMIN_PORT",
            id="moved",
        ),
    ],
)
def test_a_taken_admin_port_is_refused_before_any_change(
    box: ScriptBox, resolver: Resolver, env: tuple[str, ...], held: str, said: str, name: str
) -> None:
    """compose.yaml publishes 127.0.0.1:${DOCXY_ADMIN_PORT:-9180}: with that port taken the
    checks passed and `compose up` failed on the bind, after .env was written."""
    write_env(box, *env)
    listening(box, held)

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert not box.called(COMPOSE_UP)
    assert said in result.stderr and name in result.stderr, output(result)


@pytest.mark.parametrize("held", ["127.0.0.2:9180", "[::1]:9180", "127.0.0.1:11520"])
def test_the_admin_port_on_other_addresses_or_moved_away_is_free(
    box: ScriptBox, resolver: Resolver, held: str
) -> None:
    if held.endswith("11520"):
        write_env(box)  # 11520 is not the admin port unless moved there
    else:
        write_env(box, "DOCXY_ADMIN_PORT=9180")
    listening(box, held)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert "127.0.0.1:9180: free" in result.stdout, result.stdout


def test_host_networking_checks_the_admin_listen_setting(
    box: ScriptBox, resolver: Resolver
) -> None:
    """compose.host.yaml binds DOCXY_SERVER_ADMIN_LISTEN on the host (127.0.0.1:9180 by
    default); DOCXY_ADMIN_PORT does nothing there."""
    host_networking(box, f"DOCXY_SERVER_ADMIN_LISTEN={MOVED}:11521", "DOCXY_ADMIN_PORT=11522")
    listening(box, f"{MOVED}:11521", "127.0.0.1:11522")

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert not box.called(COMPOSE_UP)
    refusal = result.stderr
    assert f"{MOVED}:11521" in refusal and "DOCXY_SERVER_ADMIN_LISTEN" in refusal, refusal
    assert "11522" not in refusal and "DOCXY_ADMIN_PORT" not in refusal, refusal


def test_host_networking_with_the_admin_listener_off_does_not_check_it(
    box: ScriptBox, resolver: Resolver
) -> None:
    """An empty DOCXY_SERVER_ADMIN_LISTEN turns the listener off (compose.host.yaml's `-`)."""
    host_networking(box, "DOCXY_SERVER_ADMIN_LISTEN=")
    listening(box, "127.0.0.1:9180")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert "9180" not in result.stdout, result.stdout


# --- 3. an old ss: IPv6 addresses without brackets ----------------------------------------------

# As an older ss prints them (iproute 3.10, CentOS 7): no -H, the IPv4 wildcard as *, an IPv6 socket
# (dual-stack or v6only: it does not say) as :::PORT, no brackets round IPv6 addresses.
OLD_HEADER = (
    "State      Recv-Q Send-Q Local Address:Port               Peer Address:Port              \n"
)
OLD_SSHD = 'LISTEN     0      128       :::{port}                      :::*                   users:(("sshd",pid=1096,fd=4))\n'  # noqa: E501


def old_ss(box: ScriptBox, *lines: str) -> None:
    box.stand_in(
        "ss",
        Rule(r"(^| )-[a-zA-Z]*H", rc=255, stderr="ss: invalid option -- 'H'\n"),
        Rule(r".", stdout=OLD_HEADER + "".join(lines)),
    )


def test_an_old_ss_without_h_is_still_asked(box: ScriptBox, resolver: Resolver) -> None:
    """`ss -H` (no header) is refused by an older ss: the check was skipped as "ss failed"."""
    old_ss(box, OLD_SSHD.format(port=443))

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert "free port 443" in result.stderr, output(result)


def test_an_old_ss_ipv6_wildcard_clashes_with_an_ipv4_address(
    box: ScriptBox, resolver: Resolver
) -> None:
    """:::11530 from an old ss may be a dual-stack socket (Linux's default), which holds the
    port on IPv4 too: it was read as [::], v6only, and the IPv4 address taken for free."""
    write_env(box, f"DOCXY_HTTPS_PORT={MOVED}:11530")
    old_ss(box, OLD_SSHD.format(port=11530))

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert not box.called(COMPOSE_UP)
    assert f"{MOVED}:11530" in result.stderr and "DOCXY_HTTPS_PORT" in result.stderr, output(result)


def test_an_old_ss_ipv6_address_is_read_whole(box: ScriptBox, resolver: Resolver) -> None:
    write_env(box, "DOCXY_HTTPS_PORT=[::1]:11531")
    line = 'LISTEN     0      128       ::1:11531                  :::*                   users:(("java",pid=77,fd=9))\n'  # noqa: E501
    old_ss(box, line)

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert "[::1]:11531" in result.stderr and "java" in result.stdout, output(result)


def test_an_old_ss_other_ipv6_address_leaves_ours_free(box: ScriptBox, resolver: Resolver) -> None:
    write_env(box, "DOCXY_HTTPS_PORT=[::1]:11532")
    line = 'LISTEN     0      128       fe80::1%eth0:11532         :::*                   users:(("java",pid=77,fd=9))\n'  # noqa: E501
    old_ss(box, line)
    healthy_at(box, 11532, "[::1]")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert re.search(r"\[::1\]:11532[^\n]*: free", result.stdout), result.stdout


def test_an_old_ss_ipv4_wildcard_leaves_an_ipv6_address_free(
    box: ScriptBox, resolver: Resolver
) -> None:
    """An older ss prints the IPv4 wildcard as *: read as a dual-stack socket (as a newer ss
    means it), it refused an IPv6 address that is free."""
    write_env(box, "DOCXY_HTTPS_PORT=[::1]:11533")
    line = 'LISTEN     0      128       *:11533                    *:*                    users:(("nginx",pid=77,fd=9))\n'  # noqa: E501
    old_ss(box, line)
    healthy_at(box, 11533, "[::1]")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert re.search(r"\[::1\]:11533[^\n]*: free", result.stdout), result.stdout


def test_an_old_ss_ipv4_wildcard_clashes_with_an_ipv4_address(
    box: ScriptBox, resolver: Resolver
) -> None:
    write_env(box, f"DOCXY_HTTPS_PORT={MOVED}:11534")
    line = 'LISTEN     0      128       *:11534                    *:*                    users:(("nginx",pid=77,fd=9))\n'  # noqa: E501
    old_ss(box, line)

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert not box.called(COMPOSE_UP)
    assert f"{MOVED}:11534" in result.stderr, output(result)


def test_a_newer_ss_star_is_dual_stack_and_clashes_with_an_ipv6_address(
    box: ScriptBox, resolver: Resolver
) -> None:
    write_env(box, "DOCXY_HTTPS_PORT=[::1]:11535")
    listening(box, "*:11535")

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert not box.called(COMPOSE_UP)
    assert "[::1]:11535" in result.stderr, output(result)


def test_an_admin_port_with_an_address_stops_the_run_before_any_change(
    box: ScriptBox, resolver: Resolver
) -> None:
    """compose.yaml publishes 127.0.0.1:${DOCXY_ADMIN_PORT}: an ADDRESS:PORT there (as the HTTP
    and HTTPS ports take) makes an invalid port spec, and `compose up` failed after .env was
    written; the run said only that the port was not checked."""
    write_env(box, "DOCXY_ADMIN_PORT=127.0.0.1:11536")
    listening(box)

    result = install(box, resolver)

    assert result.returncode == 2, output(result)
    assert not box.called(COMPOSE_UP)
    assert "DOCXY_ADMIN_PORT=127.0.0.1:11536" in result.stderr, output(result)
    assert "port only" in result.stderr, output(result)


# --- 4. one choice of compose file --------------------------------------------------------------


def test_the_ports_checked_are_those_of_the_compose_file_the_stack_runs_from(
    box: ScriptBox, resolver: Resolver
) -> None:
    """The port check and settle_network each asked `ip route` whether the host is IPv6-only.
    An IPv4 route that comes up in between (a late DHCP lease on a host just booted, while apt
    installs dig) had the host networking's ports checked, and compose.yaml's started."""
    with_host_file(box)
    # After the first look, the IPv4 route is there.
    late = (
        'python3 -c \'import json,sys; p=sys.argv[1]; json.dump([{"pattern": "^-4 route", '
        '"stdout": "default via 203.0.113.1 dev eth0\\n", "rc": 0, "stderr": "", '
        '"passthrough": "", "effect": ""}, {"pattern": "^-6 route", "stdout": "default via '
        'fe80::1 dev eth0\\n", "rc": 0, "stderr": "", "passthrough": "", "effect": ""}], '
        'open(p, "w"))\' "$STANDINS/.rules/ip.json"'
    )
    box.stand_in(
        "ip",
        Rule(r"^-4 route", stdout="", effect=late),
        Rule(r"^-6 route", stdout="default via fe80::1 dev eth0\n"),
    )
    box.stand_in("curl", Rule(r"https://v6only.test/health", stdout="{}"), Rule(r".", rc=7))

    rc, out, err = install_v6(box, resolver)

    assert rc == 0, f"{out}\n{err}"
    assert compose_files(box) == [str(box.base / "clone" / "compose.host.yaml")], f"{out}\n{err}"
    assert len([c for c in box.calls("ip") if c.argv[:2] == ["-4", "route"]]) == 1

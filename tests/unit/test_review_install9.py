"""Review of scripts/install.sh, fourth pass: a listener named `localhost`, and the compose file
--uninstall brings down.

Same sandbox as tests/unit/test_install_script.py (its box, stand-ins and helpers, its dnsmasq
helper, here on 127.0.90.2:12610). The ports in .env (12611-12629) are values only: nothing
listens there. The `ss` stand-in prints the listeners it was given whatever filter it is asked
with.
"""

from __future__ import annotations

import re

import pytest

from tests.scriptbox import Rule, ScriptBox, output
from tests.unit.test_install_script import (
    COMPOSE_UP,
    DOMAIN,
    HEALTHY,
    Resolver,
    clone_script,
    env_file,
    install,
    resolver_on,
    stack_is_running,
)
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)
from tests.unit.test_review_install5 import install_v6, routes, with_host_file
from tests.unit.test_review_install6 import healthy_at, host_networking, listening
from tests.unit.test_review_install8 import allowed, ufw_active

# RFC 6761: `localhost` (any case, a trailing dot or not) is loopback whatever /etc/hosts says.
LOCALHOSTS = ["localhost", "localhost.", "LocalHost"]


resolver = resolver_on("127.0.90.2", 12610)  # this module's own address and port


def healthy_anywhere(box: ScriptBox, port: int) -> None:
    """The curl stand-in answers /health on PORT whatever address it is asked at."""
    box.stand_in(
        "curl",
        Rule(re.escape(f"https://{DOMAIN}:{port}/health"), stdout=HEALTHY),
        Rule(r".", rc=7, stderr="curl: (7) the stand-in reaches nothing\n"),
    )


# --- 1. `localhost` is loopback -----------------------------------------------------------------


@pytest.mark.parametrize("name", LOCALHOSTS)
def test_ufw_advice_leaves_out_a_localhost_listener(
    box: ScriptBox, resolver: Resolver, name: str
) -> None:
    """ufw passes loopback and no other host reaches it: DOCXY_SERVER_TLS_LISTEN=localhost:P
    had `sudo ufw allow P/tcp` advised, as for a public listener (127.0.0.1:P had none)."""
    host_networking(box, f"DOCXY_SERVER_TLS_LISTEN={name}:12611")
    ufw_active(box)
    healthy_anywhere(box, 12611)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert allowed(result.stderr) == ["80"], result.stderr


@pytest.mark.parametrize("name", LOCALHOSTS)
def test_port_80_on_localhost_warns_of_http01(
    box: ScriptBox, resolver: Resolver, name: str
) -> None:
    """Let's Encrypt cannot reach port 80 of localhost: it was taken for a named public address
    (the domain's), and the run went on without the warning that the certificate cannot be
    issued unless something forwards port 80 to it."""
    host_networking(box, f"DOCXY_SERVER_LISTEN={name}:80")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert "HTTP-01" in result.stderr and "DOCXY_SERVER_LISTEN" in result.stderr, result.stderr


@pytest.mark.parametrize("name", LOCALHOSTS)
def test_a_listener_on_127_0_0_1_clashes_with_localhost(
    box: ScriptBox, resolver: Resolver, name: str
) -> None:
    """The mirror binds a host name with an IPv4 socket (docxy/http/server.py): localhost is
    127.0.0.1 there. A listener on 127.0.0.1:P was compared with "localhost" as text, the port
    taken for free, and compose up failed on the bind after .env was written."""
    host_networking(box, f"DOCXY_SERVER_TLS_LISTEN={name}:12612")
    listening(box, "127.0.0.1:12612")

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert not box.called(COMPOSE_UP)
    assert f"{name}:12612" in result.stderr, output(result)
    assert "DOCXY_SERVER_TLS_LISTEN" in result.stderr, output(result)


def test_a_listener_on_another_loopback_address_leaves_localhost_free(
    box: ScriptBox, resolver: Resolver
) -> None:
    host_networking(box, "DOCXY_SERVER_TLS_LISTEN=localhost:12613")
    listening(box, "127.0.90.1:12613", "[::1]:12613")
    healthy_at(box, 12613, "127.0.0.1")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert "localhost:12613" in result.stdout and "free" in result.stdout, result.stdout


@pytest.mark.parametrize("name", LOCALHOSTS)
def test_the_health_wait_asks_localhost_at_127_0_0_1(
    box: ScriptBox, resolver: Resolver, name: str
) -> None:
    """curl --resolve takes a numeric address only: `--resolve DOMAIN:P:localhost` never
    reached the mirror, and the health wait timed out on a mirror that was up."""
    host_networking(box, f"DOCXY_SERVER_TLS_LISTEN={name}:12614")
    url = healthy_at(box, 12614, "127.0.0.1")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert f"{url}: {HEALTHY}" in result.stdout, output(result)


# --- 2. --uninstall brings down the file install chose ------------------------------------------


def compose_down_files(box: ScriptBox) -> list[str]:
    """The -f files of the `compose down` the script ran."""
    down = [c for c in box.calls("docker") if re.search(r"^docker compose .* down ", c.line)]
    assert down, "no compose down"
    argv = down[-1].argv
    return [argv[i + 1] for i, word in enumerate(argv) if word == "-f"]


def test_uninstall_brings_down_the_file_install_would_choose(
    box: ScriptBox, resolver: Resolver
) -> None:
    """On an IPv6-only host install chooses compose.host.yaml (choose_network, from the
    routes); --uninstall looked at .env's COMPOSE_FILE alone. With that line not there (a .env
    written before the choice was recorded, or edited by hand) it brought compose.yaml down:
    another network, another project model than the stack running."""
    routes(box, ipv4=False)
    with_host_file(box)
    box.stand_in("curl", Rule(r"https://v6only.test/health", stdout="{}"), Rule(r".", rc=7))
    rc, out, err = install_v6(box, resolver)
    assert rc == 0, f"{out}\n{err}"
    env = env_file(box)
    env.write_text(
        "".join(line + "\n" for line in env.read_text().splitlines() if "COMPOSE_FILE" not in line)
    )
    stack_is_running(box)
    box.forget_calls()

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 0, output(result)
    assert compose_down_files(box) == [str(box.base / "clone" / "compose.host.yaml")]


def test_uninstall_after_a_bridge_install_still_brings_down_compose_yaml(
    box: ScriptBox, resolver: Resolver
) -> None:
    routes(box, ipv4=True)
    with_host_file(box)
    assert install(box, resolver).returncode == 0
    stack_is_running(box)
    box.forget_calls()

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 0, output(result)
    assert compose_down_files(box) == [str(box.base / "clone" / "compose.yaml")]


def test_uninstall_without_compose_host_yaml_brings_down_compose_yaml(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A project copy without compose.host.yaml: compose down cannot read a file that is not
    there, so it goes with compose.yaml (the containers go by the project's name)."""
    routes(box, ipv4=False)
    env_file(box).write_text(f"DOCXY_DOMAIN={DOMAIN}\n")
    stack_is_running(box)

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 0, output(result)
    assert compose_down_files(box) == [str(box.base / "clone" / "compose.yaml")]

"""Review of scripts/install.sh, sixth pass: the mirror's URL where it is not https://DOMAIN,
and the compose project name a `docker compose` by hand in the project reads.

Same sandbox as tests/unit/test_install_script.py (its box, stand-ins and helpers, its dnsmasq
helper, here on 127.0.120.2:13210). The ports in .env (13211-13229) are values only: nothing
listens there.
"""

from __future__ import annotations

import re

from tests.scriptbox import Rule, ScriptBox, output
from tests.unavailable import need_binary
from tests.unit.test_install_script import (
    DOMAIN,
    HEALTHY,
    Resolver,
    env_file,
    install,
    resolver_on,
    stack_is_running,
)
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)

resolver = resolver_on("127.0.120.2", 13210)  # this module's own address and port


def healthy_at(box: ScriptBox, port: int, mirror: str = "") -> None:
    """The curl stand-in answers /health on PORT only; dockerd, reloaded, shows MIRROR
    (https://DOMAIN:PORT by default) among its registry mirrors."""
    mirror = mirror or f"https://{DOMAIN}:{port}"
    box.stand_in(
        "docker",
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r"^(volume|image) inspect", rc=1),
        Rule(r"^info", stdout=f'["{mirror}/"]\n'),
    )
    box.stand_in(
        "curl",
        Rule(r"file://", passthrough=need_binary("curl")),
        Rule(re.escape(f"https://{DOMAIN}:{port}/health"), stdout=HEALTHY),
        Rule(r".", rc=7, stderr="curl: (7) the stand-in reaches nothing\n"),
    )


def mirrors(box: ScriptBox) -> str:
    return box.path("/etc/docker/daemon.json").read_text()


# --- 1. the mirror's URL ------------------------------------------------------------------------


def test_the_public_url_in_env_is_the_one_configured_and_printed(
    box: ScriptBox, resolver: Resolver
) -> None:
    """.env's DOCXY_SERVER_PUBLIC_URL (with a port) was ignored: daemon.json got
    https://DOMAIN (port 443, where nothing of the mirror's listens), and so did the printed
    `curl .../setup.sh` and the by-hand daemon.json line."""
    url = f"https://{DOMAIN}:13211"
    env_file(box).write_text(f"DOCXY_HTTPS_PORT=13211\nDOCXY_SERVER_PUBLIC_URL={url}\n")
    healthy_at(box, 13211)

    result = install(box, resolver, "--configure-local-docker")

    assert result.returncode == 0, output(result)
    assert f'"{url}"' in mirrors(box)
    assert f'"https://{DOMAIN}"' not in mirrors(box)
    assert f"curl -fsSL {url}/setup.sh | sudo bash" in result.stdout
    assert f'{{ "registry-mirrors": ["{url}"] }}' in result.stdout
    assert f"https://{DOMAIN}/" not in result.stdout.split("Docxy serves")[1]


def test_a_published_https_port_without_a_public_url_is_in_the_url_and_warned_of(
    box: ScriptBox, resolver: Resolver
) -> None:
    """DOCXY_HTTPS_PORT=13212 and no public URL: the clients were pointed at port 443; the
    mirror itself (its public_url from its in-container listener, hence its token realm) says
    port 443, which only the operator can mend in .env."""
    env_file(box).write_text("DOCXY_HTTPS_PORT=13212\n")
    healthy_at(box, 13212)

    result = install(box, resolver, "--configure-local-docker")

    assert result.returncode == 0, output(result)
    assert f'"https://{DOMAIN}:13212"' in mirrors(box)
    assert f"curl -fsSL https://{DOMAIN}:13212/setup.sh" in result.stdout
    assert f"DOCXY_SERVER_PUBLIC_URL=https://{DOMAIN}:13212" in result.stderr, output(result)


def test_a_port_published_on_loopback_only_leaves_the_url_at_the_domain(
    box: ScriptBox, resolver: Resolver
) -> None:
    """127.0.0.1:13213 is reached by no other host: a proxy of the operator's serves 443, and
    the clients' URL stays https://DOMAIN, unwarned (the README's proxy set-up)."""
    env_file(box).write_text("DOCXY_HTTPS_PORT=127.0.0.1:13213\n")
    healthy_at(box, 13213, mirror=f"https://{DOMAIN}")

    result = install(box, resolver, "--configure-local-docker")

    assert result.returncode == 0, output(result)
    assert f'"https://{DOMAIN}"' in mirrors(box)
    assert "DOCXY_SERVER_PUBLIC_URL" not in result.stderr, output(result)


def test_uninstall_takes_out_the_url_install_configured(box: ScriptBox, resolver: Resolver) -> None:
    url = f"https://{DOMAIN}:13214"
    env_file(box).write_text(f"DOCXY_HTTPS_PORT=13214\nDOCXY_SERVER_PUBLIC_URL={url}\n")
    healthy_at(box, 13214)
    assert install(box, resolver, "--configure-local-docker").returncode == 0
    assert f'"{url}"' in mirrors(box)
    healthy_at(box, 13214, mirror="https://elsewhere.test")  # dockerd, reloaded, drops it

    result = install(box, resolver, "--uninstall")

    assert result.returncode == 0, output(result)
    assert url not in mirrors(box), output(result)


# --- 2. the compose project name ----------------------------------------------------------------


def test_env_names_the_compose_project_the_script_runs(box: ScriptBox, resolver: Resolver) -> None:
    """Compose run by hand in the project (named `clone` here) took the directory's name as
    the project: `docker compose logs docxy` found nothing, `up -d` made a second stack."""
    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert "COMPOSE_PROJECT_NAME=docxy" in env_file(box).read_text().splitlines()
    assert box.called(r"^docker compose --project-name docxy ")


def test_a_project_name_of_the_operators_is_kept_and_used(
    box: ScriptBox, resolver: Resolver
) -> None:
    env_file(box).write_text("COMPOSE_PROJECT_NAME=mirror2\n")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert env_file(box).read_text().splitlines().count("COMPOSE_PROJECT_NAME=mirror2") == 1
    assert "COMPOSE_PROJECT_NAME=docxy" not in env_file(box).read_text()
    assert box.called(r"^docker compose --project-name mirror2 ")
    assert not box.called(r"^docker compose --project-name docxy ")


def test_a_project_name_compose_refuses_stops_the_run_before_any_change(
    box: ScriptBox, resolver: Resolver
) -> None:
    env_file(box).write_text("COMPOSE_PROJECT_NAME=My Mirror\n")

    result = install(box, resolver)

    assert result.returncode == 2, output(result)
    assert "COMPOSE_PROJECT_NAME" in result.stderr
    assert not box.called(r"^docker compose .* up ")


def test_an_older_installs_project_line_does_not_make_a_second_stack(
    box: ScriptBox, resolver: Resolver
) -> None:
    """An older version ran every compose as `docxy` whatever .env said: with its stack here,
    a `COMPOSE_PROJECT_NAME` line of the operator's taken at its word made a second stack
    with empty volumes (a new certificate), and --uninstall left the running one up."""
    env_file(box).write_text("COMPOSE_PROJECT_NAME=mirror2\n")
    stack_is_running(box)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert "mirror2" in result.stderr  # said
    assert box.called(r"^docker compose --project-name docxy ")
    assert not box.called(r"^docker compose --project-name mirror2 ")


def test_uninstall_goes_on_past_a_project_name_compose_refuses(
    box: ScriptBox, resolver: Resolver
) -> None:
    env_file(box).write_text("COMPOSE_PROJECT_NAME=My Mirror\n")
    stack_is_running(box)

    result = install(box, resolver, "--uninstall")

    assert result.returncode == 0, output(result)
    assert box.called(r"^docker compose --project-name docxy .*down")

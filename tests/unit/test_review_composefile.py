"""Review of scripts/install.sh's compose files and compose.host.yaml: a COMPOSE_FILE of the
operator's in .env (an override such as the README's compose.secrets.yaml) kept by a rerun, and
the image build's network with host networking.

Same sandbox as tests/unit/test_install_script.py (its box, stand-ins and helpers, and
test_review_install5's `ip` stand-in), its dnsmasq resolver included. The compose arguments
the script passed are read back by the real docker-compose 1.29 (`config`: no daemon, nothing
contacted) where this machine has it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.scriptbox import REPO, ScriptBox, output
from tests.unavailable import need_binary, need_root, skip_or_fail
from tests.unit.test_install_script import (
    COMPOSE_UP,
    Resolver,
    env_file,
    install,
    stack_is_running,
)
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)
from tests.unit.test_install_script import resolver as resolver  # noqa: F401  (fixture)
from tests.unit.test_review_install5 import routes, with_host_file

#: The README's compose.secrets.yaml ("Secrets in files"), as an operator adds it.
SECRETS_YAML = """\
services:
  docxy:
    environment:
      DOCXY_UPSTREAM_PASSWORD_FILE: /run/secrets/upstream_password
    secrets: [upstream_password]
secrets:
  upstream_password:
    file: ./upstream_password
"""


def clone(box: ScriptBox) -> Path:
    return box.base / "clone"


def with_secrets_file(box: ScriptBox, compose_file: str) -> None:
    """The operator's compose.secrets.yaml beside compose.yaml, named in .env's COMPOSE_FILE."""
    (clone(box) / "compose.secrets.yaml").write_text(SECRETS_YAML)
    (clone(box) / "upstream_password").write_text("s3cret")
    with env_file(box).open("a") as env:
        env.write(f"COMPOSE_FILE={compose_file}\n")


def compose_up(box: ScriptBox) -> list[str]:
    """The argv of the last `docker compose ... up -d --build` the script ran."""
    up = [c for c in box.calls("docker") if re.search(COMPOSE_UP, c.line)]
    assert up, "no compose up"
    return up[-1].argv


def compose_files(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "-f"]


#: Prints the service's environment and build section of `docker-compose config` as JSON,
#: with the Python docker-compose runs on (PyYAML is its own dependency).
READ_SERVICE = """
import json, sys, yaml
service = yaml.safe_load(sys.stdin)["services"]["docxy"]
print(json.dumps({"environment": service.get("environment", {}),
                  "build": service.get("build", {}),
                  "network_mode": service.get("network_mode", "")}))
"""


def compose129_service(argv: list[str], cwd: Path) -> dict[str, Any]:
    """The service as the real docker-compose 1.29 reads it given `argv` (compose's options,
    then a command, which is replaced by `config`)."""
    binary = need_binary("docker-compose")
    version = subprocess.run([binary, "version", "--short"], capture_output=True, text=True)
    if not version.stdout.startswith("1."):
        skip_or_fail(f"docker-compose here is {version.stdout.strip()}, not 1.29")
    python = Path(binary).read_text().splitlines()[0].removeprefix("#!").split()
    shown = subprocess.run(
        [binary, *argv, "config"], capture_output=True, text=True, timeout=60, cwd=cwd,
        env={"HOME": str(cwd), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    parsed = subprocess.run(
        [*python, "-c", READ_SERVICE], input=shown.stdout, capture_output=True, text=True
    )
    assert parsed.returncode == 0, parsed.stderr
    service: dict[str, Any] = json.loads(parsed.stdout)
    return service


def options_of(up: list[str]) -> list[str]:
    """`compose --project-name ... up -d --build` -> the options before `up`, for
    docker-compose."""
    assert up[0] == "compose" and up[-3:] == ["up", "-d", "--build"], up
    return up[1:-3]


# --- 1. a COMPOSE_FILE of the operator's ------------------------------------------------------


def test_a_rerun_brings_the_stack_up_with_the_operators_compose_file(
    box: ScriptBox, resolver: Resolver
) -> None:
    """The README adds compose.secrets.yaml to the stack (the upstream password in a file);
    COMPOSE_FILE in .env makes every `docker compose` in the project read it. install.sh passed
    `-f compose.yaml` alone, which makes Compose ignore COMPOSE_FILE: a rerun (another cache
    size) recreated the mirror without the override, and so without its password."""
    routes(box, ipv4=True)
    assert install(box, resolver).returncode == 0
    with_secrets_file(box, "compose.yaml:compose.secrets.yaml")
    stack_is_running(box)
    box.forget_calls()

    result = install(box, resolver, "--cache-size", "30G")

    assert result.returncode == 0, output(result)
    up = compose_up(box)
    assert compose_files(up) == [
        str(clone(box) / "compose.yaml"),
        str(clone(box) / "compose.secrets.yaml"),
    ]
    assert "compose.yaml:compose.secrets.yaml" in result.stdout, "it says which files"
    # .env keeps it, for the next run and a `docker compose` by hand.
    lines = env_file(box).read_text().splitlines()
    assert "COMPOSE_FILE=compose.yaml:compose.secrets.yaml" in lines
    assert "DOCXY_CACHE_MAX_SIZE=30G" in lines
    # What Compose itself makes of those arguments: the override is in.
    service = compose129_service(options_of(up), clone(box))
    environment = service["environment"]
    assert environment.get("DOCXY_UPSTREAM_PASSWORD_FILE") == "/run/secrets/upstream_password"
    assert environment.get("DOCXY_CACHE_MAX_SIZE") == "30G"
    # The same run again changes nothing.
    box.forget_calls()
    again = install(box, resolver, "--cache-size", "30G")
    assert again.returncode == 0 and "Nothing to change" in again.stdout, output(again)


@pytest.mark.parametrize("ipv4", [True, False], ids=["ipv4", "ipv6-only"])
def test_host_networking_with_an_override_stays_host_networking(
    box: ScriptBox, resolver: Resolver, ipv4: bool
) -> None:
    """COMPOSE_FILE=compose.host.yaml:compose.secrets.yaml: the script recognised host
    networking only in a COMPOSE_FILE of exactly compose.host.yaml. On a host with IPv4 the
    rerun fell back to compose.yaml's bridge network; on an IPv6-only one it wrote
    COMPOSE_FILE=compose.host.yaml over the operator's line, the override gone from .env too."""
    routes(box, ipv4=ipv4)
    with_host_file(box)
    env_file(box).write_text("DOCXY_DOMAIN=mirror.test\n")
    with_secrets_file(box, "compose.host.yaml:compose.secrets.yaml")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert compose_files(compose_up(box)) == [
        str(clone(box) / "compose.host.yaml"),
        str(clone(box) / "compose.secrets.yaml"),
    ]
    lines = env_file(box).read_text().splitlines()
    assert "COMPOSE_FILE=compose.host.yaml:compose.secrets.yaml" in lines
    assert len([line for line in lines if "COMPOSE_FILE" in line]) == 1


def test_an_ipv6_only_host_puts_host_networking_first_and_keeps_the_override(
    box: ScriptBox, resolver: Resolver
) -> None:
    """An IPv6-only host whose .env names compose.yaml and an override (set up by hand, before
    install.sh chose networks): the script's choice goes first, the operator's file after it."""
    routes(box, ipv4=False)
    with_host_file(box)
    env_file(box).write_text("DOCXY_DOMAIN=mirror.test\n")
    with_secrets_file(box, "compose.yaml:compose.secrets.yaml")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert compose_files(compose_up(box)) == [
        str(clone(box) / "compose.host.yaml"),
        str(clone(box) / "compose.secrets.yaml"),
    ]
    assert "COMPOSE_FILE=compose.host.yaml:compose.secrets.yaml" in env_file(box).read_text()


def test_a_missing_file_in_compose_file_stops_the_run_before_any_change(
    box: ScriptBox, resolver: Resolver
) -> None:
    """Compose would stop at `up` anyway, after .env was rewritten: said first, by name."""
    routes(box, ipv4=True)
    env_file(box).write_text("DOCXY_DOMAIN=mirror.test\nCOMPOSE_FILE=compose.yaml:gone.yaml\n")
    before = env_file(box).read_text()

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert "gone.yaml" in result.stderr and "COMPOSE_FILE" in result.stderr, result.stderr
    assert not box.called(COMPOSE_UP)
    assert env_file(box).read_text() == before


def test_uninstall_takes_the_stack_down_with_the_same_files(
    box: ScriptBox, resolver: Resolver
) -> None:
    routes(box, ipv4=True)
    with_host_file(box)
    env_file(box).write_text("DOCXY_DOMAIN=mirror.test\n")
    with_secrets_file(box, "compose.host.yaml:compose.secrets.yaml")
    stack_is_running(box)

    result = box.run(clone(box) / "scripts" / "install.sh", "--root", str(box.root), "--uninstall")

    assert result.returncode == 0, output(result)
    down = [c for c in box.calls("docker") if c.argv[-2:] == ["down", "--remove-orphans"]]
    assert down, output(result)
    assert compose_files(down[-1].argv) == [
        str(clone(box) / "compose.host.yaml"),
        str(clone(box) / "compose.secrets.yaml"),
    ]


# --- 2. the build's network with host networking ------------------------------------------------


def test_compose_host_yaml_builds_the_image_on_the_hosts_network(tmp_path: Path) -> None:
    """On an IPv6-only host (install.sh picks compose.host.yaml there) the Dockerfile's
    `RUN pip install` ran on Docker's default bridge, which has no way out there (nor at all
    where the daemon has no bridge): the build failed before the mirror ever ran."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "compose.host.yaml", project / "compose.host.yaml")
    (project / ".env").write_text("DOCXY_DOMAIN=mirror.test\n")

    service = compose129_service(
        ["--project-directory", str(project), "-f", str(project / "compose.host.yaml")], project
    )

    assert service["network_mode"] == "host"
    assert service["build"].get("network") == "host", service["build"]


# --- 3. the health wait's address with host networking -----------------------------------------

#: Inside a network namespace of its own whose bindv6only is 1: the mirror's `[::]` listener
#: (compose.host.yaml's, and the TLS one entrypoint.sh derives from it), made by the same code
#: as the mirror's, then a connection to 127.0.0.1 on its port, as install.sh's health wait
#: (`curl --resolve DOMAIN:443:127.0.0.1`) makes it.
PROBE_LOOPBACK = """
import socket
from docxy.http.server import _HypercornConfig
[sock] = _HypercornConfig(None)._create_sockets(["[::]:0"])
port = sock.getsockname()[1]
with socket.create_connection(("127.0.0.1", port), timeout=5):
    print("answered")
"""


def test_the_health_waits_ipv4_loopback_reaches_a_wildcard_ipv6_listener_whatever_bindv6only(
    tmp_path: Path,
) -> None:
    """install.sh waits for https://DOMAIN/health at 127.0.0.1. With host networking the mirror
    listens on [::]:443; under net.ipv6.bindv6only=1 such a socket would be IPv6 only, and the
    wait would need ::1. The mirror turns IPV6_V6ONLY off itself (and entrypoint.sh falls back
    to 0.0.0.0 on a kernel without IPv6), so 127.0.0.1 answers: no ::1 needed. Checked in a
    namespace of its own (root), nothing bound on this host's addresses."""
    need_root("a network namespace whose bindv6only is 1")
    need_binary("unshare")
    need_binary("ip")
    script = (
        "echo 1 >/proc/sys/net/ipv6/bindv6only && ip link set lo up && "
        f"exec {sys.executable} -c '{PROBE_LOOPBACK}'"
    )
    probe = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert (probe.returncode, probe.stdout.strip()) == (0, "answered"), probe.stderr

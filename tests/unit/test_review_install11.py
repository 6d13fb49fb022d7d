"""Review of scripts/install.sh (s45 r7): docker-compose 1.29 found beside Engine 25 or newer,
and a dry run without sudo on an install whose .env it cannot read.

Same sandbox as tests/unit/test_install_script.py: its box, its dnsmasq resolver and helpers
(the resolver on this module's own loopback address).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.scriptbox import REPO, Rule, ScriptBox, output
from tests.unavailable import need_binary, need_root, skip_or_fail
from tests.unit.test_install_script import (
    APT,
    DEBIAN,
    DOMAIN,
    EMAIL,
    OURS,
    Resolver,
    env_file,
    install,
    resolver_on,
)
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)

resolver = resolver_on("127.0.164.1")

COMPOSE_129 = "docker-compose version 1.29.2, build unknown\n"
PLUGIN_CANDIDATE = Rule(r"policy docker-compose-plugin", stdout="  Candidate: 2.29.7-1\n")
NO_CANDIDATE = Rule(r"policy", stdout="  Candidate: (none)\n")


def engine(box: ScriptBox, version: str, *, docker_ce: bool) -> None:
    """An Engine of `version` with no Compose plugin, and Debian's docker-compose 1.29."""
    box.stand_in(
        "docker",
        Rule(r"^compose", rc=1),
        Rule(r"^(volume|image) inspect", rc=1),
        Rule(r"^version", stdout=f"{version}\n"),
        Rule(r"^info", stdout="[]\n"),
    )
    box.stand_in("docker-compose", Rule(r"version", stdout=COMPOSE_129))
    box.stand_in(
        "dpkg-query", Rule(r"docker-ce", stdout="install ok installed" if docker_ce else "")
    )


# --- docker-compose 1.29 beside Engine 25 or newer ----------------------------------------------


def test_compose_129_beside_docker_ce_27_gets_the_plugin(
    box: ScriptBox, resolver: Resolver
) -> None:
    """Debian 12 with Docker's own Engine (docker-ce 27, no Compose plugin) and Debian's
    docker-compose 1.29 (an old tutorial's `apt install docker-compose`): 1.29 was taken as
    "Compose is installed", though it fails against Engine 25 and newer on every recreate
    (KeyError: 'ContainerConfig', docker/compose#11742): the first install worked, every later
    run changing .env, and every --update, died in `up`. It gets Docker's Compose plugin, as
    where Compose is missing, and 1.29 is never used."""
    engine(box, "27.3.1", docker_ce=True)
    plugin = [
        Rule(r"^compose version", stdout="Docker Compose version v2.29.7\n"),
        Rule(r"^(volume|image) inspect", rc=1),
        Rule(r"^version", stdout="27.3.1\n"),
        Rule(r"^info", stdout="[]\n"),
    ]
    (box.bin / ".later" / "docker.json").write_text(json.dumps([asdict(r) for r in plugin]))
    box.stand_in(
        "apt-get",
        Rule(
            r" install .*docker-compose-plugin",
            effect='cp "$STANDINS/.later/docker.json" "$STANDINS/.rules/docker.json"',
        ),
    )
    box.stand_in("apt-cache", PLUGIN_CANDIDATE, NO_CANDIDATE)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert box.called(rf"{APT} install -y --no-install-recommends docker-compose-plugin$")
    assert not box.called(r"^docker-compose (?!version$)"), "1.29 was used against docker-ce 27"
    assert box.called(r"^docker compose --project-name docxy .* up -d --build$")


def test_compose_129_beside_engine_25_without_a_newer_compose_stops_before_the_project(
    box: ScriptBox, resolver: Resolver
) -> None:
    """No Compose v2 to be had from apt (no plugin, no docker-compose-v2): the run stops before
    the project is touched, naming the cause and the way out, instead of an `up` that fails
    (and an --update's rollback that blames the build's base image)."""
    engine(box, "26.1.5", docker_ce=False)
    box.stand_in("apt-cache", NO_CANDIDATE)

    result = install(box, resolver)

    assert result.returncode != 0, output(result)
    assert "ContainerConfig" in result.stderr and "--docker-repo" in result.stderr, output(result)
    assert not box.called(r"^docker-compose (?!version$)"), "1.29 was used against Engine 26"
    assert not env_file(box).exists()


def test_bookworms_docker_io_and_compose_129_are_used_as_they_are(
    box: ScriptBox, resolver: Resolver
) -> None:
    """Debian 12's own pair (docker.io 20.10.24, docker-compose 1.29.2) works together: kept,
    nothing installed."""
    engine(box, "20.10.24+dfsg1", docker_ce=False)
    box.stand_in("apt-cache", NO_CANDIDATE)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert box.called(r"^docker-compose --project-name docxy .* up -d --build$")
    assert not box.called(r"^apt-get .* install ")


# --- a dry run without sudo on root's .env ------------------------------------------------------

NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]


def nobodys_python(box: ScriptBox, setpriv: str) -> None:
    """The stand-ins (and the box's python3) on a Python user nobody can run: the test's own
    may be under root's home (a pyenv build in /root, mode 700). Tried through bash, as the
    script runs them: setpriv's own exec still has root's capabilities."""
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        probe = [setpriv, *NOBODY, str(box.tools / "bash"), "-c", f"'{python}' -c pass"]
        if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
            break
    else:
        skip_or_fail(f"user nobody can run neither {sys.executable} nor /usr/bin/python3")
    for program in [*box.bin.iterdir(), *(box.bin / ".later").iterdir()]:
        if program.is_file() and not program.name.startswith("."):
            lines = program.read_text().split("\n", 1)
            program.write_text(f"#!{python}\n{lines[1]}")
    (box.tools / "python3").unlink()
    (box.tools / "python3").symlink_to(python)


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A sandbox directory user nobody can reach (pytest's own tmp_path is root's, mode 700)."""
    base = Path(tempfile.mkdtemp(prefix="docxy-r7-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def dry_run_as_nobody(
    shared_base: Path, domain: list[str], env_mode: int
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """install.sh --dry-run as user nobody on /opt/docxy installed by root (.env in `env_mode`)."""
    need_root("runs install.sh as user nobody, with root's .env it cannot read")
    setpriv = need_binary("setpriv")
    box = ScriptBox(shared_base)
    box.path("/etc/os-release").parent.mkdir(parents=True)
    box.path("/etc/os-release").write_text(DEBIAN)
    for name in ("ss", "systemctl", "apt-get"):
        box.stand_in(name)
    box.stand_in(
        "docker",
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r"^ps ", stdout="3f2a1b\n"),
        Rule(r"^info", stdout="[]\n"),
    )
    box.stand_in("curl", Rule(r".", rc=7))
    box.without("dig")  # a dry run with --dns-server skips the DNS check without dig
    project = box.path("/opt/docxy")
    (project / "scripts").mkdir(parents=True)
    for name in ("compose.yaml", "Dockerfile", "scripts/install.sh", "scripts/configure-client.sh"):
        shutil.copy(REPO / name, project / name)
    (project / ".docxy-fetched").write_text("compose.yaml\nDockerfile\nscripts\n")
    env = project / ".env"
    env.write_text(
        f"DOCXY_DOMAIN={DOMAIN}\nDOCXY_EMAIL={EMAIL}\nDOCXY_CACHE_MAX_SIZE=50G\n"
        "COMPOSE_PROJECT_NAME=docxy\nDOCXY_UPSTREAMS=ghcr.io\n"
    )
    env.chmod(env_mode)
    for path in [shared_base, *shared_base.rglob("*")]:
        if path.is_dir():
            path.chmod(0o777 if path in (shared_base, box.bin) else 0o755)
    nobodys_python(box, setpriv)
    (box.bin / ".calls.jsonl").touch(mode=0o666)
    (box.bin / ".calls.jsonl").chmod(0o666)
    args = ["--root", str(box.root), "--dry-run", *domain, "--dns-server", "127.0.164.9"]
    args += ["--public-ip", OURS, "--health-timeout", "0", "--yes"]
    environ = {
        "PATH": f"{box.bin}:{box.tools}",
        "HOME": str(shared_base),
        "TMPDIR": str(shared_base),
        "LANG": "C.UTF-8",
    }
    script = project / "scripts" / "install.sh"
    argv = [setpriv, *NOBODY, str(box.tools / "bash"), str(script), *args]

    result = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=60)
    return result, env


@pytest.mark.parametrize("domain", [[], ["--domain", DOMAIN]], ids=["no-domain", "domain"])
def test_a_dry_run_that_cannot_read_env_says_so_and_stops(
    shared_base: Path, domain: list[str]
) -> None:
    """`curl | sudo bash` left /opt/docxy/.env root's, mode 600; a dry run without sudo
    (check_root: "Not root: fine for a dry run") read it as empty: it showed .env rewritten
    without the e-mail and with the default cache size, "would run compose up" and, without
    --domain, "--domain is required". It says it cannot read .env, and stops."""
    result, env = dry_run_as_nobody(shared_base, domain, 0o600)  # root's, as install.sh leaves it

    assert result.returncode != 0, output(result)
    said = f"cannot read {env} (root's, mode 600): run the dry run with sudo"
    assert said in result.stderr, output(result)
    assert "would" not in result.stdout, output(result)
    assert "--domain is required" not in result.stderr, output(result)
    assert "DOCXY_CACHE_MAX_SIZE=20G" not in result.stdout, output(result)


def test_a_dry_run_without_sudo_that_can_read_env_goes_on(shared_base: Path) -> None:
    """The check is for a .env it cannot read: one it can is read as ever."""
    result, _ = dry_run_as_nobody(shared_base, [], 0o644)

    assert result.returncode == 0, output(result)
    assert "DOCXY_CACHE_MAX_SIZE=50G" in result.stdout, output(result)
    assert "DOCXY_EMAIL=ops@example.org" in result.stdout, output(result)
    assert "1 line of yours, kept" in result.stdout, output(result)


@pytest.mark.parametrize("given", ["127.0.164.1:53", "ns1.example.net:5353", "127.0.164.1:"])
def test_a_dns_server_given_as_host_colon_port_is_refused_naming_the_form(
    box: ScriptBox, resolver: Resolver, given: str
) -> None:
    """``--dns-server 1.1.1.1:53`` (review s45 r7) was taken for a host name and the run
    stopped at 'Fix the DNS records', which were not the trouble: it is a usage error, naming
    dig's HOST#PORT form. An IPv6 resolver (colons, no port) is still one."""
    result = install(box, resolver, "--dns-server", given)
    assert result.returncode == 2, output(result)
    assert "HOST#PORT" in result.stderr and given in result.stderr, output(result)
    assert "DNS records" not in result.stdout + result.stderr


def test_an_ipv6_dns_server_is_no_host_colon_port(box: ScriptBox, resolver: Resolver) -> None:
    result = install(box, resolver, "--dns-server", "::1#1", "--dry-run")
    assert "HOST#PORT" not in result.stderr, output(result)

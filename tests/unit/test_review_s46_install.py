"""Review s46 of scripts/install.sh (commits 9cbb474, 261e2c4, df7dcb3): Compose 1.x beside
Engine 25 or newer, and --dns-server's forms.

Same sandbox as tests/unit/test_install_script.py (its box, its dnsmasq resolver and helpers,
the resolver on this module's own loopback address).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scriptbox import REPO, Rule, ScriptBox, output
from tests.unavailable import need_binary
from tests.unit.test_install_script import (
    APT,
    DOMAIN,
    EMAIL,
    OURS,
    Resolver,
    env_file,
    install,
    resolver_on,
)
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)
from tests.unit.test_review_install11 import NOBODY, dry_run_as_nobody, engine
from tests.unit.test_review_install11 import shared_base as shared_base  # noqa: F401

resolver = resolver_on("127.0.171.1")

# apt-cache policy for a package of Docker's repository: the Candidate line first, then a
# version table of every release (some 60 on bookworm, over 4 KiB), written as apt-cache
# writes it: a buffer at a time, the rest after more work.
SLOW_POLICY = """\
import sys, time
head = "docker-compose-plugin:\\n  Installed: (none)\\n  Candidate: 2.29.7-1~debian.12~bookworm\\n"
row = "     2.%d.0-1~debian.12~bookworm 500\\n        500 https://download.docker.com/linux/debian"
row += " bookworm/stable amd64 Packages\\n"
sys.stdout.write(head + "  Version table:\\n")
sys.stdout.flush()
time.sleep(0.5)
sys.stdout.write("".join(row % i for i in range(60)))
sys.stdout.flush()
"""


def slow_policy(box: ScriptBox) -> str:
    program = box.base / "slow_policy"
    program.write_text(f"#!{sys.executable}\n{SLOW_POLICY}")
    program.chmod(0o755)
    return str(program)


def test_a_long_version_table_is_still_a_candidate(box: ScriptBox, resolver: Resolver) -> None:
    """Docker's repository lists every release of docker-compose-plugin under its Candidate
    line. grep -q stops reading at the Candidate line; apt-cache, still writing the table,
    dies of SIGPIPE, and pipefail takes the pipeline as failed: "no candidate". Beside
    docker-ce 27 and docker-compose 1.29 the run then stops saying apt offers no Compose v2
    (docker-compose-plugin), though it does."""
    engine(box, "27.3.1", docker_ce=True)
    box.stand_in(
        "apt-cache",
        Rule(r"policy docker-compose-plugin", passthrough=slow_policy(box)),
        Rule(r"policy", stdout="  Candidate: (none)\n"),
    )

    result = install(box, resolver)

    assert "apt offers no Compose v2" not in result.stderr, output(result)
    assert box.called(rf"{APT} install -y --no-install-recommends docker-compose-plugin$")


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_compose_missing_beside_engine_25_without_a_v2_stops_before_installing_1_29(
    box: ScriptBox, resolver: Resolver, dry_run: bool
) -> None:
    """Engine 26 (static binaries, or docker-ce from .deb files without Docker's repository),
    no Compose at all, and apt offers only Debian 12's docker-compose 1.29: it installs 1.29,
    which it then refuses ("still the Compose found"), having changed the host for nothing;
    the dry run says it would install docker-compose and goes on to "would run compose up".
    As where 1.29 is found beside it, the run should stop before any apt-get install, naming
    --docker-repo."""
    engine(box, "26.1.5", docker_ce=False)
    box.without("docker-compose")
    box.stand_in(
        "apt-get",
        Rule(
            r" install .*docker-compose",
            effect="printf \"%s\\n\" '#!/bin/sh' 'echo \"docker-compose version 1.29.2, build"
            ' unknown"\' >"$STANDINS/docker-compose"; chmod +x "$STANDINS/docker-compose"',
        ),
    )
    box.stand_in("apt-cache", Rule(r"policy docker-compose$", stdout="  Candidate: 1.29.2-3\n"),
                 Rule(r"policy", stdout="  Candidate: (none)\n"))  # fmt: skip

    result = install(box, resolver, *(["--dry-run"] if dry_run else []))

    assert result.returncode != 0, output(result)
    assert "--docker-repo" in result.stderr, output(result)
    assert not box.called(r"^apt-get .* install "), output(result)
    assert not env_file(box).exists()


@pytest.mark.parametrize("given", ["[2001:db8::53]:53", "[2001:db8::53]"])
def test_a_bracketed_ipv6_dns_server_is_a_usage_error(
    box: ScriptBox, resolver: Resolver, given: str
) -> None:
    """``--dns-server [2001:db8::53]:53`` is how IPv6 HOST:PORT is written; dig takes it for a
    host name it cannot find, and the run blamed the domain's DNS records, as HOST:PORT did
    before df7dcb3. (dig is a stand-in here: the real one would ask the host's resolver for
    that name.)"""
    box.stand_in(
        "dig",
        Rule(r"@\[", rc=10, stderr=f"dig: couldn't get address for '{given}': not found\n"),
    )

    result = install(box, resolver, "--dns-server", given)

    assert result.returncode == 2, output(result)
    assert "HOST#PORT" in result.stderr and given in result.stderr, output(result)
    assert "DNS records" not in result.stdout + result.stderr


def test_an_ipv6_dns_server_with_a_port_after_hash_is_taken(
    box: ScriptBox, resolver: Resolver
) -> None:
    """dig's own form for an IPv6 resolver and port is not refused."""
    box.stand_in("dig", Rule(r" A mirror", stdout="203.0.113.7\n"))
    result = install(box, resolver, "--dns-server", "2001:db8::53#5353")
    assert result.returncode == 0, output(result)
    assert box.called(r"^dig .*@2001:db8::53 -p 5353 A mirror\.test$")


@pytest.mark.parametrize("version", ["25.0.3", "26.1.4+dfsg1"])
def test_engine_versions_of_25_and_newer_are_told(
    box: ScriptBox, resolver: Resolver, version: str
) -> None:
    """docker-ce's 25.0.3 and Debian 13's 26.1.4+dfsg1 both count as 25 or newer."""
    engine(box, version, docker_ce=False)
    box.stand_in("apt-cache", Rule(r"policy", stdout="  Candidate: (none)\n"))
    result = install(box, resolver)
    assert result.returncode != 0 and "ContainerConfig" in result.stderr, output(result)
    assert f"Engine {version}" in result.stderr, output(result)


def test_a_server_that_does_not_answer_falls_back_to_the_clients_version(
    box: ScriptBox, resolver: Resolver
) -> None:
    """dockerd down: `docker version` prints no server version and fails; the client's 27 is
    the Engine's."""
    engine(box, "27.3.1", docker_ce=False)
    box.stand_in(
        "docker",
        Rule(r"^compose", rc=1),
        Rule(r"^(volume|image) inspect", rc=1),
        Rule(r"Server\.Version", rc=1, stderr="Cannot connect to the Docker daemon\n"),
        Rule(r"Client\.Version", stdout="27.3.1\n"),
        Rule(r"^info", stdout="[]\n"),
    )
    box.stand_in("apt-cache", Rule(r"policy", stdout="  Candidate: (none)\n"))
    result = install(box, resolver)
    assert result.returncode != 0 and "Engine 27.3.1" in result.stderr, output(result)


def test_podman_docker_is_no_engine_25(box: ScriptBox, resolver: Resolver) -> None:
    """podman-docker's `docker` says podman's version (4.3.1): 1.29 is used with it as before."""
    engine(box, "4.3.1", docker_ce=False)
    box.stand_in("apt-cache", Rule(r"policy", stdout="  Candidate: (none)\n"))
    result = install(box, resolver)
    assert result.returncode == 0, output(result)
    assert box.called(r"^docker-compose --project-name docxy .* up -d --build$")


# --- a dry run without sudo on an install it cannot reach ----------------------------------------


def rerun_as_nobody(shared_base: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """install.sh --dry-run again as user nobody, in the box dry_run_as_nobody made."""
    root, tools = shared_base / "root", shared_base / "tools"
    script = root / "opt" / "docxy" / "scripts" / "install.sh"
    argv = [need_binary("setpriv"), *NOBODY, str(tools / "bash"), str(script)]
    argv += ["--root", str(root), "--dry-run", *args, "--dns-server", "127.0.171.9"]
    argv += ["--public-ip", OURS, "--health-timeout", "0", "--yes"]
    environ = {
        "PATH": f"{shared_base / 'bin'}:{tools}",
        "HOME": str(shared_base),
        "TMPDIR": str(shared_base),
        "LANG": "C.UTF-8",
    }
    return subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=60)


def test_a_dry_run_that_cannot_reach_dir_says_so_and_stops(shared_base: Path) -> None:
    """A clone root made in /root (mode 700), dry-run without sudo from another copy with
    `--dir /root/docxy`: `[[ -d DIR ]]` and `[[ -e DIR/.env ]]` fail for want of search
    permission on /root, so env_readable took it for a directory not there yet, and the dry run
    showed a fresh install ("--domain is required", or every setting written anew)."""
    private = shared_base / "private"
    private.mkdir()
    project = private / "docxy"
    (project / "scripts").mkdir(parents=True)
    for name in ("compose.yaml", "Dockerfile", "scripts/install.sh"):
        shutil.copy(REPO / name, project / name)
    (project / ".env").write_text(f"DOCXY_DOMAIN={DOMAIN}\nDOCXY_EMAIL={EMAIL}\n")
    dry_run_as_nobody(shared_base, ["--dir", str(project)], 0o644)
    private.chmod(0o700)  # too late for dry_run_as_nobody's own run: run again
    result = rerun_as_nobody(shared_base, ["--dir", str(project)])

    assert result.returncode != 0, output(result)
    assert f"cannot read {project}" in result.stderr or str(private) in result.stderr, output(
        result
    )
    assert "would" not in result.stdout, output(result)

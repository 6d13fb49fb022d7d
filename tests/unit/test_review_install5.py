"""Review of scripts/install.sh: an IPv6-only host, a dry run without dig, and a .env edited by
hand before a rerun. Second pass: a `docker stop` during the entrypoint's checks, the health
wait's HTTPS port, configure-client.sh's DOCXY_RELOAD_WAIT, COMPOSE_FILE's quoting in .env and
DOCXY_EMAIL's name in refusals.

Same sandbox as tests/unit/test_install_script.py (its box, stand-ins and helpers, its dnsmasq
helper, here on 127.0.43.2:10302). Addresses in the settings (127.0.43.1, ports 10300-10305)
are values only: nothing listens there.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab.processes import wait_for
from tests.scriptbox import REPO, Rule, ScriptBox, output
from tests.unit.test_configure_client import MIRROR as CLIENT_MIRROR
from tests.unit.test_configure_client import attempt as client_attempt
from tests.unit.test_configure_client import docker_info
from tests.unit.test_install_script import (
    COMPOSE_UP,
    DOMAIN,
    EMAIL,
    HEALTHY,
    OURS,
    OURS6,
    Resolver,
    clone_script,
    env_file,
    install,
    resolver_on,
    stack_is_running,
)
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)
from tests.unit.test_review_container import entrypoint_env

resolver = resolver_on("127.0.43.2", 10302)  # this module's own address and port


def compose_files(box: ScriptBox) -> list[str]:
    """The -f files of the `compose up` the script ran."""
    up = [c for c in box.calls("docker") if re.search(COMPOSE_UP, c.line)]
    assert up, "no compose up"
    argv = up[-1].argv
    return [argv[i + 1] for i, word in enumerate(argv) if word == "-f"]


# --- 1. an IPv6-only host -----------------------------------------------------------------------

V6_ROUTE = "default via fe80::1 dev eth0 proto ra metric 1024 pref medium\n"
V4_ROUTE = "default via 203.0.113.1 dev eth0 proto dhcp src 203.0.113.7 metric 100\n"


def routes(box: ScriptBox, *, ipv4: bool) -> None:
    """The `ip` stand-in: an IPv6 default route, and an IPv4 one or none."""
    box.stand_in(
        "ip",
        Rule(r"^-4 route", stdout=V4_ROUTE if ipv4 else ""),
        Rule(r"^-6 route", stdout=V6_ROUTE),
    )


def with_host_file(box: ScriptBox) -> None:
    shutil.copy(REPO / "compose.host.yaml", box.base / "clone" / "compose.host.yaml")


def install_v6(
    box: ScriptBox, resolver: Resolver, *args: str
) -> tuple[int, str, str]:  # (rc, stdout, stderr)
    result = box.run(
        clone_script(box),
        "--root", str(box.root), "--domain", "v6only.test", "--email", EMAIL,
        "--public-ip", OURS6, "--dns-server", resolver.address, "--health-timeout", "0",
        "--yes", *args,
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


def test_an_ipv6_only_host_is_set_up_with_host_networking(
    box: ScriptBox, resolver: Resolver
) -> None:
    """No IPv4 default route: under compose.yaml's bridge network the container reaches no
    IPv4 upstream and every IPv6 client is NATed to the bridge's address. The README sends
    such hosts to compose.host.yaml; the script used compose.yaml whatever the host."""
    routes(box, ipv4=False)
    with_host_file(box)
    box.stand_in(
        "curl",
        Rule(r"https://v6only.test/health", stdout='{"status": "ok"}'),
        Rule(r".", rc=7),
    )

    rc, out, err = install_v6(box, resolver)

    assert rc == 0, f"{out}\n{err}"
    assert compose_files(box) == [str(box.base / "clone" / "compose.host.yaml")]
    assert "COMPOSE_FILE=compose.host.yaml" in env_file(box).read_text().splitlines()
    assert "IPv6" in out and "host networking" in out, out
    # A rerun keeps it, and changes nothing.
    stack_is_running(box)
    box.forget_calls()
    rc, out, err = install_v6(box, resolver)
    assert rc == 0 and "Nothing to change" in out, f"{out}\n{err}"


def test_an_ipv6_only_host_without_compose_host_yaml_stops_before_starting(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A project copy older than compose.host.yaml: a container that cannot work is not started."""
    routes(box, ipv4=False)

    rc, out, err = install_v6(box, resolver)

    assert rc == 1, f"{out}\n{err}"
    assert "compose.host.yaml" in err and "git pull" in err, err  # (a clone)
    assert not box.called(COMPOSE_UP)
    assert not env_file(box).exists()


def test_a_host_with_ipv4_keeps_the_bridge_network(box: ScriptBox, resolver: Resolver) -> None:
    routes(box, ipv4=True)
    with_host_file(box)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert compose_files(box) == [str(box.base / "clone" / "compose.yaml")]
    assert "COMPOSE_FILE" not in env_file(box).read_text()


def test_host_networking_behind_an_active_ufw_says_to_open_the_ports(
    box: ScriptBox, resolver: Resolver
) -> None:
    """Published ports (compose.yaml) pass Docker's own firewall rules, before ufw's; with host
    networking the mirror's ports are the host's, and an active ufw drops Let's Encrypt's check
    on port 80: the run waited out the health timeout with no word of the cause."""
    routes(box, ipv4=False)
    with_host_file(box)
    box.stand_in("ufw", Rule(r"^status", stdout="Status: active\n\nTo Action From\n"))

    rc, out, err = install_v6(box, resolver, "--dry-run")

    assert rc == 0, f"{out}\n{err}"
    assert "ufw is active" in err and "ufw allow 80/tcp" in err and "443/tcp" in err, err
    assert not box.called(r"^ufw (allow|enable|disable)"), "the firewall is the operator's"


# --- 2. a dry run without dig -------------------------------------------------------------------


def getent(box: ScriptBox, v4: str = "", v6: str = "") -> None:
    """The system resolver, as getent shows it (glibc's ahostsv6 maps IPv4 in, as ::ffff:)."""

    def lines(addresses: list[str]) -> str:
        return "".join(f"{a:<15} {kind}\n" for a in addresses for kind in ("STREAM x", "DGRAM"))

    v4s = v4.split()
    box.stand_in(
        "getent",
        Rule(r"^ahostsv4 ", stdout=lines(v4s), rc=0 if v4s else 2),
        Rule(r"^ahostsv6 ", stdout=lines(v6.split() + [f"::ffff:{a}" for a in v4s])),
    )


def dry_run_without_dig(box: ScriptBox, domain: str, *args: str) -> tuple[int, str, str]:
    box.without("dig")
    box.without("host")
    box.without("nslookup")
    result = box.run(
        clone_script(box),
        "--root", str(box.root), "--domain", domain, "--email", EMAIL, "--public-ip", OURS,
        "--yes", "--dry-run", *args,
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


def test_a_dry_run_without_dig_checks_the_records_with_getent(box: ScriptBox) -> None:
    """A dry run is the way to see, before any change, whether Let's Encrypt could work: without
    dig it said "needs dig" and went on, so a domain pointing elsewhere was only found by the
    real run. getent (libc-bin, always there) asks the system resolver."""
    getent(box, v4="198.51.100.9")

    rc, out, err = dry_run_without_dig(box, "elsewhere.test")

    assert rc == 1, f"{out}\n{err}"
    assert "A record (198.51.100.9) that is not this host" in err, err
    assert box.called(r"^getent ahostsv4 elsewhere\.test$")

    getent(box, v4=OURS)
    rc, out, err = dry_run_without_dig(box, DOMAIN)
    assert rc == 0, f"{out}\n{err}"
    assert f"DNS: {DOMAIN} -> {OURS}, this host" in out, out


def test_a_dry_run_without_dig_and_with_dns_server_says_the_check_was_not_done(
    box: ScriptBox, resolver: Resolver
) -> None:
    getent(box, v4=OURS)

    rc, out, err = dry_run_without_dig(box, DOMAIN, "--dns-server", resolver.address)

    assert rc == 0, f"{out}\n{err}"
    assert "DNS check: not done in this dry run" in out, out
    assert "no dig here" in out and "the real run installs dnsutils" in out, out
    assert not box.called(r"^getent"), "getent cannot ask --dns-server"


# --- 3. a .env edited by hand -------------------------------------------------------------------


def backups(box: ScriptBox) -> list[Path]:
    return sorted((box.base / "clone").glob(".env.bak-*"))


def test_a_hand_edit_the_rerun_overwrites_is_named_and_kept_in_a_copy(
    box: ScriptBox, resolver: Resolver
) -> None:
    """Rerunning the install command (from the shell's history) after editing .env by hand put
    the command line's values back, silently: the edit was simply gone."""
    assert install(box, resolver, "--cache-size", "1G").returncode == 0
    env = env_file(box)
    env.write_text(env.read_text().replace("DOCXY_CACHE_MAX_SIZE=1G", "DOCXY_CACHE_MAX_SIZE=50G"))
    edited = env.read_text()
    stack_is_running(box)

    dry = install(box, resolver, "--cache-size", "1G", "--dry-run")
    assert dry.returncode == 0, output(dry)
    assert "DOCXY_CACHE_MAX_SIZE: 50G in .env, 1G as asked" in dry.stdout, output(dry)
    assert backups(box) == [] and env.read_text() == edited

    result = install(box, resolver, "--cache-size", "1G")

    assert result.returncode == 0, output(result)
    assert "DOCXY_CACHE_MAX_SIZE: 50G in .env, 1G as asked" in result.stdout, output(result)
    assert "DOCXY_CACHE_MAX_SIZE=1G" in env.read_text().splitlines()
    [copy] = backups(box)
    assert copy.read_text() == edited
    assert copy.stat().st_mode & 0o777 == 0o600
    assert str(copy) in result.stdout


def test_a_changed_password_is_named_but_never_shown(box: ScriptBox, resolver: Resolver) -> None:
    first = install(
        box, resolver, "--upstream-user", "bob", env={"DOCXY_UPSTREAM_PASSWORD": "pw-1"}
    )
    assert first.returncode == 0, output(first)

    result = install(
        box, resolver, "--upstream-user", "bob", env={"DOCXY_UPSTREAM_PASSWORD": "pw-2"}
    )

    assert result.returncode == 0, output(result)
    assert "DOCXY_UPSTREAM_PASSWORD: changed (not shown)" in result.stdout, output(result)
    assert "pw-1" not in result.stdout + result.stderr
    assert "pw-2" not in result.stdout + result.stderr
    assert len(backups(box)) == 1


def test_a_first_install_and_an_unchanged_rerun_leave_no_copy(
    box: ScriptBox, resolver: Resolver
) -> None:
    assert install(box, resolver).returncode == 0
    stack_is_running(box)
    again = install(box, resolver)
    assert again.returncode == 0 and "Nothing to change" in again.stdout, output(again)
    assert backups(box) == []


def test_purge_takes_the_copies_with_env(box: ScriptBox, resolver: Resolver) -> None:
    """The copies hold what .env held (an upstream password among it)."""
    assert install(box, resolver, "--cache-size", "1G").returncode == 0
    assert install(box, resolver, "--cache-size", "2G").returncode == 0
    assert len(backups(box)) == 1
    stack_is_running(box)

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall", "--purge")

    assert result.returncode == 0, output(result)
    assert backups(box) == [] and not env_file(box).exists()


# --- 4. a `docker stop` while the entrypoint checks the settings --------------------------------

SLOW_CHECK = """#!/usr/bin/env bash
# `python`, first on PATH: the entrypoint's settings check (`-m docxy serve --show-config`)
# says it has begun, then takes long; anything else is the real interpreter.
if [[ "$*" == *"serve --show-config"* ]]; then
  echo "$$" >"{ready}"
  exec sleep 30
fi
exec {python} "$@"
"""


SLOW_ID = """#!/usr/bin/env bash
# `id`, first on PATH: the entrypoint's `me="$(id -u)..."` says it has begun, then takes two
# seconds (bash runs a trap once a command substitution under way has ended).
echo "$$" >"{ready}"
sleep 2
exec /usr/bin/id "$@"
"""


def test_a_stop_during_the_entrypoints_checks_ends_the_container_at_once(
    tmp_path: Path,
) -> None:
    """The entrypoint is the container's PID 1 until it execs supervisord, and the kernel
    gives PID 1 no signal it has no handler for: a `docker stop` while it checked the settings
    (a second or so at every start) was ignored, and Docker waited out stop_grace_period (30 s)
    before its SIGKILL. Here the entrypoint is PID 1 of a PID namespace of its own (as in the
    container) and its check takes 30 s: SIGTERM from outside (as dockerd sends it) must end
    it within a few seconds."""
    stopped_during(tmp_path, "python", SLOW_CHECK)


def test_a_stop_during_the_volume_check_ends_it_with_143(tmp_path: Path) -> None:
    """The same stop while the volumes' check asks `id`: bash 5.2 (bookworm's) fails to parse
    the trap's action when the signal comes during the first of two command substitutions in
    one command (`me="$(id -u):$(id -g)"`): exit 2 and "unexpected EOF", the code of a refused
    setting (found by a read of 95e44d9)."""
    stopped_during(tmp_path, "id", SLOW_ID)


def stopped_during(tmp_path: Path, name: str, fake: str) -> None:
    """Runs the entrypoint as PID 1 of a PID namespace with ``fake`` (a script writing its
    ``{ready}`` file, then slow) first on PATH as ``name``; SIGTERM once it is ready."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here")
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", "true"],
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"no user and PID namespaces here: {probe.stderr!r}")
    ready = tmp_path / "ready"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    slow = bin_dir / name
    slow.write_text(fake.format(ready=ready, python=sys.executable))
    slow.chmod(0o755)
    env = entrypoint_env(tmp_path, bin_dir, "127.0.43.1:10300", "http://127.0.43.1:10301")
    argv = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child",
            "bash", str(REPO / "scripts" / "entrypoint.sh")]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(ready.exists, timeout=20, what="the entrypoint's settings check")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1, children  # the entrypoint's bash, PID 1 in there
        os.kill(int(children[0]), signal.SIGTERM)
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail("the entrypoint (PID 1) went on after SIGTERM")
        assert rc in (143, 128 + signal.SIGTERM), rc
        assert not re.search(
            r"supervisord|Traceback", proc.stderr.read().decode() if proc.stderr else ""
        )
    finally:
        proc.kill()  # unshare, whose --kill-child takes the namespace down with it
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


# --- 5. the health wait on the HTTPS port .env publishes ----------------------------------------


@pytest.mark.parametrize(
    ("lines", "host_networking", "resolve", "url"),
    [
        pytest.param(["DOCXY_HTTPS_PORT=8443"], False, "127.0.0.1",
                     "https://mirror.test:8443/health"),
        pytest.param(["DOCXY_HTTPS_PORT=127.0.0.1:10443"], False, "127.0.0.1",
                     "https://mirror.test:10443/health"),
        pytest.param(["DOCXY_HTTPS_PORT=[::1]:10443"], False, "[::1]",
                     "https://mirror.test:10443/health"),
        pytest.param(["COMPOSE_FILE=compose.host.yaml", "DOCXY_SERVER_TLS_LISTEN=[::]:9443"], True,
                     "127.0.0.1", "https://mirror.test:9443/health"),
        ([], False, "127.0.0.1", "https://mirror.test/health"),
    ],
)  # fmt: skip
def test_the_health_wait_asks_the_https_port_env_publishes(
    box: ScriptBox, resolver: Resolver, lines: list[str], host_networking: bool, resolve: str,
    url: str,
) -> None:  # fmt: skip
    """compose.yaml publishes the mirror's HTTPS on ${DOCXY_HTTPS_PORT:-443} (the README's way
    to make room for a proxy on this host), compose.host.yaml on DOCXY_SERVER_TLS_LISTEN's
    port. The wait after `compose up` asked https://DOMAIN/health on port 443 whatever .env
    said: on such a host it reached the proxy, or nothing, and after --health-timeout stopped
    the run with "Docxy did not come up", over a mirror that was up."""
    if host_networking:
        with_host_file(box)
    env_file(box).write_text("".join(f"{line}\n" for line in lines))
    port = url.split("/")[2].partition(":")[2] or "443"
    box.stand_in(
        "curl",
        Rule(re.escape(f"--resolve {DOMAIN}:{port}:{resolve} {url}"), stdout=HEALTHY),
        Rule(r".", rc=7, stderr="curl: (7) the stand-in reaches nothing\n"),
    )
    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert f"{url}: {HEALTHY}" in result.stdout


# --- 6. configure-client.sh's DOCXY_RELOAD_WAIT, a duration as the mirror's --------------------


@pytest.fixture
def stale_dockerd(tmp_path: Path) -> ScriptBox:
    """A Docker host under systemd whose dockerd never takes the change (`docker info` keeps
    another mirror): configure-client.sh polls it for DOCXY_RELOAD_WAIT, twice a second."""
    box = ScriptBox(tmp_path)
    box.stand_in("docker", docker_info("https://other.example"))
    box.stand_in("systemctl", Rule(r"is-active", rc=0))
    box.stand_in("kill")
    return box


def polls_after_reload(box: ScriptBox, wait: str) -> tuple[int, str]:
    """How many times the script asked `docker info` after reloading dockerd, and what it said."""
    result = client_attempt(box, "--mirror", CLIENT_MIRROR, env={"DOCXY_RELOAD_WAIT": wait})
    calls = [c.line for c in box.calls()]
    reload = next((i for i, line in enumerate(calls) if "reload docker" in line), len(calls))
    return sum(
        1
        for line in calls[reload:]
        if line == "docker info --format {{json .RegistryConfig.Mirrors}}"
    ), output(result)


@pytest.mark.parametrize("wait", ["1s", "1", " 1s ", "0m1s"])
def test_the_reload_wait_takes_a_unit_as_the_mirrors_durations_do(
    stale_dockerd: ScriptBox, wait: str
) -> None:
    """Every duration setting of the mirror takes 30s, 5m, 1h30m (docxy/core/durations.py);
    DOCXY_RELOAD_WAIT took a bare number only, and `1s` or `5m` was bash arithmetic's error
    (`value too great for base`) in the middle of the run, after daemon.json was written."""
    polls, said = polls_after_reload(stale_dockerd, wait)
    assert polls == 2, said  # 1 s, polled every 0.5 s
    assert "DOCXY_RELOAD_WAIT" not in said and "base" not in said, said


@pytest.mark.parametrize("wait", ["abc", "5 mins", "1.5", "-1", "08x", "1m1m"])
def test_a_reload_wait_it_cannot_read_is_refused_before_any_change(
    stale_dockerd: ScriptBox, wait: str
) -> None:
    """`abc` was read as an unset arithmetic variable, 0: no wait at all, and dockerd
    "did not pick up the change" however soon it would have. A value it cannot read now stops
    the script before anything is changed, naming the variable and the forms it takes."""
    result = client_attempt(
        stale_dockerd, "--mirror", CLIENT_MIRROR, env={"DOCXY_RELOAD_WAIT": wait}
    )
    assert result.returncode == 2, output(result)
    assert f"DOCXY_RELOAD_WAIT={wait}" in result.stderr
    assert "30s, 5m" in result.stderr
    assert not stale_dockerd.path("/etc/docker/daemon.json").exists()
    assert not stale_dockerd.called(r"reload")


# --- 7. COMPOSE_FILE's names written as Compose reads them --------------------------------------

OVERRIDE = """services:
  docxy:
    environment:
      DOCXY_SERVER_ADMIN_HOSTS: read-from-the-override
"""


@pytest.mark.parametrize(
    "name",
    [
        "my override.yaml",  # spaces alone: both parsers keep them, quoted or not
        "ops #2.yaml",
        "ops.yaml ",
        "ops$HOME.yaml",  # v2 expands $HOME in an unquoted value
    ],
)
def test_compose_file_names_are_written_as_compose_reads_them(
    box: ScriptBox, resolver: Resolver, name: str
) -> None:
    """install.sh rewrites .env's COMPOSE_FILE (compose.yaml first, then the operator's
    files) unquoted. Both .env parsers (docker-compose 1.29's python-dotenv, v2's compose-go)
    cut an unquoted value at ` #` and strip its end, and v2 expands `$NAME` in it: the
    operator's `COMPOSE_FILE='compose.yaml:ops #2.yaml'` came back as
    `COMPOSE_FILE=compose.yaml:ops #2.yaml`, which Compose read as compose.yaml:ops, a file
    that is not there: every `docker compose` by hand in the project failed. It is now
    single-quoted where a name needs it (both take a single-quoted value as written). Checked
    with the real docker-compose 1.29 reading the written .env."""
    (clone_dir := box.base / "clone").joinpath(name).write_text(OVERRIDE)
    env_file(box).write_text(f"COMPOSE_FILE='compose.yaml:{name}'\n")
    result = install(box, resolver)
    assert result.returncode == 0, output(result)
    assert compose_files(box)[-1] == str(clone_dir / name), "the script read it right"

    written = [line for line in env_file(box).read_text().splitlines() if "COMPOSE_FILE" in line]
    assert written == [f"COMPOSE_FILE='compose.yaml:{name}'"] or (
        " #" not in name
        and name == name.strip()
        and written == [f"COMPOSE_FILE=compose.yaml:{name}"]
    ), written
    # here: test_review_composefile imports this module's helpers
    from tests.unit.test_review_composefile import compose129_service

    service = compose129_service(["--project-directory", str(clone_dir)], cwd=clone_dir)
    assert service["environment"].get("DOCXY_SERVER_ADMIN_HOSTS") == "read-from-the-override"


def test_a_compose_file_name_that_cannot_be_quoted_alike_is_refused(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A name that must be quoted and holds a `'` or `\\`: Compose 1.29 reads an escape in a
    single-quoted value, v2 does not. Refused before any change, naming it."""
    name = "bob's #1.yaml"
    (box.base / "clone" / name).write_text(OVERRIDE)
    env_file(box).write_text(f'COMPOSE_FILE="compose.yaml:{name}"\n')
    before = env_file(box).read_text()
    result = install(box, resolver)
    assert result.returncode == 2, output(result)
    assert name in result.stderr and "COMPOSE_FILE" in result.stderr, result.stderr
    assert env_file(box).read_text() == before
    assert not box.called(COMPOSE_UP)


# --- 8. an e-mail address refused under the name the operator set -------------------------------


def container_config(tmp_path: Path, **settings: str) -> str:
    """What `docxy serve --show-config` says in the container (through the entrypoint, as
    `docker exec CTR docxy ...` runs), HTTPS for mirror.test, with these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env |= {
        "PYTHONPATH": str(REPO),
        "DOCXY_STATE_DIR": str(tmp_path / "state"),
        "DOCXY_IF_INET6": str(tmp_path / "none"),
        "DOCXY_DOMAIN": "mirror.test",
        "DOCXY_SERVER_TLS_LISTEN": "127.0.43.1:10303",
        "DOCXY_SERVER_LISTEN": "127.0.43.1:10304",
        "DOCXY_SERVER_ADMIN_LISTEN": "",
        "DOCXY_UPSTREAM_REGISTRY": "http://127.0.43.1:10305",
        **settings,
    }
    # this interpreter, not `python` from PATH: Debian's python3 has none (.ci/py313's chroot)
    argv = [sys.executable, "-m", "docxy", "serve", "--show-config"]
    shown = subprocess.run(
        ["bash", str(REPO / "scripts" / "entrypoint.sh"), *argv],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    return shown.stdout + shown.stderr


def test_the_containers_email_is_refused_as_docxy_email(tmp_path: Path) -> None:
    """.env's DOCXY_EMAIL (the README's and .env.example's name) reaches the mirror as
    certs.email; the entrypoint copied it into DOCXY_CERTS_EMAIL, so a wrong one was refused
    as `certs.email: ... got 'ops-at-example.org' (env DOCXY_CERTS_EMAIL)`, a variable the
    operator never wrote and would look for in .env in vain."""
    said = container_config(tmp_path, DOCXY_EMAIL="ops-at-example.org")
    assert "'ops-at-example.org' (env DOCXY_EMAIL)" in said, said
    assert "DOCXY_CERTS_EMAIL" not in said, said


def test_the_containers_email_is_taken(tmp_path: Path) -> None:
    said = container_config(tmp_path, DOCXY_EMAIL="ops@example.org")
    assert "certs.email = ops@example.org" in said, said


def test_the_containers_certs_email_wins_and_is_named_as_set(tmp_path: Path) -> None:
    """DOCXY_CERTS_EMAIL (the mirror's own name for certs.email) wins over DOCXY_EMAIL and is
    refused under its own name."""
    said = container_config(tmp_path, DOCXY_EMAIL="ops@example.org", DOCXY_CERTS_EMAIL="bad-one")
    assert "'bad-one' (env DOCXY_CERTS_EMAIL)" in said, said
    said = container_config(tmp_path, DOCXY_EMAIL="bad-one", DOCXY_CERTS_EMAIL="ops@example.org")
    assert "certs.email = ops@example.org" in said and "bad-one" not in said, said


def test_a_blank_certs_email_line_does_not_hide_the_containers_email(tmp_path: Path) -> None:
    """A .env with DOCXY_CERTS_EMAIL= left blank beside DOCXY_EMAIL: the entrypoint's old
    ${DOCXY_CERTS_EMAIL:-$DOCXY_EMAIL} took DOCXY_EMAIL; the first version of the mirror's own
    reading (afa3ce1) took the blank instead, and the account went without an email (found
    by a read of afa3ce1)."""
    said = container_config(tmp_path, DOCXY_EMAIL="ops@example.org", DOCXY_CERTS_EMAIL="")
    assert "certs.email = ops@example.org" in said, said


def test_installs_email_from_env_is_refused_as_docxy_email(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A DOCXY_EMAIL in .env that is no address (edited by hand) stopped a rerun without
    --email with "--email 'ops-at-example.org' is not an email address", an option the
    operator did not give; it now names .env's line, as DOCXY_CACHE_MAX_SIZE's refusal does."""
    env_file(box).write_text(f"DOCXY_DOMAIN={DOMAIN}\nDOCXY_EMAIL=ops-at-example.org\n")
    result = box.run(
        clone_script(box),
        "--root", str(box.root), "--public-ip", OURS, "--dns-server", resolver.address,
        "--health-timeout", "0", "--yes",
    )  # fmt: skip
    assert result.returncode == 2, output(result)
    assert "DOCXY_EMAIL=ops-at-example.org in" in result.stderr, result.stderr
    assert "is not an email address" in result.stderr and "--email 'ops" not in result.stderr

"""Review of scripts/configure-client.sh: faults a user would hit, each shown in the sandbox
(tests/scriptbox.py) with stand-ins for docker, systemctl and kill; nothing here touches this
machine's Docker, containerd or podman."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from docxy.http.setup_script import fill_in
from tests.scriptbox import REPO, Rule, ScriptBox, output, run_ok
from tests.unit.test_configure_client import (
    DAEMON_JSON,
    HOSTS_TOML,
    MIRROR,
    SCRIPT,
    attempt,
    configure,
    daemon_json,
    docker_info,
    dockerd_with_flags,
)
from tests.unit.test_configure_client import server_ca as server_ca  # noqa: F401  (fixture)


@pytest.fixture
def box(tmp_path: Path) -> ScriptBox:
    """A Docker host under systemd whose dockerd answers `docker info` with our mirror (as
    test_configure_client's fixture)."""
    box = ScriptBox(tmp_path)
    box.stand_in("docker", docker_info(MIRROR))
    box.stand_in("systemctl", Rule(r"is-active", rc=0))
    box.stand_in("kill")
    return box


# A dockerd that reloads as moby's does (daemon/reload.go, reloadRegistryConfig): on SIGHUP it
# takes "registry-mirrors" from the file only when the key is there (IsValueSet); a file
# without the key leaves the mirrors it runs with as they were. `systemctl reload docker`
# rewrites what the `docker info` stand-in answers.
RELOAD_AS_MOBY = """
import json, os, sys
daemon_json, rules = sys.argv[1], os.path.join(os.environ["STANDINS"], ".rules", "docker.json")
with open(daemon_json) as handle:
    document = json.load(handle)
if "registry-mirrors" in document:
    mirrors = [m.rstrip("/") + "/" for m in document["registry-mirrors"] or []]
    with open(rules, "w") as handle:
        json.dump([{"pattern": "^info", "stdout": json.dumps(mirrors) + "\\n", "rc": 0,
                    "stderr": "", "passthrough": "", "effect": ""}], handle)
"""


def dockerd_reloading_as_moby(box: ScriptBox, *mirrors: str) -> None:
    program = box.base / "reload_as_moby.py"
    program.write_text(RELOAD_AS_MOBY)
    box.stand_in("docker", docker_info(*mirrors))
    box.stand_in(
        "systemctl",
        Rule(r"is-active"),
        Rule(r"^reload docker$", effect=f'python3 "{program}" "{box.path(DAEMON_JSON)}"'),
    )


def test_removing_the_only_mirror_is_taken_by_a_reloading_dockerd(box: ScriptBox) -> None:
    """--remove of the only mirror popped "registry-mirrors" out of daemon.json. dockerd's
    reload leaves the mirrors alone when the key is absent, so the running dockerd went on
    using the mirror: the run waited, failed (exit 1) and said to restart dockerd, and with
    --allow-restart restarted it (its containers stopped) for a change a reload can make."""
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text('{"debug": true}\n')
    dockerd_reloading_as_moby(box)
    configure(box, "--mirror", MIRROR, "--docker")
    assert daemon_json(box)["registry-mirrors"] == [MIRROR]

    result = attempt(
        box, "--mirror", MIRROR, "--docker", "--remove", env={"DOCXY_RELOAD_WAIT": "1"}
    )

    assert result.returncode == 0, output(result)
    assert "dockerd no longer uses" in result.stdout, output(result)
    assert MIRROR not in json.dumps(daemon_json(box))
    assert daemon_json(box)["debug"] is True
    assert not box.called(r"^systemctl restart")


def test_a_hosts_toml_without_a_final_newline_takes_the_mirror(box: ScriptBox) -> None:
    """An operator's hosts.toml whose last line has no newline (printf, some editors): the
    mirror's table was glued onto that line (`server = "..."[host."..."]`), the result did
    not parse, and the run failed with "a host given by dotted keys?" (exit 1). Where python3
    has no tomllib (Ubuntu 22.04) nothing checked it, and the broken file was written."""
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    box.path(HOSTS_TOML).write_text('server = "https://dockerhub-proxy.corp.example"')

    result = attempt(box, "--mirror", MIRROR, "--containerd")

    assert result.returncode == 0, output(result)
    hosts = tomllib.loads(box.path(HOSTS_TOML).read_text())
    assert hosts["server"] == "https://dockerhub-proxy.corp.example"
    assert list(hosts["host"]) == [MIRROR]

    configure(box, "--mirror", MIRROR, "--containerd", "--remove")
    assert tomllib.loads(box.path(HOSTS_TOML).read_text()) == {
        "server": "https://dockerhub-proxy.corp.example"
    }


@pytest.mark.parametrize("served", [False, True], ids=["by-hand", "served-later"])
def test_remove_takes_the_mirror_out_of_every_registry_it_was_put_in(
    box: ScriptBox, server_ca: Path, served: bool
) -> None:
    """Set up with --registry ghcr.io --registry quay.io (or by a /setup.sh whose mirror
    fronted quay.io then and does not now), `--remove` looked at docker.io alone (or the
    registries served now): the other hosts.toml files kept the mirror, which containerd then
    tries first at every pull, and the CA copies beside them stayed. It said "Nothing to
    change" or "removed", exit 0."""
    configure(
        box, "--mirror", MIRROR, "--containerd", "--ca-cert", str(server_ca),
        "--registry", "docker.io", "--registry", "ghcr.io", "--registry", "quay.io",
    )  # fmt: skip
    operators = box.path("/etc/containerd/certs.d/registry.corp/hosts.toml")
    operators.parent.mkdir(parents=True)
    operators.write_text('server = "https://registry.corp"\n')
    before = operators.read_text()
    box.stand_in("docker", docker_info())

    if served:
        filled = fill_in((REPO / "scripts" / SCRIPT).read_text(), MIRROR, ("docker.io", "ghcr.io"))
        said = run_ok(attempt(box, "--containerd", "--remove", stdin=filled))
    else:
        said = configure(box, "--mirror", MIRROR, "--containerd", "--remove")

    left = [
        name
        for name in box.files()
        if name.startswith("etc/containerd/") and ".docxy-backup-" not in name
    ]
    assert left == ["etc/containerd/certs.d/registry.corp/hosts.toml"], said
    assert operators.read_text() == before


def test_remove_with_registry_named_takes_only_those(box: ScriptBox) -> None:
    """--remove --registry NAME: only that registry's file, as asked."""
    configure(
        box, "--mirror", MIRROR, "--containerd", "--registry", "ghcr.io", "--registry", "quay.io"
    )

    configure(box, "--mirror", MIRROR, "--containerd", "--remove", "--registry", "quay.io")

    assert not box.path("/etc/containerd/certs.d/quay.io/hosts.toml").exists()
    assert MIRROR in box.path("/etc/containerd/certs.d/ghcr.io/hosts.toml").read_text()


@pytest.mark.parametrize("more", [[], ["--allow-restart"]], ids=["plain", "allow-restart"])
def test_remove_of_a_mirror_on_dockerds_command_line_says_where_it_is(
    box: ScriptBox, tmp_path: Path, more: list[str]
) -> None:
    """The script's own advice for a dockerd run with --registry-mirror is to put the mirror on
    that flag. `--remove` then found daemon.json without it ("nothing to remove"), reloaded
    dockerd, waited, and said to restart dockerd (or rerun with --allow-restart), which cannot
    help: with --allow-restart it restarted dockerd, stopping its containers, for nothing. It
    now says the mirror is on dockerd's command line and signals nothing."""
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text('{"debug": true}\n')
    before = box.files()
    with dockerd_with_flags(tmp_path, f"--registry-mirror={MIRROR}") as proc:
        box.stand_in(
            "systemctl",
            Rule(r"is-active", rc=0),
            Rule(r"^show .*MainPID", stdout=f"{proc.pid}\n"),
        )
        result = attempt(
            box, "--mirror", MIRROR, "--docker", "--remove", *more, env={"DOCXY_RELOAD_WAIT": "1"}
        )

    assert result.returncode == 1, output(result)
    assert not box.called(r"^(systemctl (reload|restart)|kill)"), output(result)
    assert "command line" in result.stderr and f"--registry-mirror={MIRROR}" in result.stderr
    assert "--allow-restart" not in result.stderr, output(result)
    assert box.files() == before


@pytest.mark.parametrize(
    "given",
    ["HTTPS://Mirror.Example.com", "https://mirror.example.com//", "Https://mirror.example.com/"],
)
def test_a_mirror_url_spelled_otherwise_is_the_same_mirror(box: ScriptBox, given: str) -> None:
    """The script lower-cases scheme and host ("one spelling, so every file compares equal")
    and drops a trailing slash, but its check came first: `HTTPS://...` was "not an http(s)
    URL" and `https://host//` "has a path" (exit 2)."""
    result = attempt(box, "--mirror", given, "--docker", "--containerd")

    assert result.returncode == 0, output(result)
    assert daemon_json(box)["registry-mirrors"] == [MIRROR]
    assert list(tomllib.loads(box.path(HOSTS_TOML).read_text())["host"]) == [MIRROR]


def test_allow_restart_without_systemd_does_not_say_to_rerun_with_it(
    box: ScriptBox, tmp_path: Path
) -> None:
    """A dockerd outside systemd (--dockerd-pidfile) whose reload did not take: --allow-restart
    restarts only systemd's docker unit, so nothing was restarted, and the failure said to
    `systemctl restart docker` "or rerun with --allow-restart", as the run just was."""
    box.stand_in("systemctl", Rule(r"is-active", rc=3))
    box.stand_in("docker", docker_info("https://other.example"))
    with dockerd_with_flags(tmp_path, "--debug") as proc:
        pidfile = box.base / "dockerd.pid"
        pidfile.write_text(f"{proc.pid}\n")
        result = attempt(
            box, "--mirror", MIRROR, "--docker", "--dockerd-pidfile", str(pidfile),
            "--allow-restart", env={"DOCXY_RELOAD_WAIT": "1"},
        )  # fmt: skip

    assert result.returncode == 1, output(result)
    assert not box.called(r"^systemctl restart")
    assert "rerun with --allow-restart" not in result.stderr, output(result)
    assert "systemctl restart docker" not in result.stderr, output(result)
    assert "--allow-restart" in result.stderr and "restart" in result.stderr


def test_directories_it_creates_are_readable_under_a_strict_umask(box: ScriptBox) -> None:
    """Run under `umask 077` (a hardened host's root, which sudo keeps): the directories the
    script created were 0700, /etc/containers/registries.conf.d among them, which rootless
    podman reads as its user (it could not read the drop-in directory, and failed), while the
    files in them were 0644 as meant."""
    script = (REPO / "scripts" / SCRIPT).read_text()
    result = attempt(
        box, "--mirror", MIRROR, "--podman", "--containerd", stdin="umask 077\n" + script
    )

    assert result.returncode == 0, output(result)
    for made in (
        "/etc/containers",
        "/etc/containers/registries.conf.d",
        "/etc/containerd/certs.d/docker.io",
    ):
        assert box.path(made).stat().st_mode & 0o777 == 0o755, made


def test_remove_leaves_no_mark_saying_the_mirror_comes_first(box: ScriptBox) -> None:
    """An operator's hosts.toml with a host of its own and no top-level lines got the script's
    "Written by Docxy's configure-client.sh: pulls of docker.io try the mirror first." on
    top; `--remove` took the mirror's table out and kept that line, which then said something
    false about a file that has no mirror of ours (and marked it as the script's)."""
    corp = '[host."https://corp-cache.example"]\n  capabilities = ["pull", "resolve"]\n'
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    box.path(HOSTS_TOML).write_text(corp)
    configure(box, "--mirror", MIRROR, "--containerd")
    assert "try the mirror first" in box.path(HOSTS_TOML).read_text()

    configure(box, "--mirror", MIRROR, "--containerd", "--remove")

    text = box.path(HOSTS_TOML).read_text()
    assert "configure-client.sh" not in text and "mirror first" not in text, text
    assert list(tomllib.loads(text)["host"]) == ["https://corp-cache.example"]
    assert text.endswith(corp)


@pytest.mark.parametrize(
    "args",
    [
        ["--mirror", "https://mirror.example.com:44e3"],  # dockerd: invalid port, will not start
        ["--mirror", "https://mirror.example.com:"],
        ["--mirror", "https://fd00::1"],  # IPv6 without brackets: no address to dial
        ["--mirror", "https://mirror[1].example.com"],
        ["--mirror", MIRROR, "--registry", "lab.test=https://10.0.0.5:50o0"],
        ["--mirror", MIRROR, "--registry", "lab.test=http://fd00::5"],
    ],
)
def test_a_mirror_or_registry_url_with_a_broken_host_or_port_is_refused(
    box: ScriptBox, args: list[str]
) -> None:
    """The URL check took any run of letters, digits, dots, colons and brackets as host[:port]:
    a typo in the port went into daemon.json, which dockerd then refuses to start with
    ("invalid port"; the run itself said to restart it), and an IPv6 address without brackets
    went in as a mirror nothing can dial. Refused now (exit 2), nothing written."""
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text('{"debug": true}\n')
    before = box.files()

    result = attempt(box, *args, "--docker", "--containerd")

    assert result.returncode == 2, output(result)
    assert box.files() == before
    assert not box.called(r"^(systemctl|kill)")


@pytest.mark.parametrize(
    "mirror",
    [
        "https://[fd00::1]:5000",
        "https://mirror.example.com:8443",
        "http://127.0.0.1:5000",
        "https://m-1.example",
    ],
)
def test_good_mirror_urls_are_still_taken(box: ScriptBox, mirror: str) -> None:
    box.stand_in("docker", docker_info(mirror))

    result = attempt(
        box, "--mirror", mirror, "--docker", "--containerd",
        "--registry", "lab.test=https://[FD00::5]:5000",
        "--registry", "corp.test=HTTPS://Registry.Corp.example",  # as /setup.sh may serve it
    )  # fmt: skip

    assert result.returncode == 0, output(result)
    assert daemon_json(box)["registry-mirrors"] == [mirror]


@pytest.mark.parametrize(
    "args",
    [
        ["--mirror", "https://mirror.example.com:0"],
        ["--mirror", "https://mirror.example.com:65536"],
        ["--mirror", "https://mirror.example.com:99999"],
        ["--mirror", "http://127.0.0.1:00000"],
        ["--mirror", MIRROR, "--registry", "lab.test:0"],
        ["--mirror", MIRROR, "--registry", "lab.test:70000=https://10.0.0.5:5000"],
        ["--mirror", MIRROR, "--registry", "lab.test=https://10.0.0.5:65536"],
        ["--mirror", MIRROR, "--registry", "lab.test=https://[fd00::5]:0"],
    ],
)
def test_a_port_outside_1_to_65535_is_refused(box: ScriptBox, args: list[str]) -> None:
    """Any one to five digits passed as a port: dockerd takes a mirror at port 0 or 99999 and
    then sends every pull to Docker Hub without a word. Refused now (exit 2), nothing written."""
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text('{"debug": true}\n')
    before = box.files()

    result = attempt(box, *args, "--docker", "--containerd")

    assert result.returncode == 2, output(result)
    assert "port" in result.stderr and "1 to 65535" in result.stderr, output(result)
    assert box.files() == before
    assert not box.called(r"^(systemctl|kill)")


@pytest.mark.parametrize(
    "mirror", ["https://mirror.example.com:65535", "http://127.0.0.1:1", "https://m.example:08443"]
)
def test_ports_at_the_ends_of_the_range_are_taken(box: ScriptBox, mirror: str) -> None:
    box.stand_in("docker", docker_info(mirror))

    result = attempt(
        box, "--mirror", mirror, "--docker", "--containerd",
        "--registry", "lab.test:65535=https://10.0.0.5:1",
    )  # fmt: skip

    assert result.returncode == 0, output(result)
    assert daemon_json(box)["registry-mirrors"] == [mirror]


def test_remove_takes_out_a_mirror_at_a_port_outside_the_range(box: ScriptBox) -> None:
    """An older version of the script wrote one; the run that takes it out is not refused."""
    wrong = "https://mirror.example.com:99999"
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text(json.dumps({"registry-mirrors": [wrong, "https://o.example"]}))
    box.stand_in("docker", docker_info("https://o.example"))

    result = attempt(box, "--mirror", wrong, "--remove", "--docker")

    assert result.returncode == 0, output(result)
    assert daemon_json(box)["registry-mirrors"] == ["https://o.example"]

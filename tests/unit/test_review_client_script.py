"""Review of scripts/configure-client.sh: faults a user would hit, each shown in the sandbox
(tests/scriptbox.py) with stand-ins for docker, systemctl and kill; nothing here touches this
machine's Docker, containerd or podman."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tests.scriptbox import Rule, ScriptBox, output
from tests.unit.test_configure_client import (
    DAEMON_JSON,
    HOSTS_TOML,
    MIRROR,
    attempt,
    configure,
    daemon_json,
    docker_info,
)


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

"""Review of configure-client.sh's word on plain-HTTP mirrors on loopback, by Docker version.

Facts the script now follows (moby's registry config): dockerd counts 127.0.0.0/8 insecure by
default, and ::1/128 too from Docker 28.0 (moby PR #48540); from Docker 29.10 (moby PR #53868)
neither is added once insecure-registries is set at all (daemon.json, even [], or
--insecure-registry flags), so a plain-HTTP mirror on loopback is then passed by unless its
HOST:PORT is listed. Shown in the sandbox (tests/scriptbox.py) with stand-ins for docker,
systemctl and kill, except the last test, which asks a private dockerd of its own (Debian's
20.10: ::1 not insecure) on its own socket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.clients.dockerd import running_dockerd
from tests.scriptbox import SCRIPTS, Rule, ScriptBox, output
from tests.unavailable import DOCKER, need_binaries, need_root
from tests.unit.test_configure_client import (
    DAEMON_JSON,
    attempt,
    docker_info,
    dockerd_with_flags,
)
from tests.unit.test_configure_client import (
    box as box,  # noqa: F401  (fixture)
)

V6 = "http://[::1]:8080"
V4 = "http://127.0.0.1:8080"


def answers(box: ScriptBox, mirror: str, version: str = "", config: object = None) -> None:
    """The stand-in docker: `docker info` lists ``mirror``; `docker version` says ``version``
    (none: the CLI does not tell); `docker info`'s RegistryConfig is ``config`` (None: the
    mirrors' answer, as the older stand-ins give, which tells nothing)."""
    rules = []
    if version:
        rules.append(Rule(r"^version", stdout=version + "\n"))
    if config is not None:
        rules.append(Rule(r"^info .*\.RegistryConfig\}\}", stdout=json.dumps(config) + "\n"))
    rules.append(docker_info(mirror))
    box.stand_in("docker", *rules)


def with_daemon_json(box: ScriptBox, document: dict[str, object]) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True, exist_ok=True)
    box.path(DAEMON_JSON).write_text(json.dumps(document))


def registry_config(mirror: str, cidrs: list[str] | None, insecure: tuple[str, ...] = ()) -> object:
    """`docker info --format '{{json .RegistryConfig}}'` as dockerd gives it (checked against
    Debian's dockerd 20.10.24)."""
    hub = {"Mirrors": [mirror + "/"], "Name": "docker.io", "Official": True, "Secure": True}
    indexes: dict[str, object] = {"docker.io": hub}
    for name in insecure:
        indexes[name] = {"Mirrors": [], "Name": name, "Official": False, "Secure": False}
    return {"IndexConfigs": indexes, "InsecureRegistryCIDRs": cidrs, "Mirrors": [mirror + "/"]}


# --- 1. [::1]: fine from Docker 28, insecure-registries before -------------------------------


def test_ipv6_loopback_mirror_on_docker_28_and_later_is_not_warned_about(box: ScriptBox) -> None:
    """dockerd 28 and later count ::1/128 insecure by default (moby PR #48540): the warning
    that it needs insecure-registries was false there."""
    answers(box, V6, version="28.0.4")

    result = attempt(box, "--mirror", V6, "--docker")

    assert result.returncode == 0, output(result)
    assert "insecure-registries" not in result.stderr, output(result)


def test_ipv6_loopback_mirror_on_older_docker_names_its_version(box: ScriptBox) -> None:
    answers(box, V6, version="20.10.24+dfsg1")

    result = attempt(box, "--mirror", V6, "--docker")

    assert result.returncode == 0, output(result)
    assert '"[::1]:8080"' in result.stderr and "insecure-registries" in result.stderr
    assert "20.10.24" in result.stderr and "28" in result.stderr, output(result)


def test_ipv6_loopback_mirror_of_an_unknown_docker_says_both(box: ScriptBox) -> None:
    """No `docker version` answer: dockerd 28 and later take it as it is, older ones need it
    in insecure-registries; the script says both."""
    answers(box, V6)

    result = attempt(box, "--mirror", V6, "--docker")

    assert result.returncode == 0, output(result)
    assert "28 and later" in result.stderr and "insecure-registries" in result.stderr, output(
        result
    )


# --- 2. insecure-registries set: Docker 29.10 passes loopback by ----------------------------


@pytest.mark.parametrize("listed", [[], ["10.0.0.5:5000"], None])
@pytest.mark.parametrize("mirror", [V4, "http://localhost:8080", V6, "http://127.0.0.1"])
def test_a_loopback_mirror_beside_insecure_registries_is_warned_about_for_29_10(
    box: ScriptBox, mirror: str, listed: list[str] | None
) -> None:
    """Any insecure-registries key (even [] or null) stops Docker 29.10 and later adding
    127.0.0.0/8 and ::1/128 (moby PR #53868): the mirror is passed by unless its HOST:PORT is
    listed. The script said nothing."""
    answers(box, mirror)
    with_daemon_json(box, {"insecure-registries": listed})
    hostport = mirror.removeprefix("http://")

    result = attempt(box, "--mirror", mirror, "--docker")

    assert result.returncode == 0, output(result)
    assert "29.10" in result.stderr and f'"{hostport}"' in result.stderr, output(result)
    assert json.loads(box.path(DAEMON_JSON).read_text())["insecure-registries"] == listed


@pytest.mark.parametrize(
    "listed", [["127.0.0.1:8080"], ["http://127.0.0.1:8080"], ["127.0.0.0/8"], ["127.0.0.1/32"]]
)
def test_a_loopback_mirror_listed_in_insecure_registries_is_not_warned_about(
    box: ScriptBox, listed: list[str]
) -> None:
    answers(box, V4)
    with_daemon_json(box, {"insecure-registries": listed})

    result = attempt(box, "--mirror", V4, "--docker")

    assert result.returncode == 0, output(result)
    assert "insecure-registries" not in result.stderr, output(result)


def test_no_insecure_registries_key_no_warning_for_127(box: ScriptBox) -> None:
    answers(box, V4, version="29.10.0")
    with_daemon_json(box, {"debug": True})

    result = attempt(box, "--mirror", V4, "--docker")

    assert result.returncode == 0, output(result)
    assert result.stderr == "", output(result)


def test_before_29_10_it_says_the_mirror_works_now_and_stops_on_upgrade(box: ScriptBox) -> None:
    answers(box, V4, version="29.9.1")
    with_daemon_json(box, {"insecure-registries": []})

    result = attempt(box, "--mirror", V4, "--docker")

    assert result.returncode == 0, output(result)
    assert "29.9.1 uses it now" in result.stderr, output(result)
    assert "29.10" in result.stderr and '"127.0.0.1:8080"' in result.stderr


def test_on_29_10_it_says_dockerd_passes_the_mirror_by_now(box: ScriptBox) -> None:
    answers(box, V4, version="29.10.0")
    with_daemon_json(box, {"insecure-registries": []})

    result = attempt(box, "--mirror", V4, "--docker")

    assert "29.10.0 passes" in result.stderr and "Docker Hub" in result.stderr, output(result)
    assert '"127.0.0.1:8080"' in result.stderr


@pytest.mark.parametrize(
    ("flags", "warned"),
    [
        (["--insecure-registry=10.0.0.5:5000"], True),
        (["--insecure-registry", "10.0.0.5:5000"], True),
        (["--insecure-registry=10.0.0.5:5000", "--insecure-registry", "127.0.0.1:8080"], False),
        (["--debug"], False),
    ],
)
def test_insecure_registry_flags_on_dockerd_count_as_the_key(
    box: ScriptBox, tmp_path: Path, flags: list[str], warned: bool
) -> None:
    answers(box, V4)
    with dockerd_with_flags(tmp_path, *flags) as proc:
        pidfile = box.base / "dockerd.pid"
        pidfile.write_text(f"{proc.pid}\n")
        result = attempt(box, "--mirror", V4, "--docker", "--dockerd-pidfile", str(pidfile))

    assert result.returncode == 0, output(result)
    assert ("29.10" in result.stderr) is warned, output(result)


# --- 3. `docker info` lists the mirror, yet dockerd will not use it ---------------------------


@pytest.mark.parametrize(
    ("mirror", "cidrs", "insecure"),
    [
        (mirror, cidrs, insecure)
        for mirror in (V6, V4)
        for cidrs, insecure in (
            ([], ()),  # Docker 29.10 and later with insecure-registries: []
            (None, ()),  # the same, the empty list given as null
            (["127.0.0.0/8"], ()),  # Docker 27 and earlier: ::1 is not insecure
            (["10.9.0.0/16"], ("127.0.0.1:8081",)),  # another port listed
        )
        if not (mirror == V4 and cidrs == ["127.0.0.0/8"])  # 127.0.0.1 is in it: used
    ],
)
def test_a_listed_mirror_dockerd_counts_secure_is_not_taken_for_used(
    box: ScriptBox, mirror: str, cidrs: list[str] | None, insecure: tuple[str, ...]
) -> None:
    """`docker info` lists a plain-HTTP mirror dockerd does not count insecure (its
    RegistryConfig: no IndexConfigs entry with Secure false, no InsecureRegistryCIDRs holding
    the address): dockerd passes it by and pulls from Docker Hub, yet the script said 'dockerd
    now uses' it and exited 0."""
    answers(box, mirror, config=registry_config(mirror, cidrs, insecure))

    result = attempt(box, "--mirror", mirror, "--docker", env={"DOCXY_RELOAD_WAIT": "1"})

    assert result.returncode == 1, output(result)
    assert "now uses" not in result.stdout, output(result)
    assert "Docker Hub" in result.stderr and mirror.removeprefix("http://") in result.stderr


@pytest.mark.parametrize(
    ("mirror", "cidrs", "insecure"),
    [
        (V6, ["::1/128", "127.0.0.0/8"], ()),
        (V6, [], ("[::1]:8080",)),
        ("http://127.0.0.1:8080", ["127.0.0.0/8"], ()),
        ("http://localhost:8080", ["127.0.0.0/8"], ()),
        ("http://[::ffff:127.0.0.1]:8080", ["127.0.0.0/8"], ()),
        ("http://10.0.0.5:8080", ["10.0.0.0/8"], ()),
    ],
)
def test_a_mirror_dockerd_counts_insecure_is_used(
    box: ScriptBox, mirror: str, cidrs: list[str], insecure: tuple[str, ...]
) -> None:
    answers(box, mirror, version="28.0.0", config=registry_config(mirror, cidrs, insecure))

    result = attempt(box, "--mirror", mirror, "--docker")

    assert result.returncode == 0, output(result)
    assert f"dockerd now uses {mirror}" in result.stdout, output(result)


def test_a_real_dockerd_20_10_listing_an_ipv6_loopback_mirror_is_not_taken_for_using_it(
    tmp_path: Path,
) -> None:
    """Debian's dockerd 20.10 (this machine's) counts only 127.0.0.0/8 insecure: with the
    plain-HTTP mirror http://[::1]:8090 in daemon.json it lists the mirror in `docker info`
    and passes it by. The script said 'docker info: dockerd now uses' it, exit 0. Nothing is
    pulled: the egress proxy named (127.0.0.110:8099) has no listener."""
    need_binaries(*DOCKER, "python3")
    need_root("dockerd runs as root")
    mirror = "http://[::1]:8090"
    dead = "http://127.0.0.110:8098"
    with running_dockerd(mirror_url=dead, egress_proxy="http://127.0.0.110:8099") as daemon:
        result = subprocess.run(
            [
                shutil.which("bash") or "bash",
                str(SCRIPTS / "configure-client.sh"),
                "--mirror",
                mirror,
                "--docker",
                "--daemon-json",
                str(daemon.root / "daemon.json"),
                "--dockerd-pidfile",
                str(daemon.root / "docker.pid"),
            ],
            env={**daemon.env, "DOCXY_RELOAD_WAIT": "30", "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        config = json.loads(daemon.docker("info", "--format", "{{json .RegistryConfig}}").stdout)

    assert config["Mirrors"] == [mirror + "/", dead + "/"], config  # the reload took
    assert result.returncode == 1, output(result)
    assert "now uses" not in result.stdout, output(result)
    assert "[::1]:8090" in result.stderr and "Docker Hub" in result.stderr, output(result)

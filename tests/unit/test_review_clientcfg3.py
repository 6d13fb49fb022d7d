"""Review of configure-client.sh (containerd's certificate copies on --remove, --user under
--root, the [::1] warnings): each fault shown in the sandbox (tests/scriptbox.py) with
stand-ins for docker, systemctl and kill; nothing here touches this machine's Docker,
containerd or podman."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.scriptbox import SCRIPTS, Rule, ScriptBox, output, run_ok
from tests.unavailable import need_binary
from tests.unit.test_configure_client import (
    CLIENT_CERT,
    CLIENT_KEY,
    MIRROR,
    attempt,
    configure,
    docker_info,
)
from tests.unit.test_configure_client import (
    box as box,  # noqa: F401  (fixture)
)
from tests.unit.test_configure_client import (
    kit as kit,  # noqa: F401  (fixture)
)
from tests.unit.test_configure_client import (
    server_ca as server_ca,  # noqa: F401  (fixture)
)
from tests.unit.test_review_client2 import V6, answers, with_daemon_json

CONTAINERD_CA = "/etc/containerd/certs.d/docker.io/ca-mirror.example.com.crt"
CONTAINERD_RECORD = "/etc/containerd/certs.d/docker.io/docxy-installed.sha256"
OPERATORS_CA = b"-----BEGIN CERTIFICATE-----\nthe operator's own\n-----END CERTIFICATE-----\n"

# --- 1. --remove and containerd's copies: the install record's rule, as in certs.d ----------


def test_remove_keeps_an_operators_own_file_beside_hosts_toml(box: ScriptBox, kit: Path) -> None:
    """An operator's own ca-<mirror-host>.crt beside hosts.toml (their server CA, named as the
    script names its copy) went on --remove, while the same file in certs.d/<mirror-host>/ stays
    unless the record says the script put it there."""
    args = ("--mirror", MIRROR, "--containerd")
    configure(box, *args, "--client-cert", str(kit))
    box.path(CONTAINERD_CA).write_bytes(OPERATORS_CA)

    said = configure(box, *args, "--remove")

    assert box.path(CONTAINERD_CA).read_bytes() == OPERATORS_CA, said
    assert f"left {box.path(CONTAINERD_CA)}" in said
    assert not box.path(CLIENT_CERT).exists(), "the script's own copies go"
    assert not box.path(CLIENT_KEY).exists()
    assert not box.path(CONTAINERD_RECORD).exists(), "the record goes with the last of them"


def test_remove_keeps_a_copy_changed_since_the_install(
    box: ScriptBox, kit: Path, server_ca: Path
) -> None:
    args = ("--mirror", MIRROR, "--containerd")
    configure(box, *args, "--client-cert", str(kit), "--ca-cert", str(server_ca))
    box.path(CONTAINERD_CA).write_bytes(OPERATORS_CA)  # replaced by hand since

    said = configure(box, *args, "--remove")

    assert box.path(CONTAINERD_CA).read_bytes() == OPERATORS_CA, said
    assert not box.path(CLIENT_KEY).exists(), said


def test_an_operators_file_in_the_way_is_backed_up_before_the_copy(
    box: ScriptBox, server_ca: Path
) -> None:
    box.path(CONTAINERD_CA).parent.mkdir(parents=True)
    box.path(CONTAINERD_CA).write_bytes(OPERATORS_CA)

    said = configure(box, "--mirror", MIRROR, "--containerd", "--ca-cert", str(server_ca))

    assert box.path(CONTAINERD_CA).read_bytes() == server_ca.read_bytes()
    saved = sorted(box.path(CONTAINERD_CA).parent.glob("ca-mirror.example.com.crt.docxy-backup-*"))
    assert [p.read_bytes() for p in saved] == [OPERATORS_CA], said


def test_two_mirrors_beside_one_hosts_toml_keep_each_others_record(
    box: ScriptBox, kit: Path
) -> None:
    """Each mirror's copies beside one hosts.toml are noted in one record: taking one mirror
    out keeps the other's copies and their notes, so its own --remove still finds them."""
    other = "https://other-mirror.example.com"
    configure(box, "--mirror", MIRROR, "--containerd", "--client-cert", str(kit))
    configure(box, "--mirror", other, "--containerd", "--client-cert", str(kit))

    configure(box, "--mirror", MIRROR, "--containerd", "--remove")
    others = box.path(CLIENT_KEY).parent / "client-other-mirror.example.com.key"
    assert others.exists()
    assert "client-other-mirror.example.com.key" in box.path(CONTAINERD_RECORD).read_text()
    said = configure(box, "--mirror", other, "--containerd", "--remove")

    assert not others.exists(), said
    assert not box.path(CONTAINERD_RECORD).exists(), said


# --- 2. --user under --root ---------------------------------------------------------------


def test_user_under_root_writes_under_the_root(box: ScriptBox, kit: Path, tmp_path: Path) -> None:
    """--root DIR "takes every path under DIR": with --user the drop-in and certificates went
    into the real $HOME all the same."""
    home = tmp_path / "home"
    home.mkdir()
    said = run_ok(
        attempt(
            box,
            "--mirror",
            MIRROR,
            "--podman",
            "--user",
            "--client-cert",
            str(kit),
            env={"HOME": str(home)},
        )
    )

    assert list(home.iterdir()) == [], said
    under = box.path(str(home)) / ".config/containers"
    assert (under / "registries.conf.d/50-docxy-mirror.conf").is_file(), said
    assert (under / "certs.d/mirror.example.com/client.key").stat().st_mode & 0o777 == 0o600


# --- 3. [::1], dockerd's version unknown, insecure-registries set: one message ----------------


def test_ipv6_loopback_beside_insecure_registries_of_an_unknown_docker_is_one_message(
    box: ScriptBox,
) -> None:
    """Two warnings, the first saying dockerd 28 and later take [::1] as it is, the second that
    29.10 and later do not: one says what holds for every version."""
    answers(box, V6)
    with_daemon_json(box, {"insecure-registries": ["10.0.0.5:5000"]})

    result = attempt(box, "--mirror", V6, "--docker")

    assert result.returncode == 0, output(result)
    assert "take it as it is" not in result.stderr, output(result)
    assert result.stderr.count('Add "[::1]:8080" to "insecure-registries"') == 1, output(result)
    assert "27" in result.stderr and "29.10" in result.stderr, output(result)


@pytest.mark.parametrize("version", ["", "20.10.24", "28.3.1", "29.10.0"])
def test_ipv6_loopback_listed_in_insecure_registries_is_not_warned_about(
    box: ScriptBox, version: str
) -> None:
    answers(box, V6, version=version)
    with_daemon_json(box, {"insecure-registries": ["[::1]:8080"]})

    result = attempt(box, "--mirror", V6, "--docker")

    assert result.returncode == 0, output(result)
    assert "insecure-registries" not in result.stderr, output(result)


def test_second_run_with_certificates_changes_nothing(box: ScriptBox, kit: Path) -> None:
    args = ("--mirror", MIRROR, "--docker", "--containerd", "--podman", "--client-cert", str(kit))
    configure(box, *args)
    before = box.files()
    box.stand_in("docker", docker_info(MIRROR))

    said = configure(box, *args)

    assert box.files() == before
    assert "Nothing to change" in said


# --- 4. `curl .../setup.sh | sudo sh`: dash, not bash -----------------------------------------


def test_piped_to_sh_says_to_pipe_to_bash_and_changes_nothing(box: ScriptBox) -> None:
    """Debian's and Ubuntu's sh is dash: `curl -fsSL URL/setup.sh | sudo sh` (as Docker's own
    get.docker.com is run) stopped at "sh: 28: set: Illegal option -o pipefail", which named
    neither the script nor the fix."""
    dash = need_binary("dash")
    script = (SCRIPTS / "configure-client.sh").read_text()

    result = subprocess.run(
        [dash, "-s", "--", "--mirror", MIRROR, "--root", str(box.root), "--docker"],
        input=script,
        env={"PATH": f"{box.bin}:{box.tools}", "HOME": str(box.base), "TMPDIR": str(box.base)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, output(result)
    assert "| sudo bash" in result.stderr and "pipefail" not in result.stderr, output(result)
    assert box.files() == {}


# --- 5. dockerd stopped, --registry-mirror in its unit: the next start left Docker down -------

UNIT_EXEC_START = (
    "{ path=/usr/bin/dockerd ; argv[]=/usr/bin/dockerd -H fd:// --registry-mirror=https://old.example"
    " --containerd=/run/containerd/containerd.sock ; ignore_errors=no ; start_time=[n/a] ;"
    " stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }\n"
)


def test_a_stopped_dockerd_whose_unit_has_registry_mirror_gets_no_registry_mirrors_key(
    box: ScriptBox,
) -> None:
    """With dockerd stopped (no pid to read its command line from) the --registry-mirror flag in
    its systemd unit went unseen: registry-mirrors was written, the run said "no running dockerd
    found: it reads the mirror when it starts" (exit 0), and `systemctl start docker` then failed
    ("directives are specified both as a flag and in the configuration file")."""
    box.stand_in(
        "systemctl",
        Rule(r"^is-active", rc=3),
        Rule(r"^show .*ExecStart", stdout=UNIT_EXEC_START),
    )
    box.stand_in("docker", Rule(r"^(info|version)", rc=1, stderr="Cannot connect\n"))

    result = attempt(box, "--mirror", MIRROR, "--docker")

    assert result.returncode == 1, output(result)
    assert "--registry-mirror" in result.stderr, output(result)
    assert f"--registry-mirror={MIRROR}" in result.stderr
    assert not box.path("/etc/docker/daemon.json").exists()


def test_a_stopped_dockerd_whose_unit_has_no_registry_mirror_gets_the_key(box: ScriptBox) -> None:
    box.stand_in(
        "systemctl",
        Rule(r"^is-active", rc=3),
        Rule(r"^show .*ExecStart", stdout=UNIT_EXEC_START.replace("--registry-mirror=", "--x=")),
    )
    box.stand_in("docker", Rule(r"^(info|version)", rc=1, stderr="Cannot connect\n"))

    said = run_ok(attempt(box, "--mirror", MIRROR, "--docker"))

    assert "no running dockerd found" in said
    assert box.path("/etc/docker/daemon.json").read_text().count(MIRROR) == 1

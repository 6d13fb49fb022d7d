"""Review of configure-client.sh (certs.d on --remove, rootless podman, `docker info`
compared, IPv6 loopback): each fault shown in the sandbox (tests/scriptbox.py) with stand-ins
for docker, systemctl and kill; nothing here touches this machine's Docker, containerd or
podman."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scriptbox import Rule, ScriptBox, output, run_ok
from tests.unit.test_configure_client import (
    CERTS_D,
    DAEMON_JSON,
    MIRROR,
    attempt,
    configure,
    daemon_json,
    docker_info,
    dockerd_with_flags,
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

PODMAN_CERTS = "/etc/containers/certs.d/mirror.example.com"


def certs_run(box: ScriptBox, *args: str) -> str:
    """A run for the certificates alone: dockerd (the stand-in) is not reloaded or asked."""
    return configure(box, "--mirror", MIRROR, "--no-reload", *args)


# --- 1. --remove keeps what the operator put in certs.d/<mirror>/ ---------------------------


@pytest.mark.parametrize("certs", [CERTS_D, PODMAN_CERTS])
def test_remove_keeps_a_ca_crt_the_operator_placed_by_hand(
    box: ScriptBox, kit: Path, server_ca: Path, certs: str
) -> None:
    """The operator keeps the CA of the mirror's server certificate in certs.d/<mirror>/ by
    hand (the run installed only the client pair): --remove deleted it with the pair, and
    Docker (or podman) then refused the mirror's certificate for every other use of that host."""
    runtime = "--docker" if certs == CERTS_D else "--podman"
    box.path(certs).mkdir(parents=True)
    box.path(f"{certs}/ca.crt").write_bytes(server_ca.read_bytes())
    certs_run(box, runtime, "--client-cert", str(kit))
    assert box.path(f"{certs}/client.key").exists()

    said = certs_run(box, runtime, "--remove")

    assert box.path(f"{certs}/ca.crt").read_bytes() == server_ca.read_bytes(), said
    assert not box.path(f"{certs}/client.cert").exists()
    assert not box.path(f"{certs}/client.key").exists()
    assert sorted(p.name for p in box.path(certs).iterdir()) == ["ca.crt"]
    assert f"left {box.path(certs)}/ca.crt" in said


def test_remove_keeps_a_certificate_replaced_since_the_run(
    box: ScriptBox, kit: Path, server_ca: Path
) -> None:
    """A file this script installed and the operator has since replaced is theirs now."""
    certs_run(box, "--docker", "--ca-cert", str(server_ca))
    mine = b"-----BEGIN CERTIFICATE-----\nmine\n-----END CERTIFICATE-----\n"
    box.path(f"{CERTS_D}/ca.crt").write_bytes(mine)

    said = certs_run(box, "--docker", "--remove")

    assert box.path(f"{CERTS_D}/ca.crt").read_bytes() == mine, said


def test_remove_takes_out_what_it_installed_and_the_directory(
    box: ScriptBox, kit: Path, server_ca: Path
) -> None:
    certs_run(box, "--docker", "--client-cert", str(kit), "--ca-cert", str(server_ca))
    again = certs_run(box, "--docker", "--client-cert", str(kit), "--ca-cert", str(server_ca))
    assert "Nothing to change" in again

    said = certs_run(box, "--docker", "--remove")

    assert not box.path(CERTS_D).exists(), said


def test_remove_of_an_older_runs_install_is_matched_by_the_files_given(
    box: ScriptBox, kit: Path, server_ca: Path
) -> None:
    """An install from before the record was kept (no docxy-installed.sha256): the files are taken
    out when --remove is given the same --client-cert DIR / --ca-cert FILE, else left, named."""
    certs = box.path(CERTS_D)
    certs.mkdir(parents=True)
    for name, source in (
        ("client.cert", kit / "client.cert"),
        ("client.key", kit / "client.key"),
        ("ca.crt", server_ca),
    ):
        (certs / name).write_bytes(source.read_bytes())

    said = certs_run(box, "--docker", "--remove")
    assert sorted(p.name for p in certs.iterdir()) == ["ca.crt", "client.cert", "client.key"]
    assert "left" in said and "client.key" in said

    said = certs_run(
        box, "--docker", "--remove", "--client-cert", str(kit), "--ca-cert", str(server_ca)
    )
    assert not certs.exists(), said


def test_a_ca_crt_of_the_operators_is_backed_up_before_ca_cert_replaces_it(
    box: ScriptBox, server_ca: Path
) -> None:
    mine = b"-----BEGIN CERTIFICATE-----\nmine\n-----END CERTIFICATE-----\n"
    box.path(CERTS_D).mkdir(parents=True)
    box.path(f"{CERTS_D}/ca.crt").write_bytes(mine)

    said = certs_run(box, "--docker", "--ca-cert", str(server_ca))

    assert box.path(f"{CERTS_D}/ca.crt").read_bytes() == server_ca.read_bytes()
    kept = [p for p in box.path(CERTS_D).iterdir() if p.name.startswith("ca.crt.docxy-backup-")]
    assert [p.read_bytes() for p in kept] == [mine], said
    # Docker reads every *.crt there as a CA: the backup's name must not end in .crt.
    assert not any(p.name.endswith((".crt", ".cert", ".key")) for p in kept)


# --- 2. rootless podman cannot read root's key ----------------------------------------------


def test_rootless_podman_gets_its_own_certs_d_with_user(
    box: ScriptBox, kit: Path, tmp_path: Path
) -> None:
    """podman run rootless reads ~/.config/containers/certs.d/<host>/ first, then
    /etc/containers/certs.d/<host>/ (the first that exists); there the key is root's, mode 600,
    and every pull through the mirror failed with "permission denied". --user installs the pair
    in the user's own directory, the key 600 and the user's, touching nothing under /etc."""
    home = tmp_path / "home"
    home.mkdir()
    result = attempt(
        box,
        "--mirror",
        MIRROR,
        "--podman",
        "--user",
        "--client-cert",
        str(kit),
        env={"HOME": str(home)},
    )
    said = run_ok(result)

    # Under the sandbox's --root, as every other path (test_review_clientcfg3).
    certs = box.path(str(home)) / ".config/containers/certs.d/mirror.example.com"
    assert (certs / "client.key").read_bytes() == (kit / "client.key").read_bytes(), said
    assert (certs / "client.key").stat().st_mode & 0o777 == 0o600
    assert (certs / "client.cert").exists()
    dropin = box.path(str(home)) / ".config/containers/registries.conf.d/50-docxy-mirror.conf"
    assert 'location = "mirror.example.com"' in dropin.read_text()
    assert all(name.startswith(str(home).lstrip("/")) for name in box.files()), "nothing in /etc"

    removed = run_ok(
        attempt(box, "--mirror", MIRROR, "--podman", "--user", "--remove", env={"HOME": str(home)})
    )
    assert not certs.exists(), removed
    assert not dropin.exists()


def test_user_is_for_podman_alone(box: ScriptBox, tmp_path: Path) -> None:
    result = attempt(box, "--mirror", MIRROR, "--docker", "--user", env={"HOME": str(tmp_path)})

    assert result.returncode == 2, output(result)
    assert "--user" in result.stderr


def test_a_system_install_for_podman_says_rootless_podman_cannot_read_the_key(
    box: ScriptBox, kit: Path
) -> None:
    said = configure(box, "--mirror", MIRROR, "--podman", "--client-cert", str(kit))

    assert "rootless" in said and "--user" in said


# --- 3. `docker info` compared as the file is -------------------------------------------------


def test_docker_info_is_compared_without_regard_to_case(box: ScriptBox, tmp_path: Path) -> None:
    """dockerd runs with --registry-mirror=HTTPS://Mirror.Example.com (the operator's spelling
    in its unit) and `docker info` reports it so: the script took that for "not using the
    mirror" and failed (exit 1), telling the operator to add the very mirror the flag names."""
    spelled = "HTTPS://Mirror.Example.com"
    box.stand_in("docker", Rule(r"^info", stdout=json.dumps([spelled + "/"]) + "\n"))
    with dockerd_with_flags(tmp_path, f"--registry-mirror={spelled}") as proc:
        pidfile = box.base / "dockerd.pid"
        pidfile.write_text(f"{proc.pid}\n")
        result = attempt(box, "--mirror", MIRROR, "--docker", "--dockerd-pidfile", str(pidfile))

    assert result.returncode == 0, output(result)
    assert "dockerd already uses" in result.stdout
    assert not box.path(DAEMON_JSON).exists()


def test_a_removed_mirror_that_dockerd_reports_in_another_case_is_not_taken_for_gone(
    box: ScriptBox,
) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text(json.dumps({"registry-mirrors": [MIRROR]}))
    # The reload does not take: dockerd still reports the mirror (in its own spelling).
    box.stand_in(
        "docker", Rule(r"^info", stdout=json.dumps(["https://MIRROR.example.com/"]) + "\n")
    )

    result = attempt(
        box, "--mirror", MIRROR, "--docker", "--remove", env={"DOCXY_RELOAD_WAIT": "1"}
    )

    assert result.returncode == 1, output(result)
    assert daemon_json(box) == {"registry-mirrors": []}


# --- 4. IPv6 literals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mirror", "warned"),
    [
        ("http://[::1]:8080", True),
        ("http://[0:0:0:0:0:0:0:1]:8080", True),
        ("http://[fd00::5]:8080", True),
        ("http://[::ffff:127.0.0.1]:8080", False),
        ("http://127.0.0.1:8080", False),
        ("http://localhost:8080", False),
        ("https://[::1]:8443", False),
    ],
)
def test_plain_http_on_ipv6_loopback_needs_insecure_registries_too(
    box: ScriptBox, mirror: str, warned: bool
) -> None:
    """dockerd up to Docker 27 counts 127.0.0.0/8 alone as insecure by default (moby's registry
    config; ::1/128 joined it in Docker 28, moby PR #48540): a plain-HTTP mirror at [::1] is
    passed by there unless it is in insecure-registries, as one at 10.0.0.5 is, yet the script
    kept quiet about it. (Docker 28 and later: test_review_client2.)"""
    box.stand_in("docker", Rule(r"^version", stdout="27.5.1\n"), docker_info(mirror))

    result = attempt(box, "--mirror", mirror, "--docker")

    assert result.returncode == 0, output(result)
    assert ("insecure-registries" in result.stderr) is warned, output(result)


def test_user_a_registries_conf_of_the_users_own_is_looked_at_not_the_systems(
    box: ScriptBox, tmp_path: Path
) -> None:
    """Rootless podman reads ~/.config/containers/registries.conf instead of the system's when
    there is one: a Docker Hub table of the user's there stands in the drop-in's way."""
    home = tmp_path / "home"
    conf = box.path(str(home)) / ".config/containers/registries.conf"  # under --root
    conf.parent.mkdir(parents=True)
    conf.write_text('[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n')

    result = attempt(box, "--mirror", MIRROR, "--podman", "--user", env={"HOME": str(home)})

    assert result.returncode == 1, output(result)
    assert str(conf) in result.stderr
    assert not (conf.parent / "registries.conf.d").exists()

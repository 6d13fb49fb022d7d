"""Review of scripts/install.sh: faults a new user would hit on a fresh VPS.

Same sandbox as tests/unit/test_install_script.py (its fixtures and helpers): a sandbox root,
stand-ins for the commands that change a machine, dnsmasq on loopback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scriptbox import DF_HEADER, Rule, ScriptBox, output
from tests.unit.test_install_script import (
    DOMAIN,
    EMAIL,
    HEALTHY,
    OURS,
    Resolver,
    clone_script,
    docker_arrives_with_apt,
    env_file,
    install,
    stack_is_running,
)
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)
from tests.unit.test_install_script import resolver as resolver  # noqa: F401  (fixture)

NO_RELEASE = (
    "E: The repository 'https://download.docker.com/linux/debian forky Release' "
    "does not have a Release file.\n"
)


def docker_key_fetched(box: ScriptBox) -> Path:
    """Docker from its own repository: apt installs it, curl fetches its key (the path)."""
    docker_arrives_with_apt(box)
    keyring = box.path("/etc/apt/keyrings/docker.asc")
    box.stand_in(
        "curl",
        Rule(r"download\.docker\.com", effect=f"echo KEY >'{keyring}'"),
        Rule(r"/health", stdout=HEALTHY),
    )
    return keyring


def test_a_docker_repository_apt_cannot_read_is_taken_out_again(
    box: ScriptBox, resolver: Resolver
) -> None:
    """--docker-repo on a release Docker's repository does not carry (Debian testing, a new
    Ubuntu): `apt-get update` fails on the docker.list just written, and the run stopped with
    "what was done before it stays done: run this again". The list stayed, so every later
    `apt-get update` on the host failed too, a rerun without --docker-repo included, and
    nothing said which file to remove."""
    box.path("/etc/os-release").write_text("ID=debian\nVERSION_CODENAME=forky\n")
    keyring = docker_key_fetched(box)
    box.stand_in("apt-get", Rule(r" update$", rc=100, stderr=NO_RELEASE))

    result = install(box, resolver, "--docker-repo")

    assert result.returncode == 100, output(result)  # apt-get's
    assert not box.path("/etc/apt/sources.list.d/docker.list").exists(), output(result)
    assert not keyring.exists()
    assert "without --docker-repo" in result.stderr, output(result)
    assert not box.called(r"^apt-get .* install ")


def test_an_existing_docker_list_is_put_back_when_apt_cannot_read_ours(
    box: ScriptBox, resolver: Resolver
) -> None:
    """The operator's own docker.list (written by hand, Docker not yet installed) is
    overwritten by --docker-repo; when apt cannot read the new one, theirs comes back."""
    docker_arrives_with_apt(box)
    listing = box.path("/etc/apt/sources.list.d/docker.list")
    listing.parent.mkdir(parents=True)
    theirs = "deb [arch=amd64] https://download.docker.com/linux/debian bookworm stable\n"
    listing.write_text(theirs)
    box.stand_in("curl", Rule(r"download\.docker\.com"), Rule(r"/health", stdout=HEALTHY))
    box.stand_in("apt-get", Rule(r" update$", rc=100, stderr=NO_RELEASE))

    result = install(box, resolver, "--docker-repo")

    assert result.returncode == 100, output(result)  # apt-get's
    assert listing.read_text() == theirs


def test_the_disk_check_looks_where_docker_keeps_its_data(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A small VPS with Docker's data-root on an attached volume (daemon.json "data-root"):
    the cache volume goes there, yet the check measured /var/lib/docker's disk (the small
    root disk) and refused to install ("only 5 GiB free"); the reverse let a cache too big for
    the volume through."""
    box.path("/srv/docker").mkdir(parents=True)
    box.stand_in(
        "df",
        Rule(r"/srv/docker", stdout=f"{DF_HEADER}vol 1 1 {300 << 20} 1% /srv\n"),
        Rule(r".", stdout=f"{DF_HEADER}root 1 1 {5 << 20} 1% /\n"),
    )
    box.stand_in(
        "docker",
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r"^info --format \{\{\.DockerRootDir\}\}$", stdout="/srv/docker\n"),
        Rule(r"^(volume|image) inspect", rc=1),
        Rule(r"^info", stdout="[]\n"),
    )

    result = install(box, resolver, "--cache-size", "20G")

    assert result.returncode == 0, output(result)
    assert "300 GiB free at" in result.stdout and "/srv/docker" in result.stdout


DENIED = (
    "permission denied while trying to connect to the Docker daemon socket at "
    'unix:///var/run/docker.sock: Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.45/info": '
    "dial unix /var/run/docker.sock: connect: permission denied\n"
)


def docker_refuses_this_user(box: ScriptBox) -> None:
    """Not root (nor in the docker group): the CLI is there, dockerd runs, and refuses us."""
    box.stand_in("id", Rule(r"-u", stdout="1000\n"))
    box.stand_in(
        "docker",
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r".", rc=1, stderr=DENIED),
    )


def test_a_dry_run_without_root_does_not_take_docxys_ports_for_someone_elses(
    box: ScriptBox, resolver: Resolver
) -> None:
    """Without sudo the script says "run as root ... (or try --dry-run first)". On a host where
    Docxy runs, that dry run stopped with "free ports 80 and 443": `docker ps` refused a user
    outside the docker group, and Docxy's own listeners were taken for someone else's."""
    box.stand_in("ss", Rule(r".", stdout="LISTEN 0 4096 0.0.0.0:443 0.0.0.0:* \n"))
    docker_refuses_this_user(box)

    result = install(box, resolver, "--dry-run")

    assert result.returncode == 0, output(result)
    assert "free ports 80 and 443" not in result.stderr
    assert "0.0.0.0:443" in result.stdout  # what listens is still shown


def test_an_uninstall_dry_run_without_root_does_not_say_dockerd_is_down(
    box: ScriptBox, resolver: Resolver
) -> None:
    """`--uninstall --dry-run` without sudo said "dockerd is not running ... start it
    (systemctl start docker)" of a dockerd that runs and only refused this user."""
    assert install(box, resolver).returncode == 0
    docker_refuses_this_user(box)

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall", "--dry-run")

    assert result.returncode == 1, output(result)
    assert "dockerd is not running" not in result.stderr, output(result)
    assert "sudo" in result.stderr


def test_answers_pasted_with_spaces_around_them_are_taken(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A domain or address copied from a web page or a mail often comes with a space or a tab
    around it: the prompt's answer stopped the run ("'mirror.test ' is not a DNS name")."""
    answers = box.base / "answers"
    answers.write_text(f" {DOMAIN} \n\t{EMAIL} \n")
    args = ["--root", str(box.root), "--public-ip", OURS, "--dns-server", resolver.address]
    args += ["--health-timeout", "0"]

    result = box.run(clone_script(box), *args, env={"DOCXY_PROMPT_INPUT": str(answers)})

    assert result.returncode == 0, output(result)
    lines = env_file(box).read_text().splitlines()
    assert f"DOCXY_DOMAIN={DOMAIN}" in lines and f"DOCXY_EMAIL={EMAIL}" in lines


def test_uninstall_without_the_client_script_says_daemon_json_still_names_the_mirror(
    box: ScriptBox, resolver: Resolver
) -> None:
    """--uninstall takes the mirror out of this host's daemon.json (README) with the project's
    configure-client.sh. Where that script is gone (the project's folders deleted or moved by
    hand), the stack went, daemon.json kept pointing dockerd at a mirror no longer there, and
    the run said nothing of it (exit 0)."""
    assert install(box, resolver, "--configure-local-docker").returncode == 0
    stack_is_running(box)
    (box.base / "clone" / "scripts" / "configure-client.sh").unlink()

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 1, output(result)
    assert "daemon.json" in result.stderr and f"https://{DOMAIN}" in result.stderr
    assert box.called(r"^docker compose .* down --remove-orphans$"), "the rest is removed"


def test_uninstall_takes_the_mirror_out_whatever_the_case_of_domain(
    box: ScriptBox, resolver: Resolver
) -> None:
    """The install writes the domain in lower case (daemon.json's https://mirror.test); an
    --uninstall given it as first typed (MIRROR.test, .env gone) left daemon.json as it was."""
    assert install(box, resolver, "--configure-local-docker").returncode == 0
    stack_is_running(box)
    env_file(box).unlink()

    result = box.run(
        clone_script(box), "--root", str(box.root), "--uninstall", "--domain", "MIRROR.test"
    )

    assert result.returncode == 0, output(result)
    assert DOMAIN not in box.path("/etc/docker/daemon.json").read_text(), output(result)


def test_uninstall_without_env_still_removes_the_stack(box: ScriptBox, resolver: Resolver) -> None:
    """.env gone (a `git clean -xdf` in the clone, deleted by hand): `docker compose
    --env-file .env down` refuses at once ("Couldn't find env file", as compose.yaml's
    `env_file: .env` does), so --uninstall stopped there, every time, the stack left running.
    The containers, the cache volume and the network go by their compose label instead."""
    assert install(box, resolver).returncode == 0
    env = env_file(box)
    refuses = f"test -e '{env}' || {{ echo \"Couldn't find env file: {env}\" >&2; exit 1; }}"
    stack_is_running(
        box, Rule(r"^compose .* down", effect=refuses), Rule(r"^network ls", stdout="9e8d7c\n")
    )
    env.unlink()
    box.forget_calls()

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 0, output(result)
    assert box.called(r"^docker rm -f 3f2a1b$")
    assert box.called(r"^docker volume rm docxy_cache$")
    assert box.called(r"^docker network rm 9e8d7c$")


@pytest.mark.parametrize(
    ("option", "first", "line"),
    [
        ("--email", [], "DOCXY_EMAIL="),
        ("--base-image", ["--base-image", "registry.internal.example/python:3.12-slim"], ""),
    ],
)
def test_an_optional_setting_given_empty_is_taken_out(
    box: ScriptBox, resolver: Resolver, option: str, first: list[str], line: str
) -> None:
    """Settings are kept from .env by later runs; the two optional ones are dropped by giving
    them empty (no ACME contact; the build from Docker Hub's python:3.12-slim again). An
    explicit `--email ""` or `--base-image ""` was read as "not given": .env kept the old value
    and the run said "Nothing to change"."""
    assert install(box, resolver, *first).returncode == 0
    stack_is_running(box)

    result = install(box, resolver, option, "")

    assert result.returncode == 0, output(result)
    lines = env_file(box).read_text().splitlines()
    key = line or "DOCXY_BASE_IMAGE="
    assert [x for x in lines if x.startswith(key)] == ([line] if line else []), output(result)
    assert "Nothing to change" not in result.stdout


def test_a_failed_env_write_leaves_no_copy_of_the_password_beside_it(
    box: ScriptBox, resolver: Resolver
) -> None:
    """.env is staged beside itself (`.env.XXXXXX`) and renamed into place. A failure in between
    (here chmod; a full disk stops the copy the same way) left the staged file in the project,
    the upstream password in it; the next --update carried it into the new project as a file
    of the operator's own."""
    box.without("chmod")
    box.stand_in("chmod", Rule(r"\.env\.", rc=1, stderr="chmod: Read-only file system\n"))
    env = {"DOCXY_UPSTREAM_PASSWORD": "pw-in-the-file"}

    result = install(box, resolver, "--upstream-user", "bob", env=env)

    assert result.returncode != 0, output(result)
    clone = box.base / "clone"
    assert sorted(p.name for p in clone.iterdir() if p.name.startswith(".env")) == []


def test_dockers_key_and_list_are_readable_by_apt_under_a_strict_umask(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A hardened host (root's umask 027 or 077): curl wrote docker.asc 0600 (0640), which apt's
    unprivileged _apt user, who checks the signatures, cannot read: `apt-get update` then fails
    on Docker's repository ("not signed"). Docker's own steps `chmod a+r` the key."""
    keyring = docker_key_fetched(box)
    args = [
        "--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--public-ip", OURS,
        "--dns-server", resolver.address, "--health-timeout", "0", "--yes", "--docker-repo",
    ]  # fmt: skip

    result = box.run("", *args, stdin=f'umask 077; exec bash {clone_script(box)} "$@"\n')

    assert result.returncode == 0, output(result)
    listing = box.path("/etc/apt/sources.list.d/docker.list")
    assert keyring.stat().st_mode & 0o777 == 0o644, oct(keyring.stat().st_mode)
    assert listing.stat().st_mode & 0o777 == 0o644, oct(listing.stat().st_mode)
    assert keyring.parent.stat().st_mode & 0o777 == 0o755  # made here: no keyrings/ yet


def test_an_email_with_an_apostrophe_is_taken_and_kept(box: ScriptBox, resolver: Resolver) -> None:
    """o'brien@example.com is an address (RFC 5322; Let's Encrypt takes it) and what many an
    Irish name gives: it stopped the run with "is not an email address" (exit 2). Written
    unquoted, compose (1.29 and v2) reads it as it is, and so does a rerun."""
    email = "o'brien@example.com"

    result = install(box, resolver, "--email", email)

    assert result.returncode == 0, output(result)
    assert f"DOCXY_EMAIL={email}" in env_file(box).read_text().splitlines()
    stack_is_running(box)
    args = ["--root", str(box.root), "--public-ip", OURS, "--dns-server", resolver.address]
    again = box.run(clone_script(box), *args, "--health-timeout", "0", "--yes")
    assert again.returncode == 0 and "Nothing to change" in again.stdout, output(again)

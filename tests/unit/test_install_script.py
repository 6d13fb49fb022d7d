"""scripts/install.sh against a sandbox root, with stand-ins for the commands that change a
machine (apt-get, systemctl, docker, curl, ss) and a real DNS resolver (dnsmasq) on loopback.

Each test runs a copy of the script inside a fake clone (compose.yaml, Dockerfile, scripts/),
or pipes it to bash with DOCXY_SOURCE_URL pointing at a file:// tarball, as `curl | bash`
would. Public-address discovery goes to stand-in services; nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from docxy.config import parse_size
from lab.ports import free_port
from lab.processes import wait_for
from tests.scriptbox import DF_HEADER, REPO, Rule, ScriptBox, output
from tests.unavailable import need_binary

DOMAIN = "mirror.test"
#: How install.sh runs apt-get (waiting for the package lock), as its stand-in sees it.
CONFFILES = "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
APT = f"apt-get -o DPkg::Lock::Timeout=300 {CONFFILES}"
OURS = "203.0.113.7"
OURS6 = "2001:db8::7"
EMAIL = "ops@example.org"
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n'
HEALTHY = '{"status": "ok", "tls": {"days_left": 89}}'
# Commands that only look: everything else a dry run must not call.
QUERIES = (
    r"^(ss |df |apt-cache |systemctl is-"
    r"|docker (ps|info|volume inspect|image inspect|compose version))"
)
COMPOSE_UP = r"^docker compose --project-name docxy .* up -d --build$"
#: How an uninstall says to take the mirror (every URL of it) out of this host's dockerd.
FINISH_BY_HAND = f"--mirror https://{DOMAIN} --docker --remove --replace-host {DOMAIN}"


@dataclass(frozen=True)
class Resolver:
    address: str  # for --dns-server: 127.0.0.1#PORT


@contextlib.contextmanager
def dnsmasq(host: str, port: int, log: Path) -> Iterator[Resolver]:
    """dnsmasq on ``host``:``port`` (a loopback address): mirror.test -> 203.0.113.7, dual.test
    -> v4 and v6, elsewhere.test -> someone else's address, v6only.test -> only 2001:db8::7."""
    need_binary("dnsmasq")
    need_binary("dig")
    argv = [
        "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        f"--port={port}", f"--listen-address={host}", "--bind-interfaces",
        f"--address=/{DOMAIN}/{OURS}",
        f"--address=/dual.test/{OURS}", f"--address=/dual.test/{OURS6}",
        "--address=/elsewhere.test/198.51.100.9",
        "--address=/v6wrong.test/203.0.113.7", "--address=/v6wrong.test/2001:db8::bad",
        f"--address=/v6only.test/{OURS6}",
    ]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    try:

        def answers() -> bool:
            dig = ["dig", "+short", "+time=1", "+tries=1", f"@{host}", "-p", str(port)]
            found = subprocess.run([*dig, "A", DOMAIN], capture_output=True, text=True)
            return found.stdout.strip() == OURS

        wait_for(answers, timeout=20, what=f"dnsmasq on port {port}: {log.read_text()}")
        yield Resolver(f"{host}#{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def resolver_on(address: str, port: int | None = None) -> Any:
    """A test module's ``resolver`` fixture (module-scoped): dnsmasq on ``address`` and
    ``port`` (None: a free one), so that modules run at once do not share one."""

    @pytest.fixture(scope="module")
    def resolver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resolver]:
        log = tmp_path_factory.mktemp("dnsmasq") / "dnsmasq.log"
        with dnsmasq(address, free_port() if port is None else port, log) as found:
            yield found

    return resolver


resolver = resolver_on("127.0.0.1")


@pytest.fixture
def box(tmp_path: Path, resolver: Resolver) -> ScriptBox:
    """A Debian 12 host with Docker, Compose and systemd, no Docxy yet, ports free."""
    box = ScriptBox(tmp_path)
    box.path("/etc/os-release").parent.mkdir(parents=True)
    box.path("/etc/os-release").write_text(DEBIAN)
    box.stand_in("ss")
    box.stand_in(
        "docker",
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r"^(volume|image) inspect", rc=1),
        Rule(r"^info", stdout=f'["https://{DOMAIN}/"]\n'),
    )
    box.stand_in("systemctl")
    box.stand_in("apt-get")
    box.stand_in("apt-cache", Rule(r"policy", stdout="  Candidate: (none)\n"))
    box.stand_in(
        "curl",
        Rule(r"file://", passthrough=need_binary("curl")),
        Rule(rf"https://{DOMAIN}/health", stdout=HEALTHY),
        Rule(r".", rc=7, stderr="curl: (7) the stand-in reaches nothing\n"),
    )
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    for name in ("compose.yaml", "Dockerfile", "scripts/install.sh", "scripts/configure-client.sh"):
        shutil.copy(REPO / name, clone / name)
    return box


def clone_script(box: ScriptBox) -> Path:
    return box.base / "clone" / "scripts" / "install.sh"


def env_file(box: ScriptBox) -> Path:
    return box.base / "clone" / ".env"


def install(
    box: ScriptBox, resolver: Resolver, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = [
        "--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL,
        "--public-ip", OURS, "--dns-server", resolver.address, "--health-timeout", "0", "--yes",
    ]  # fmt: skip
    return box.run(clone_script(box), *base, *args, env=env)


#: The label Compose puts on each container: the files it was made from, joined by commas.
CONFIG_FILES_LABEL = "com.docker.compose.project.config_files"


def files_brought_up(box: ScriptBox) -> list[str]:
    """The -f files of the last `compose ... up` the stand-ins saw (none: no up)."""
    ups = [c for c in box.calls() if "compose" in c.line and "up" in c.argv and "-f" in c.argv]
    argv = ups[-1].argv if ups else []
    return [argv[i + 1] for i, word in enumerate(argv) if word == "-f"]


def stack_is_running(box: ScriptBox, *more: Rule) -> None:
    """From now on the docker stand-in shows Docxy's container running (and obeys ``more``).

    Asked for the container's config_files label, it answers as dockerd would for a container
    made by the last `compose up` seen (the files it was given), empty where there was none."""
    made_from = ",".join(files_brought_up(box))
    box.stand_in(
        "docker",
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r"^info", stdout="[]\n"),
        Rule(rf"^ps .*{re.escape(CONFIG_FILES_LABEL)}", stdout=f"{made_from}\n"),
        Rule(r"^ps ", stdout="3f2a1b\n"),
        Rule(r"^(volume|image) inspect"),
        *more,
    )


# --- the whole run ------------------------------------------------------------------------------


def test_install_from_a_clone_writes_env_brings_the_stack_up_and_prints_client_commands(
    box: ScriptBox, resolver: Resolver
) -> None:
    result = install(box, resolver, "--cache-size", "1G")

    assert result.returncode == 0, output(result)
    env = env_file(box)
    assert env.stat().st_mode & 0o777 == 0o600
    assert env.read_text().splitlines()[1:] == [
        f"DOCXY_DOMAIN={DOMAIN}",
        f"DOCXY_EMAIL={EMAIL}",
        "DOCXY_CACHE_MAX_SIZE=1G",
        "COMPOSE_PROJECT_NAME=docxy",
    ]
    assert box.called(COMPOSE_UP)
    up = next(c for c in box.calls("docker") if c.argv[-1] == "--build")
    assert up.argv[up.argv.index("-f") + 1] == str(box.base / "clone" / "compose.yaml")
    assert up.argv[up.argv.index("--env-file") + 1] == str(env)
    health = [c for c in box.calls("curl") if "/health" in c.line]
    assert health and f"{DOMAIN}:443:127.0.0.1" in health[0].argv, "checked on this host"
    assert "--insecure" not in health[0].argv and "-k" not in health[0].argv
    assert f"curl -fsSL https://{DOMAIN}/setup.sh | sudo bash" in result.stdout
    assert f'"registry-mirrors": ["https://{DOMAIN}"]' in result.stdout
    assert not box.called(r"^apt-get"), "Docker was already installed"


def test_the_client_commands_say_what_the_served_script_configures(
    box: ScriptBox, resolver: Resolver
) -> None:
    """The served script configures every runtime installed on the host (README, Client
    set-up); `--containerd` or `--podman` restricts it to those. The closing words told users
    to "add '-s -- --containerd' or '-s -- --podman'" for them, which on a Docker host that
    also runs containerd leaves Docker out."""
    result = install(box, resolver, "--dry-run")

    assert result.returncode == 0, output(result)
    said = " ".join(result.stdout.split())
    assert "Docker, containerd and podman, whichever are installed" in said
    assert "'-s -- --dry-run' shows the changes first, '-s -- --remove' undoes them" in said
    assert "-s -- --containerd" not in said


def test_a_base_image_off_docker_hub_is_written_for_the_build(
    box: ScriptBox, resolver: Resolver
) -> None:
    """The build starts from Docker Hub's python:3.12-slim unless .env names DOCXY_BASE_IMAGE.
    A piped install cannot be given a .env beforehand (--dir must not exist yet, or hold
    Docxy), so on a host that cannot reach Docker Hub it had no way to build at all."""
    base = "registry.internal.example/library/python:3.12-slim"

    result = install(box, resolver, "--base-image", base)

    assert result.returncode == 0, output(result)
    assert f"DOCXY_BASE_IMAGE={base}" in env_file(box).read_text().splitlines()
    assert box.called(COMPOSE_UP)
    before = env_file(box).read_bytes()
    stack_is_running(box)
    again = install(box, resolver)  # kept, as every setting of a first run
    assert again.returncode == 0 and "Nothing to change" in again.stdout, output(again)
    assert env_file(box).read_bytes() == before
    assert install(box, resolver, "--base-image", "bad image").returncode == 2


def test_second_run_changes_nothing_and_says_so(box: ScriptBox, resolver: Resolver) -> None:
    assert install(box, resolver).returncode == 0
    before = env_file(box).read_bytes()
    stack_is_running(box)
    box.forget_calls()

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert env_file(box).read_bytes() == before
    assert "unchanged" in result.stdout
    assert "already running with these settings" in result.stdout
    assert "Nothing to change" in result.stdout
    assert not box.called(COMPOSE_UP)
    assert not box.called(r"^(apt-get|systemctl (enable|start))")


def test_a_changed_setting_rewrites_env_and_restarts_the_stack(
    box: ScriptBox, resolver: Resolver
) -> None:
    (box.base / "clone" / ".env").write_text("DOCXY_DOMAIN=mirror.test\nDOCXY_LOG_LEVEL=DEBUG\n")
    stack_is_running(box)

    result = install(box, resolver, "--cache-size", "2G")

    assert result.returncode == 0, output(result)
    lines = env_file(box).read_text().splitlines()
    assert "DOCXY_CACHE_MAX_SIZE=2G" in lines
    assert "DOCXY_LOG_LEVEL=DEBUG" in lines, "the operator's own lines are kept"
    assert box.called(COMPOSE_UP)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("existing", [True, False], ids=["rewritten", "new"])
def test_env_stays_the_operators_own(box: ScriptBox, resolver: Resolver, existing: bool) -> None:
    """`sudo ./scripts/install.sh` in a user's clone left .env owned by root (mode 600): the user
    could no longer read or edit it, nor run `docker compose` there. A rewritten .env keeps its
    owner; a new one gets the project directory's."""
    clone, env = box.base / "clone", env_file(box)
    os.chown(clone, 1000, 1000)
    if existing:
        env.write_text("DOCXY_CACHE_MAX_SIZE=20G\nMY_OWN=1\n")
        os.chown(env, 1001, 1001)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    owner = (1001, 1001) if existing else (1000, 1000)
    assert (env.stat().st_uid, env.stat().st_gid) == owner, output(result)
    assert env.stat().st_mode & 0o777 == 0o600


def test_dry_run_changes_nothing(box: ScriptBox, resolver: Resolver) -> None:
    box.without("docker")
    box.without("systemctl")
    files = box.files()

    result = install(
        box,
        resolver,
        "--dry-run",
        "--upstream-user",
        "bob",
        env={"DOCXY_UPSTREAM_PASSWORD": "s3cret"},
    )

    assert result.returncode == 0, output(result)
    assert box.files() == files
    assert not env_file(box).exists()
    assert f"would run: env DEBIAN_FRONTEND=noninteractive {APT} install" in result.stdout
    assert f"would write {env_file(box)}" in result.stdout
    assert "s3cret" not in result.stdout + result.stderr
    assert "would run: docker compose --project-name docxy" in result.stdout
    assert [c.line for c in box.calls() if not re.search(QUERIES, c.line)] == []


# --- settings and .env --------------------------------------------------------------------------


def test_upstream_password_from_the_environment_is_written_but_never_shown(
    box: ScriptBox, resolver: Resolver
) -> None:
    result = install(
        box, resolver, "--upstream-user", "bob", env={"DOCXY_UPSTREAM_PASSWORD": "dckr_pat_x-1"}
    )

    assert result.returncode == 0, output(result)
    lines = env_file(box).read_text().splitlines()
    assert "DOCXY_UPSTREAM_USERNAME=bob" in lines
    assert "DOCXY_UPSTREAM_PASSWORD='dckr_pat_x-1'" in lines
    assert "dckr_pat_x-1" not in result.stdout + result.stderr


@pytest.mark.parametrize("password", ["it's", "back\\slash", "two\nlines"])
def test_an_upstream_password_the_env_cannot_hold_as_written_is_refused(
    box: ScriptBox, resolver: Resolver, password: str
) -> None:
    """Compose 1.29 reads a backslash in a single-quoted value as an escape, v2 does not."""
    result = install(
        box, resolver, "--upstream-user", "bob", env={"DOCXY_UPSTREAM_PASSWORD": password}
    )

    assert result.returncode == 2, output(result)
    assert "cannot contain a single quote, a backslash or a newline" in result.stderr
    assert not env_file(box).exists()


def test_a_dry_run_masks_every_secret_the_env_holds(box: ScriptBox, resolver: Resolver) -> None:
    """No secret is shown: not the password, nor any of the operator's own lines (a key that
    names no secret may hold one, and a multi-line value's lines have no key)."""
    box.without("docker")
    box.without("systemctl")
    env_file(box).parent.mkdir(parents=True, exist_ok=True)
    env_file(box).write_text(
        "DOCXY_SHARED_SECRET_KEY=TopSecretS3Key\n"
        "export DOCXY_METRICS_TOKEN = tok-123\n"
        "DOCXY_LOG_LEVEL=DEBUG\n"
    )

    result = install(
        box, resolver, "--dry-run", "--upstream-user", "bob", env={"DOCXY_UPSTREAM_PASSWORD": "pw9"}
    )

    assert result.returncode == 0, output(result)
    shown = result.stdout + result.stderr
    assert f"would write {env_file(box)}" in shown
    for secret in ("TopSecretS3Key", "tok-123", "pw9"):
        assert secret not in shown
    assert "| DOCXY_UPSTREAM_PASSWORD=(not shown)" in shown
    assert "| (and 3 lines of yours, kept as they are" in shown
    assert "DOCXY_SHARED_SECRET_KEY" not in shown and "DEBUG" not in shown


@pytest.mark.parametrize("passed", [True, False])
def test_an_account_that_compose_yaml_does_not_pass_on_is_warned_about(
    box: ScriptBox, resolver: Resolver, passed: bool
) -> None:
    compose = box.base / "clone" / "compose.yaml"
    text = "services:\n  docxy:\n    environment:\n      DOCXY_DOMAIN: ${DOCXY_DOMAIN}\n"
    if passed:
        text += "      DOCXY_UPSTREAM_USERNAME: ${DOCXY_UPSTREAM_USERNAME:-}\n"
    compose.write_text(text)

    result = install(box, resolver, "--upstream-user", "bob", env={"DOCXY_UPSTREAM_PASSWORD": "pw"})

    assert result.returncode == 0, output(result)
    assert ("pulls anonymously" in result.stderr) is not passed


ENV_FILE_FORMS = {
    "key": "services:\n  docxy:\n    env_file: .env\n",
    "list": "services:\n  docxy:\n    env_file:\n      - .env\n",
    "relative": "services:\n  docxy:\n    env_file: './.env'\n",
}


@pytest.mark.parametrize("form", ["key", "list", "relative", "the repository's"])
def test_an_account_passed_on_by_env_file_is_not_warned_about(
    box: ScriptBox, resolver: Resolver, form: str
) -> None:
    """`env_file: .env` hands the container every line of .env, the account included."""
    if form in ENV_FILE_FORMS:
        (box.base / "clone" / "compose.yaml").write_text(ENV_FILE_FORMS[form])

    result = install(box, resolver, "--upstream-user", "bob", env={"DOCXY_UPSTREAM_PASSWORD": "pw"})

    assert result.returncode == 0, output(result)
    assert "pulls anonymously" not in result.stderr, output(result)


# .env lines as docker compose writes and reads them: each gives DOCXY_DOMAIN=mirror.test
# and DOCXY_CACHE_MAX_SIZE=2G (Compose 1.29's python-dotenv and v2's compose-go agree on these).
ENV_SPELLINGS = {
    "double quotes": 'DOCXY_DOMAIN="mirror.test"\nDOCXY_CACHE_MAX_SIZE="2G"\n',
    "single quotes": "DOCXY_DOMAIN='mirror.test'\nDOCXY_CACHE_MAX_SIZE='2G'\n",
    "export": 'export DOCXY_DOMAIN=mirror.test\nexport DOCXY_CACHE_MAX_SIZE="2G"\n',
    "comments": (
        "# the mirror\n\nDOCXY_DOMAIN=mirror.test # ours\nDOCXY_CACHE_MAX_SIZE='2G'  # cap\n"
    ),
    "spaces": "  DOCXY_DOMAIN = mirror.test  \nDOCXY_CACHE_MAX_SIZE= 2G\n",
    "last wins": 'DOCXY_DOMAIN=old.test\nDOCXY_DOMAIN="mirror.test"\nDOCXY_CACHE_MAX_SIZE=2G\r\n',
}


def compose_reads(tmp_path: Path, env_text: str) -> dict[str, str]:
    """What docker-compose (bookworm's 1.29) substitutes from `env_text` as its .env."""
    need_binary("docker-compose")
    project = tmp_path / "compose-oracle"
    project.mkdir()
    (project / ".env").write_text(env_text)
    (project / "compose.yaml").write_text(
        "services:\n  x:\n    image: busybox\n    environment:\n"
        "      DOMAIN: ${DOCXY_DOMAIN}\n      SIZE: ${DOCXY_CACHE_MAX_SIZE}\n"
    )
    shown = subprocess.run(
        ["docker-compose", "--project-directory", str(project), "-f", "compose.yaml", "config"],
        cwd=project, capture_output=True, text=True, timeout=60, check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")},
    ).stdout  # fmt: skip
    found = dict(re.findall(r"^\s+(DOMAIN|SIZE): (.*)$", shown, re.M))
    return {k: v.strip("'\"") for k, v in found.items()}


@pytest.mark.parametrize("spelling", list(ENV_SPELLINGS))
def test_env_is_read_as_docker_compose_reads_it(
    box: ScriptBox, resolver: Resolver, tmp_path: Path, spelling: str
) -> None:
    """A .env in any of these spellings gives install.sh the values compose gives the
    container, and a rerun writes them back in its own plain form, the old lines gone."""
    text = ENV_SPELLINGS[spelling]
    assert compose_reads(tmp_path, text) == {"DOMAIN": DOMAIN, "SIZE": "2G"}
    env_file(box).write_text(text + "DOCXY_LOG_LEVEL=DEBUG\n")
    args = ["--root", str(box.root), "--email", EMAIL, "--public-ip", OURS]
    args += ["--dns-server", resolver.address, "--health-timeout", "0", "--yes"]

    result = box.run(clone_script(box), *args)

    assert result.returncode == 0, output(result)
    lines = env_file(box).read_text().splitlines()
    assert lines[1:4] == [
        f"DOCXY_DOMAIN={DOMAIN}",
        f"DOCXY_EMAIL={EMAIL}",
        "DOCXY_CACHE_MAX_SIZE=2G",
    ]
    assert [line for line in lines if "DOCXY_DOMAIN" in line or "CACHE_MAX" in line] == lines[1:4:2]
    assert "DOCXY_LOG_LEVEL=DEBUG" in lines


def test_missing_settings_are_prompted_for_with_the_password_unechoed(
    box: ScriptBox, resolver: Resolver
) -> None:
    answers = box.base / "answers"
    answers.write_text(f"{DOMAIN}\n{EMAIL}\nhunter2\n")
    args = ["--root", str(box.root), "--public-ip", OURS, "--dns-server", resolver.address]
    args += ["--health-timeout", "0", "--upstream-user", "bob"]

    result = box.run(clone_script(box), *args, env={"DOCXY_PROMPT_INPUT": str(answers)})

    assert result.returncode == 0, output(result)
    assert "The mirror's domain name" in result.stderr
    assert "Password or access token for bob (not shown)" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    lines = env_file(box).read_text().splitlines()
    assert f"DOCXY_DOMAIN={DOMAIN}" in lines and "DOCXY_UPSTREAM_PASSWORD='hunter2'" in lines


def test_another_upstream_user_does_not_get_the_previous_ones_password(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A re-run with another --upstream-user asks for that account's password: it kept the
    .env's, which is the previous account's (the mirror then failed its upstream logins, and
    nothing said why). The same user keeps it, unasked."""
    first = install(
        box, resolver, "--upstream-user", "alice", env={"DOCXY_UPSTREAM_PASSWORD": "a1"}
    )
    assert first.returncode == 0, output(first)
    stack_is_running(box)

    same = install(box, resolver, "--upstream-user", "alice")
    assert same.returncode == 0, output(same)
    assert "DOCXY_UPSTREAM_PASSWORD='a1'" in env_file(box).read_text().splitlines()

    other = install(box, resolver, "--upstream-user", "bob")
    assert other.returncode == 2, output(other)
    assert "set DOCXY_UPSTREAM_PASSWORD" in other.stderr
    assert "DOCXY_UPSTREAM_USERNAME=alice" in env_file(box).read_text().splitlines()

    answers = box.base / "answers"
    answers.write_text("b2\n")
    args = ["--root", str(box.root), "--public-ip", OURS, "--dns-server", resolver.address]
    args += ["--health-timeout", "0", "--upstream-user", "bob"]
    asked = box.run(clone_script(box), *args, env={"DOCXY_PROMPT_INPUT": str(answers)})
    assert asked.returncode == 0, output(asked)
    assert "Password or access token for bob (not shown)" in asked.stderr
    lines = env_file(box).read_text().splitlines()
    assert "DOCXY_UPSTREAM_USERNAME=bob" in lines and "DOCXY_UPSTREAM_PASSWORD='b2'" in lines


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--domain", ""], "--domain is required"),
        (["--domain", "not a name"], "is not a DNS name"),
        (["--email", "nobody"], "is not an email address"),
        # addresses the mirror's certs.email check refuses (every renewal would fail on them)
        (["--email", "first.@example.com"], "is not an email address"),
        (["--email", "a..b@example.com"], "is not an email address"),
        (["--email", ".a@example.com"], "is not an email address"),
        (["--email", "ops@x..com"], "is not an email address"),
        (["--email", "ops@-x.com"], "is not an email address"),
        (["--cache-size", "lots"], "is not a size"),
        (["--upstream-user", "bob"], "set DOCXY_UPSTREAM_PASSWORD"),
    ],
)
def test_bad_settings_stop_before_any_change(
    box: ScriptBox, resolver: Resolver, args: list[str], said: str
) -> None:
    result = install(box, resolver, *args)

    assert result.returncode == 2, output(result)
    assert said in result.stderr
    assert not env_file(box).exists()
    assert not box.called(r"^(apt-get|systemctl|docker compose)")


def test_the_email_is_optional_and_asked_for_once(box: ScriptBox, resolver: Resolver) -> None:
    """No --email: the ACME account goes without a contact (the appliance registers without
    one). Asked on a terminal, an empty answer is kept as DOCXY_EMAIL= and not asked again."""
    args = ["--root", str(box.root), "--domain", DOMAIN, "--public-ip", OURS]
    args += ["--dns-server", resolver.address, "--health-timeout", "0"]
    answers = box.base / "answers"
    answers.write_text("\n")

    first = box.run(clone_script(box), *args, env={"DOCXY_PROMPT_INPUT": str(answers)})

    assert first.returncode == 0, output(first)
    assert "Email for the Let's Encrypt account (optional" in first.stderr
    assert "DOCXY_EMAIL=" in env_file(box).read_text().splitlines()
    answers.write_text("")
    again = box.run(clone_script(box), *args, env={"DOCXY_PROMPT_INPUT": str(answers)})
    assert again.returncode == 0, output(again)
    assert "Email for" not in again.stderr


def test_help_and_the_readme_name_the_same_options(tmp_path: Path) -> None:
    """What --help offers is in README's "Install on a VPS", and the other way round; and
    --purge says it deletes a fetched project directory, as the README does."""
    box = ScriptBox(tmp_path)
    helped = box.run("install.sh", "--help")
    section = (REPO / "README.md").read_text().split("## Install on a VPS")[1].split("\n## ")[0]
    option = r"(?<![\w-])--[a-z][a-z-]*"

    offered = set(re.findall(rf"^\s+({option})", helped.stdout, re.M))
    documented = set(re.findall(option, section)) - {"--build"}  # docker compose up's

    assert helped.returncode == 0, output(helped)
    assert offered == documented
    purge = helped.stdout.split("\n  --purge")[1].split("\n  --")[0]
    assert "fetched" in purge, purge


@pytest.mark.parametrize(
    ("size", "ok"),
    [("5GiB", True), ("512MB", True), ("1g", True), ("0", False),
     # fractions and a bare B, as parse_size reads them: such a size set by hand in .env
     # stopped every later run ("--cache-size '1.5T' is not a size", an option not given)
     ("1.5G", True), ("0.25T", True), ("2048B", True), ("020G", True), ("1.5", True),
     ("0.0001K", False), ("1iB", False), ("1.G", False), ("0.0G", False)],
)  # fmt: skip
def test_cache_sizes_are_those_the_mirror_takes(
    box: ScriptBox, resolver: Resolver, size: str, ok: bool
) -> None:
    """install.sh agrees with the mirror's parse_size: a size kept in .env that the mirror reads
    is not refused on the next run, and one the mirror refuses does not get into .env."""
    env_file(box).write_text(f"DOCXY_CACHE_MAX_SIZE={size}\n")
    try:
        parse_size(size)
    except ValueError:
        assert not ok
    else:
        assert ok

    result = install(box, resolver)

    assert (result.returncode == 0) is ok, output(result)
    if ok:
        assert f"DOCXY_CACHE_MAX_SIZE={size}" in env_file(box).read_text().splitlines()
    else:
        assert result.returncode == 2 and "is not a size" in result.stderr, output(result)
        # named as .env's, with how to give another
        assert "DOCXY_CACHE_MAX_SIZE" in result.stderr and ".env" in result.stderr
        assert "--cache-size" in result.stderr, output(result)


# --- checks -------------------------------------------------------------------------------------


def test_not_root_stops(box: ScriptBox, resolver: Resolver) -> None:
    box.stand_in("id", Rule(r"-u", stdout="1000\n"))

    result = install(box, resolver)

    assert result.returncode == 1 and "run as root" in result.stderr, output(result)
    assert box.calls("docker") == [] and not env_file(box).exists()


@pytest.mark.parametrize(
    ("os_release", "ok"),
    [
        ('ID=ubuntu\nPRETTY_NAME="Ubuntu 24.04 LTS"\nVERSION_CODENAME=noble\n', True),
        ('ID=linuxmint\nID_LIKE="ubuntu debian"\nVERSION_CODENAME=wilma\n', True),
        ('ID=fedora\nPRETTY_NAME="Fedora Linux 40"\n', False),
        ('ID=alpine\n', False),
    ],
)  # fmt: skip
def test_operating_systems(box: ScriptBox, resolver: Resolver, os_release: str, ok: bool) -> None:
    box.path("/etc/os-release").write_text(os_release)

    result = install(box, resolver)

    if ok:
        assert result.returncode == 0, output(result)
    else:
        assert result.returncode == 1, output(result)
        assert "supports Debian and Ubuntu" in result.stderr
        assert "Manual steps" in result.stderr
        assert box.calls("docker") == []


def test_unsupported_architecture_stops(box: ScriptBox, resolver: Resolver) -> None:
    box.stand_in("uname", Rule(r"-m", stdout="riscv64\n"))

    result = install(box, resolver)

    assert result.returncode == 1 and "this machine is riscv64" in result.stderr, output(result)


def test_ports_held_by_something_else_stop(box: ScriptBox, resolver: Resolver) -> None:
    nginx = 'LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:(("nginx",pid=812,fd=6))\n'
    box.stand_in("ss", Rule(r".", stdout=nginx))

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert "nginx" in result.stdout and "free port 80 (" in result.stderr
    assert not box.called(COMPOSE_UP)


def test_a_failing_ss_is_not_taken_for_free_ports(box: ScriptBox, resolver: Resolver) -> None:
    box.stand_in("ss", Rule(r".", rc=1, stderr="Cannot open netlink socket: Permission denied\n"))

    result = install(box, resolver)

    assert "Ports 80, 443 and 127.0.0.1:9180: free" not in result.stdout, output(result)
    assert "Ports 80, 443 and 127.0.0.1:9180: not checked (ss failed" in result.stdout, output(
        result
    )
    assert "-sTCP:LISTEN" in result.stdout  # how to look by hand


def test_without_ss_the_ports_are_not_checked_and_it_says_how(
    box: ScriptBox, resolver: Resolver
) -> None:
    box.without("ss")

    result = install(box, resolver)

    assert "Ports 80, 443 and 127.0.0.1:9180: not checked (no ss here" in result.stdout, output(
        result
    )
    assert "-sTCP:LISTEN" in result.stdout


def test_ports_held_by_docxy_itself_are_fine(box: ScriptBox, resolver: Resolver) -> None:
    box.stand_in("ss", Rule(r".", stdout="LISTEN 0 4096 0.0.0.0:443 0.0.0.0:* docker-proxy\n"))
    stack_is_running(box)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert "already Docxy's" in result.stdout


def test_not_enough_disk_for_the_cache_stops(box: ScriptBox, resolver: Resolver) -> None:
    result = install(box, resolver, "--cache-size", "900000T")

    assert result.returncode == 1, output(result)
    assert "smaller --cache-size" in result.stderr


def test_a_rerun_counts_what_the_cache_volume_holds_already(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A rerun or an --update on a host whose cache has filled: that room is the cache's
    own, and must not be found missing (a full 20G cache left 20G less "free")."""
    volume = "/var/lib/docker/volumes/docxy_cache/_data"
    box.path(volume).mkdir(parents=True)
    box.path(volume + "/blob").write_bytes(os.urandom(8 << 20))  # 8 MiB, on disk
    need = (1 << 20) + (2 << 20)  # KiB: the 1G cache and the image's headroom
    free = need - (4 << 10)  # 4 MiB short, of the 8 MiB the cache holds
    box.stand_in("df", Rule(r".", stdout=f"{DF_HEADER}x 1 1 {free} 1% /\n"))
    docker = [
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r"^(volume|image) inspect", rc=1),
    ]
    short = install(box, resolver, "--cache-size", "1G")
    assert short.returncode == 1 and "smaller --cache-size" in short.stderr, output(short)
    mountpoint = Rule(r"^volume inspect --format \{\{\.Mountpoint\}\} docxy_cache$", volume + "\n")
    box.stand_in("docker", mountpoint, *docker)

    rerun = install(box, resolver, "--cache-size", "1G")

    assert rerun.returncode == 0, output(rerun)
    assert "in the cache already" in rerun.stdout


# --- DNS ----------------------------------------------------------------------------------------


def test_dns_pointing_elsewhere_shows_both_and_stops(box: ScriptBox, resolver: Resolver) -> None:
    result = install(box, resolver, "--domain", "elsewhere.test")

    assert result.returncode == 1, output(result)
    assert "elsewhere.test resolves to:       198.51.100.9" in result.stdout
    assert f"this host's public address: {OURS}" in result.stdout
    assert "not this host" in result.stderr and "--skip-dns-check" in result.stderr
    assert not env_file(box).exists()


def test_skip_dns_check_goes_on_with_a_warning(box: ScriptBox, resolver: Resolver) -> None:
    box.stand_in("curl", Rule(r"https://elsewhere.test/health", stdout=HEALTHY))

    result = install(box, resolver, "--domain", "elsewhere.test", "--skip-dns-check")

    assert result.returncode == 0, output(result)
    assert "going on (--skip-dns-check)" in result.stderr
    assert box.called(COMPOSE_UP)


def test_dns_with_matching_a_and_aaaa(box: ScriptBox, resolver: Resolver) -> None:
    box.stand_in("curl", Rule(r"/health", stdout=HEALTHY))

    result = install(box, resolver, "--domain", "dual.test", "--public-ip", OURS6.upper())

    assert result.returncode == 0, output(result)
    assert f"DNS: dual.test -> {OURS} {OURS6}, this host" in result.stdout


@pytest.mark.parametrize("spelled", ["2001:0db8:0:0::7", "2001:db8:0:0:0:0:0:7", "2001:DB8::0:7"])
def test_an_ipv6_public_ip_spelled_another_way_is_still_this_host(
    box: ScriptBox, resolver: Resolver, spelled: str
) -> None:
    """dig prints 2001:db8::7; the same address written out (a provider's panel) matches it."""
    box.stand_in("curl", Rule(r"/health", stdout=HEALTHY))

    result = install(box, resolver, "--domain", "dual.test", "--public-ip", spelled)

    assert result.returncode == 0, output(result)
    assert "not this host" not in result.stderr


def test_an_aaaa_record_for_another_host_stops(box: ScriptBox, resolver: Resolver) -> None:
    result = install(box, resolver, "--domain", "v6wrong.test")

    assert result.returncode == 1, output(result)
    assert "AAAA record (2001:db8::bad)" in result.stderr


def test_a_name_without_records_stops(box: ScriptBox, resolver: Resolver) -> None:
    result = install(box, resolver, "--domain", "nothing.test")

    assert result.returncode == 1 and "has no A or AAAA record" in result.stderr, output(result)


def test_a_resolver_that_does_not_answer_stops(box: ScriptBox, resolver: Resolver) -> None:
    silent = f"127.0.0.1#{free_port()}"

    result = install(box, resolver, "--dns-server", silent)

    assert result.returncode == 1, output(result)
    assert f"did not answer for {DOMAIN}" in result.stderr
    assert not box.called(COMPOSE_UP)


def test_without_dig_dnsutils_is_installed_first(box: ScriptBox, resolver: Resolver) -> None:
    box.without("dig")
    box.stand_in("apt-get", Rule(r"install", effect=f'ln -s {shutil.which("dig")} "$STANDINS/dig"'))

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    lines = [c.line for c in box.calls("apt-get")]
    assert lines[:2] == [
        APT + " update",
        APT + " install -y --no-install-recommends dnsutils",
    ]


def test_without_curl_curl_is_installed_first(box: ScriptBox, resolver: Resolver) -> None:
    """A minimal image without curl: the health check (and discovery, the piped fetch, Docker's
    key) needs it, so it is installed with the CA bundle, not reported as a certificate failure."""
    box.stand_in(
        "curl", Rule(rf"https://{DOMAIN}/health", stdout=HEALTHY), Rule(r".", rc=7), present=False
    )
    box.without("curl")
    box.stand_in(
        "apt-get", Rule(r"install .*curl", effect='cp "$STANDINS/.later/curl" "$STANDINS/"')
    )

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert box.called(rf"^{APT} install -y --no-install-recommends curl ca-certificates$")
    assert box.called(rf"^curl .*https://{DOMAIN}/health$")


def test_dns_port_option(box: ScriptBox, resolver: Resolver) -> None:
    host, port = resolver.address.split("#")

    result = install(box, resolver, "--dns-server", host, "--dns-port", port)

    assert result.returncode == 0, output(result)


def discovery_box(box: ScriptBox, answers: dict[str, str]) -> dict[str, str]:
    """curl answers for the address services; returns the env naming them."""
    rules = [Rule(rf"https://{DOMAIN}/health", stdout=HEALTHY)]
    rules += [Rule(rf"-4 .*{url}$", stdout=ip + "\n") for url, ip in answers.items()]
    rules.append(Rule(r".", rc=7))
    box.stand_in("curl", *rules)
    return {
        "DOCXY_IPV4_SERVICES": " ".join(answers) + " http://127.0.0.1:9/down",
        "DOCXY_IPV6_SERVICES": "http://127.0.0.1:9/v6",
    }


def discover(
    box: ScriptBox, resolver: Resolver, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    args = ["--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--yes"]
    args += ["--dns-server", resolver.address, "--health-timeout", "0"]
    return box.run(clone_script(box), *args, env=env)


def test_public_address_found_when_two_services_agree(box: ScriptBox, resolver: Resolver) -> None:
    env = discovery_box(box, {"http://ip-a.test/": OURS, "http://ip-b.test/": OURS})

    result = discover(box, resolver, env)

    assert result.returncode == 0, output(result)
    asked = [c.argv[-1] for c in box.calls("curl") if c.argv[0] in ("-4", "-6")]
    assert asked == ["http://ip-a.test/", "http://ip-b.test/", "http://127.0.0.1:9/down"], (
        "IPv6 is not asked about: mirror.test has no AAAA record"
    )


def test_services_that_disagree_stop(box: ScriptBox, resolver: Resolver) -> None:
    env = discovery_box(box, {"http://ip-a.test/": OURS, "http://ip-b.test/": "192.0.2.1"})

    result = discover(box, resolver, env)

    assert result.returncode == 1, output(result)
    assert "disagree" in result.stderr and "192.0.2.1" in result.stderr
    assert "--public-ip" in result.stderr


def test_no_service_answering_asks_for_public_ip(box: ScriptBox, resolver: Resolver) -> None:
    env = discovery_box(box, {})

    result = discover(box, resolver, env)

    assert result.returncode == 1, output(result)
    assert "could not find this host's public address: pass --public-ip" in result.stderr


def test_one_service_alone_is_not_trusted(box: ScriptBox, resolver: Resolver) -> None:
    env = discovery_box(box, {"http://ip-a.test/": OURS})

    result = discover(box, resolver, env)

    assert result.returncode == 1 and "not trusted alone" in result.stderr, output(result)


@pytest.mark.parametrize(
    "answers",
    [
        {},
        {"http://ip-a.test/": OURS},
        {"http://ip-a.test/": OURS, "http://ip-b.test/": "192.0.2.1"},
    ],
    ids=["none", "one", "disagree"],
)
def test_skip_dns_check_goes_on_when_the_address_cannot_be_told(
    box: ScriptBox, resolver: Resolver, answers: dict[str, str]
) -> None:
    """Egress filtered, or behind NAT: the address services do not answer, or disagree. The
    README's --skip-dns-check "goes on anyway": it stopped all the same."""
    env = discovery_box(box, answers)

    result = box.run(
        clone_script(box),
        *["--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--yes"],
        *["--dns-server", resolver.address, "--health-timeout", "0", "--skip-dns-check"],
        env=env,
    )

    assert result.returncode == 0, output(result)
    assert "were not checked; going on (--skip-dns-check)" in result.stderr, output(result)
    assert box.called(COMPOSE_UP)


# --- Docker set-up ------------------------------------------------------------------------------


def docker_arrives_with_apt(box: ScriptBox) -> None:
    """No docker yet; `apt-get install` puts the docker stand-in on PATH."""
    box.without("docker")
    box.stand_in(
        "docker",
        Rule(r"^compose version", stdout="Docker Compose version 2.26.1\n"),
        Rule(r"^(volume|image) inspect", rc=1),
        present=False,
    )
    box.stand_in("apt-get", Rule(r"install", effect='cp "$STANDINS/.later/docker" "$STANDINS/"'))


def test_apt_get_update_waits_for_the_lists_lock(box: ScriptBox, resolver: Resolver) -> None:
    """apt-daily updating the lists on a VPS just booted: `apt-get update` does not wait for
    that lock (DPkg::Lock::Timeout is dpkg's), and the first install stopped there. It is tried
    again until the lock is free (here on its third try; `sleep` is a stand-in)."""
    docker_arrives_with_apt(box)
    box.stand_in("sleep")
    installs = Rule(r"install", effect='cp "$STANDINS/.later/docker" "$STANDINS/"')
    free = json.dumps([asdict(installs)])  # the rules once the lock is free
    count = (
        'n=$(cat "$STANDINS/.updates" 2>/dev/null || echo 0); echo $((n + 1)) >"$STANDINS/.updates"'
    )
    freed = f'{count}; if [ "$n" -ge 1 ]; then echo \'{free}\' >"$STANDINS/.rules/apt-get.json"; fi'
    locked = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 812 (apt-get)\n"
    box.stand_in("apt-get", Rule(r" update$", rc=100, stderr=locked, effect=freed), installs)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    updates = [c for c in box.calls("apt-get") if c.argv[-1] == "update"]
    assert len(updates) == 3
    assert len(box.calls("sleep")) == 2


def test_apt_get_update_locked_for_good_says_why_once(box: ScriptBox, resolver: Resolver) -> None:
    """The lock complaints of the tries are not shown while the script waits; once it gives
    up, apt's own words say why it failed, once."""
    docker_arrives_with_apt(box)
    box.stand_in("sleep")
    locked = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 812 (apt-get)\n"
    box.stand_in("apt-get", Rule(r" update$", rc=100, stderr=locked))

    result = install(box, resolver)

    assert result.returncode != 0
    assert output(result).count("Could not get lock") == 1, output(result)
    assert len(box.calls("sleep")) == 59


def test_ctrl_c_during_apt_get_update_leaves_no_temp_files(
    box: ScriptBox, resolver: Resolver
) -> None:
    """The update's output and status go through two temp files, removed when it ends: a
    Ctrl-C meanwhile (a slow mirror, the case the streaming is for) left them in /tmp."""
    docker_arrives_with_apt(box)
    update = box.base / "apt-update"
    update.write_text(  # SIGINT to the script: the update's subshell's parent
        "#!/bin/bash\n"
        "echo 'Hit:1 http://deb.debian.org/debian bookworm InRelease'\n"
        'read -r _ _ _ script _ </proc/"$PPID"/stat\n'
        'kill -INT "$script"\n'
    )
    update.chmod(0o755)
    box.stand_in("apt-get", Rule(r" update$", passthrough=str(update)))
    scratch = box.base / "scratch"
    scratch.mkdir()

    result = install(box, resolver, env={"TMPDIR": str(scratch)})

    assert result.returncode == 130, output(result)
    assert list(scratch.iterdir()) == []


def test_apt_get_update_is_shown_as_it_runs(box: ScriptBox, resolver: Resolver) -> None:
    """`apt-get update` against a slow mirror takes minutes: its lines were shown only once it
    ended. Here it prints a line and waits (up to 10 s) to see it in the script's output."""
    docker_arrives_with_apt(box)
    out, seen = box.base / "install.out", box.base / "seen"
    line = "Hit:1 http://deb.debian.org/debian bookworm InRelease"
    update = box.base / "apt-update"
    update.write_text(
        "#!/bin/bash\n"
        f"echo '{line}'\n"
        "for _ in {1..100}; do\n"
        f"  if grep -q -F '{line}' '{out}'; then echo streamed >'{seen}'; exit 0; fi\n"
        "  sleep 0.1\n"
        "done\n"
        f"echo held >'{seen}'\n"
    )
    update.chmod(0o755)
    installs = Rule(r"install", effect='cp "$STANDINS/.later/docker" "$STANDINS/"')
    box.stand_in("apt-get", Rule(r" update$", passthrough=str(update)), installs)
    args = [
        "--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL,
        "--public-ip", OURS, "--dns-server", resolver.address, "--health-timeout", "0", "--yes",
    ]  # fmt: skip
    result = box.run("", *args, stdin=f'exec bash {clone_script(box)} "$@" >{out} 2>&1\n')

    said = out.read_text()
    assert result.returncode == 0, said
    assert seen.read_text() == "streamed\n", said
    assert said.count(line) == 1


def test_docker_from_the_distribution_by_default(box: ScriptBox, resolver: Resolver) -> None:
    docker_arrives_with_apt(box)
    box.stand_in("systemctl", Rule(r"^is-", rc=1))

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    installs = [c.argv for c in box.calls("apt-get") if "install" in c.argv]
    lock = ["-o", "DPkg::Lock::Timeout=300", *CONFFILES.split()]  # and no conffile prompt
    assert installs == [
        [*lock, "install", "-y", "--no-install-recommends", "docker.io", "docker-compose"]
    ]
    assert "debian's own packages (docker.io)" in result.stdout
    assert box.called(r"^systemctl enable docker$") and box.called(r"^systemctl start docker$")
    assert box.called(COMPOSE_UP)


@pytest.mark.parametrize(("enabled", "parser"), [("Y\n", False), ("Y\n", True), ("N\n", False)])
def test_apparmor_comes_along_where_the_kernel_enforces_it_and_nothing_loads_profiles(
    box: ScriptBox, resolver: Resolver, enabled: str, parser: bool
) -> None:
    """dockerd only recommends apparmor; without apparmor_parser on a kernel with AppArmor on
    it cannot load its docker-default profile and starts no container."""
    docker_arrives_with_apt(box)
    box.stand_in("systemctl", Rule(r"^is-", rc=1))
    switch = box.path("/sys/module/apparmor/parameters/enabled")
    switch.parent.mkdir(parents=True)
    switch.write_text(enabled)
    if parser:
        box.stand_in("apparmor_parser")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    [install_call] = [c.argv for c in box.calls("apt-get") if "install" in c.argv]
    wanted = enabled.startswith("Y") and not parser
    assert ("apparmor" in install_call) is wanted, install_call


def test_a_dry_run_does_not_say_a_stopped_dockerd_is_running(
    box: ScriptBox, resolver: Resolver
) -> None:
    """It printed "would run: systemctl start docker", then "dockerd is enabled and running"."""
    box.stand_in("systemctl", Rule(r"^is-(enabled|active)", rc=1))

    result = install(box, resolver, "--dry-run")

    assert result.returncode == 0, output(result)
    assert "would run: systemctl start docker" in result.stdout
    assert "is enabled and running" not in result.stdout, result.stdout
    assert "dockerd would be enabled and started" in result.stdout


def test_systemctl_without_systemd_running_is_not_asked_to_start_docker(
    box: ScriptBox, resolver: Resolver
) -> None:
    """WSL, a container, a host booted with another init: systemctl is there but answers
    "System has not been booted with systemd" to everything, and `systemctl enable docker`
    ended the install with that line alone (set -e)."""
    booted = "System has not been booted with systemd as init system (PID 1). Can't operate.\n"
    box.stand_in(
        "systemctl",
        Rule(r"^is-system-running", stdout="offline\n", rc=1),
        Rule(r".", stderr=booted, rc=1),
    )

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert not box.called(r"^systemctl (enable|start|reload|restart)"), output(result)
    assert "systemd is not running here" in result.stdout
    assert box.called(COMPOSE_UP)


def test_ubuntu_gets_compose_v2_from_the_distribution(box: ScriptBox, resolver: Resolver) -> None:
    box.path("/etc/os-release").write_text("ID=ubuntu\nVERSION_CODENAME=noble\n")
    docker_arrives_with_apt(box)
    box.stand_in("apt-cache", Rule(r"docker-compose-v2", stdout="  Candidate: 2.24.6\n"))

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert box.called(rf"{APT} install -y --no-install-recommends docker.io docker-compose-v2$")


def test_docker_repo_adds_dockers_repository(box: ScriptBox, resolver: Resolver) -> None:
    docker_arrives_with_apt(box)
    box.stand_in("curl", Rule(r"download\.docker\.com"), Rule(r"/health", stdout=HEALTHY))

    result = install(box, resolver, "--docker-repo")

    assert result.returncode == 0, output(result)
    assert "Docker's own apt repository" in result.stdout
    assert box.called(
        r"^curl -fsSL --connect-timeout 30 --speed-limit 1024 --speed-time 60 "
        r"-o \S+/etc/apt/keyrings/docker.asc https://download.docker.com/linux/debian/gpg$"
    )
    listing = box.path("/etc/apt/sources.list.d/docker.list").read_text()
    assert "signed-by=/etc/apt/keyrings/docker.asc" in listing
    assert "https://download.docker.com/linux/debian bookworm stable" in listing
    assert box.called(
        rf"{APT} install .* docker-ce docker-ce-cli containerd.io .*docker-compose-plugin"
    )


def test_docker_repo_on_an_ubuntu_derivative_names_ubuntus_release(
    box: ScriptBox, resolver: Resolver
) -> None:
    """Linux Mint 22's VERSION_CODENAME is its own (wilma): Docker's repository only has
    Ubuntu's (noble), and a wrong one breaks every later apt-get update on the host."""
    box.path("/etc/os-release").write_text(
        'ID=linuxmint\nID_LIKE="ubuntu debian"\nVERSION_CODENAME=wilma\nUBUNTU_CODENAME=noble\n'
    )
    docker_arrives_with_apt(box)
    box.stand_in("curl", Rule(r"download\.docker\.com"), Rule(r"/health", stdout=HEALTHY))

    result = install(box, resolver, "--docker-repo")

    assert result.returncode == 0, output(result)
    listing = box.path("/etc/apt/sources.list.d/docker.list").read_text()
    assert "https://download.docker.com/linux/ubuntu noble stable" in listing


@pytest.mark.parametrize("engine", ["docker-ce", "docker.io"])
def test_compose_alone_missing_comes_from_the_engines_own_source(
    box: ScriptBox, resolver: Resolver, engine: str
) -> None:
    """Docker's own Engine (docker-ce) with no Compose got Debian's docker-compose 1.29, which
    fails against Engine 25 and newer on every recreate: it gets Docker's Compose plugin."""
    box.stand_in("docker", Rule(r"^compose", rc=1), Rule(r"^(volume|image) inspect", rc=1))
    box.stand_in("docker-compose", present=False)
    box.stand_in(
        "apt-get", Rule(r" install ", effect='cp "$STANDINS/.later/docker-compose" "$STANDINS/"')
    )
    box.stand_in("apt-cache", Rule(r"docker-compose-plugin", stdout="  Candidate: 2.29.1-1\n"))
    installed = "install ok installed" if engine == "docker-ce" else ""
    box.stand_in("dpkg-query", Rule(r"docker-ce", stdout=installed))

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    compose = "docker-compose-plugin" if engine == "docker-ce" else "docker-compose"
    assert box.called(rf"{APT} install -y --no-install-recommends {compose}$")


def test_a_dockerd_without_docker_service_is_left_as_it_is(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A running dockerd that another unit starts has no docker.service: `systemctl enable
    docker` failed and stopped every run, re-runs included."""
    box.stand_in(
        "systemctl",
        Rule(r"^is-system-running", stdout="running\n"),
        Rule(r"^cat docker\.service", rc=1),
        Rule(r"^(is-enabled|is-active|enable|start)", rc=1),
    )

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert "not as docker.service" in result.stdout, output(result)
    assert not box.called(r"^systemctl (enable|start)")


def test_the_docker_snap_is_refused_before_any_change(box: ScriptBox, resolver: Resolver) -> None:
    """Ubuntu Server's docker snap reads no file outside the home directories (compose.yaml in
    /opt/docxy) and ignores /etc/docker/daemon.json: the stack cannot run on it. The run says
    so, and how to go on, before it changes anything (no dnsutils installed for the checks)."""
    box.stand_in("snap", Rule(r"^list docker"))
    box.without("dig")

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert "Docker here is the snap" in result.stderr and "snap remove docker" in result.stderr
    assert not box.called(r"^(apt-get|systemctl (enable|start)|docker compose)")
    assert not env_file(box).exists()


def test_standalone_docker_compose_is_used_when_the_plugin_is_missing(
    box: ScriptBox, resolver: Resolver
) -> None:
    box.stand_in("docker", Rule(r"^compose", rc=1), Rule(r"^(volume|image) inspect", rc=1))
    box.stand_in("docker-compose")

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert box.called(r"^docker-compose --project-name docxy .* up -d --build$")


def test_an_unhealthy_mirror_fails_and_shows_its_log(box: ScriptBox, resolver: Resolver) -> None:
    box.stand_in("curl", Rule(r"/health", rc=60, stderr="curl: (60) SSL certificate problem\n"))

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert "SSL certificate problem" in result.stderr
    assert box.called(r"^docker compose .* logs --tail 60$")


def test_a_failed_build_names_base_image_and_a_rerun_goes_on_from_there(
    box: ScriptBox, resolver: Resolver
) -> None:
    """The first build pulls python:3.12-slim from Docker Hub, which a server that needs a
    mirror often cannot reach: the script says what to do, not only compose's error."""
    docker = [
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r"^(volume|image) inspect", rc=1),
    ]
    pull_fails = "failed to solve: python:3.12-slim: failed to resolve source metadata\n"
    box.stand_in("docker", Rule(r"up -d --build$", rc=17, stderr=pull_fails), *docker)

    failed = install(box, resolver)

    assert failed.returncode == 1, output(failed)
    assert "--base-image IMAGE" in failed.stderr, output(failed)
    assert "run this again" in failed.stderr, output(failed)
    box.stand_in("docker", *docker)
    box.forget_calls()
    again = install(box, resolver)
    assert again.returncode == 0, output(again)
    assert box.called(COMPOSE_UP), "the rerun builds again, although .env is unchanged"


def test_a_step_that_fails_says_where_it_stopped_and_what_next(
    box: ScriptBox, resolver: Resolver
) -> None:
    box.without("docker")
    box.stand_in("apt-get", Rule(r" install ", rc=100, stderr="E: Unable to locate package\n"))

    result = install(box, resolver)

    assert result.returncode == 100, output(result)
    assert 'stopped at "Docker": the command above failed (exit 100)' in result.stderr
    assert "run this again" in result.stderr, output(result)


def test_configure_local_docker(box: ScriptBox, resolver: Resolver) -> None:
    result = install(box, resolver, "--configure-local-docker")

    assert result.returncode == 0, output(result)
    assert f'"https://{DOMAIN}"' in box.path("/etc/docker/daemon.json").read_text()


def test_a_dry_run_that_configures_local_docker_says_dry_run_once_at_each_end(
    box: ScriptBox, resolver: Resolver
) -> None:
    """configure-client.sh, run by install.sh, printed its own 'Dry run: nothing is changed.'
    and 'Dry run: the changes above were not made.' in the middle of install.sh's."""
    files = box.files()

    result = install(box, resolver, "--dry-run", "--configure-local-docker")

    assert result.returncode == 0, output(result)
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("Dry run")] == [
        "Dry run: nothing is changed.",
        "Dry run: the changes above were not made.",
    ], result.stdout
    assert lines.index("Dry run: nothing is changed.") < 2
    assert "would write" in result.stdout.split("This host's own dockerd")[1]  # its changes
    assert box.files() == files


def test_symlinked_daemon_json_and_env_are_edited_through_their_links(
    box: ScriptBox, resolver: Resolver
) -> None:
    """daemon.json and .env kept in a config repository and linked into place: the files they
    point at are written, the links stay."""
    repo = box.base / "config-repo"
    repo.mkdir()
    (repo / "daemon.json").write_text('{"debug": true}\n')
    (repo / "docxy.env").write_text("DOCXY_LOG_LEVEL=DEBUG\n")
    box.path("/etc/docker").mkdir(parents=True)
    box.path("/etc/docker/daemon.json").symlink_to(repo / "daemon.json")
    env_file(box).symlink_to(repo / "docxy.env")

    result = install(box, resolver, "--configure-local-docker")

    assert result.returncode == 0, output(result)
    assert box.path("/etc/docker/daemon.json").is_symlink()
    assert f'"https://{DOMAIN}"' in (repo / "daemon.json").read_text()
    assert env_file(box).is_symlink()
    written = (repo / "docxy.env").read_text().splitlines()
    assert f"DOCXY_DOMAIN={DOMAIN}" in written and "DOCXY_LOG_LEVEL=DEBUG" in written
    assert (repo / "docxy.env").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in repo.iterdir()) == ["daemon.json", "docxy.env"]


def test_a_rerun_that_puts_the_mirror_back_in_daemon_json_does_not_say_nothing_changed(
    box: ScriptBox, resolver: Resolver
) -> None:
    assert install(box, resolver, "--configure-local-docker").returncode == 0
    box.stand_in(  # Docxy running, and a dockerd that takes the mirror when reloaded
        "docker",
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r"^info", stdout=f'["https://{DOMAIN}/"]\n'),
        Rule(r"^ps ", stdout="3f2a1b\n"),
    )
    box.path("/etc/docker/daemon.json").write_text('{"debug": true}\n')

    result = install(box, resolver, "--configure-local-docker")

    assert result.returncode == 0, output(result)
    assert f'"https://{DOMAIN}"' in box.path("/etc/docker/daemon.json").read_text()
    assert "Nothing to change" not in result.stdout


# --- piped from a URL ---------------------------------------------------------------------------


def source_tarball(box: ScriptBox) -> str:
    tarball = box.base / "docxy-main.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(box.base / "clone", arcname="docxy-main")
    return f"file://{tarball}"


def test_piped_install_fetches_the_project_into_opt(box: ScriptBox, resolver: Resolver) -> None:
    env = {"DOCXY_SOURCE_URL": source_tarball(box)}
    args = ["--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--yes"]
    args += ["--public-ip", OURS, "--dns-server", resolver.address, "--health-timeout", "0"]
    script = clone_script(box).read_text()

    first = box.run("", *args, env=env, stdin=script)

    assert first.returncode == 0, output(first)
    project = box.path("/opt/docxy")
    assert (project / "compose.yaml").read_text() == (REPO / "compose.yaml").read_text()
    assert (project / ".env").stat().st_mode & 0o777 == 0o600
    assert box.called(rf"-f {project}/compose.yaml .* up -d --build$")

    box.forget_calls()
    stack_is_running(box)
    again = box.run("", *args, env=env, stdin=script)
    assert again.returncode == 0, output(again)
    assert "using the project at" in again.stdout and "Nothing to change" in again.stdout
    assert not box.called("file://")


def test_ctrl_c_during_the_fetch_leaves_no_temp_files(box: ScriptBox, resolver: Resolver) -> None:
    """The download's temp dir and the new tree's staging dir beside /opt/docxy were left
    behind by a Ctrl-C during the fetch (a slow download), one pair a run."""
    fetch = box.base / "slow-fetch"
    fetch.write_text('#!/bin/bash\nkill -INT "$PPID"\nsleep 5\n')  # SIGINT to the script
    fetch.chmod(0o755)
    box.stand_in("curl", Rule(r"file://", passthrough=str(fetch)), Rule(r".", rc=7))
    scratch = box.base / "scratch"
    scratch.mkdir()
    args = ["--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--yes"]
    args += ["--public-ip", OURS, "--dns-server", resolver.address, "--health-timeout", "0"]
    env = {"DOCXY_SOURCE_URL": source_tarball(box), "TMPDIR": str(scratch)}

    result = box.run("", *args, env=env, stdin=script(box))

    assert result.returncode == 130, output(result)
    assert "fetching" in result.stdout, output(result)
    assert list(scratch.iterdir()) == []
    assert [p.name for p in box.path("/opt").iterdir()] == []


def test_piped_dry_run_with_configure_local_docker_changes_nothing_and_succeeds(
    box: ScriptBox, resolver: Resolver
) -> None:
    """The project is not fetched in a dry run: its configure-client.sh is not there yet."""
    args = ["--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--yes"]
    args += ["--public-ip", OURS, "--dns-server", resolver.address, "--dry-run"]
    args += ["--configure-local-docker", "--source-url", source_tarball(box)]
    files = box.files()

    result = box.run("", *args, stdin=clone_script(box).read_text())

    assert result.returncode == 0, output(result)
    assert f"https://{DOMAIN}" in result.stdout.split("This host's own dockerd")[1]
    assert "Dry run: the changes above were not made." in result.stdout
    assert box.files() == files


def test_piped_install_never_replaces_a_directory_that_is_not_docxy(
    box: ScriptBox, resolver: Resolver
) -> None:
    precious = box.path("/srv/data")
    precious.mkdir(parents=True)
    (precious / "keep.txt").write_text("mine")
    args = ["--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--yes"]
    args += ["--public-ip", OURS, "--dns-server", resolver.address, "--dir", str(precious)]
    args += ["--source-url", source_tarball(box)]

    result = box.run("", *args, stdin=clone_script(box).read_text())

    assert result.returncode == 1, output(result)
    assert "is not a Docxy project" in result.stderr
    assert (precious / "keep.txt").read_text() == "mine"


def piped_update_setup(box: ScriptBox, resolver: Resolver) -> tuple[list[str], Path, str]:
    """A piped install of version 1 into /opt/docxy, running; returns the arguments of an
    update to version 2, the project directory and version 1's compose.yaml."""
    args = ["--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--yes"]
    args += ["--public-ip", OURS, "--dns-server", resolver.address, "--health-timeout", "0"]
    clone = box.base / "clone"
    first = box.run("", *args, env={"DOCXY_SOURCE_URL": source_tarball(box)}, stdin=script(box))
    assert first.returncode == 0, output(first)
    project = box.path("/opt/docxy")
    old = (project / "compose.yaml").read_text()
    with (clone / "compose.yaml").open("a") as compose:
        compose.write("# version 2\n")
    stack_is_running(box)
    box.forget_calls()
    return [*args, "--update", "--source-url", source_tarball(box)], project, old


def script(box: ScriptBox) -> str:
    return clone_script(box).read_text()


def sibling_leftovers(project: Path) -> list[str]:
    return sorted(p.name for p in project.parent.iterdir() if p != project)


def test_an_update_keeps_the_operators_own_files_and_compose_reads_the_override(
    box: ScriptBox, resolver: Resolver
) -> None:
    """Only .env came along into the new project: a compose.override.yaml or a config file
    of the operator's was deleted with the previous project, without a word; and with -f,
    Compose read no override file anyway. A file the project dropped is not carried over."""
    args, project, _ = piped_update_setup(box, resolver)
    override = "services:\n  docxy:\n    environment:\n      DOCXY_LOG_LEVEL: debug\n"
    (project / "compose.override.yaml").write_text(override)
    (project / "docxy.toml").write_text("[cache]\nmax_size = '50G'\n")
    with (project / ".docxy-fetched").open("a") as fetched:  # version 1 had it, 2 has not
        fetched.write("obsolete.txt\n")
    (project / "obsolete.txt").write_text("the project's")

    result = box.run("", *args, stdin=script(box))

    assert result.returncode == 0, output(result)
    assert (project / "compose.yaml").read_text().endswith("# version 2\n")
    assert (project / "compose.override.yaml").read_text() == override
    assert (project / "docxy.toml").exists() and not (project / "obsolete.txt").exists()
    assert "kept docxy.toml (yours" in result.stdout, output(result)
    assert box.called(rf"-f {re.escape(str(project))}/compose.override.yaml .* up -d")


def test_an_update_that_cannot_put_the_new_project_in_place_keeps_the_old_one(
    box: ScriptBox, resolver: Resolver
) -> None:
    """The new tree's move into /opt/docxy fails (a full disk while copying it across file
    systems): the working install must still be there."""
    args, project, old = piped_update_setup(box, resolver)
    mv = shutil.which("mv") or "/usr/bin/mv"
    box.without("mv")
    box.stand_in(
        "mv",
        Rule(rf"^(-f )?-- (?!\S*previous)\S+ {re.escape(str(project))}$", rc=1,
             stderr="mv: write error: No space left on device\n"),
        Rule(r".", passthrough=mv),
    )  # fmt: skip

    result = box.run("", *args, stdin=script(box))

    assert result.returncode == 1, output(result)
    assert (project / "compose.yaml").read_text() == old, output(result)
    assert (project / ".env").read_text().startswith("# Written by Docxy"), output(result)
    assert "putting the previous project back" in result.stderr, output(result)
    assert "the running mirror was not touched" in result.stderr
    assert sibling_leftovers(project) == []
    assert not box.called(r"compose .* up ")


@pytest.mark.parametrize("failure", ["build", "health"])
def test_an_update_that_fails_puts_the_previous_project_back_and_up(
    box: ScriptBox, resolver: Resolver, failure: str
) -> None:
    args, project, old = piped_update_setup(box, resolver)
    docker = [
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r"^ps ", stdout="3f2a1b\n"),
        Rule(r"^(volume|image) inspect"),
    ]
    if failure == "build":  # only the first build fails: bringing version 1 back up works
        rules = box.bin / ".rules"
        (rules / "docker-after.json").write_text(json.dumps([asdict(r) for r in docker]))
        swap = 'cp "$STANDINS/.rules/docker-after.json" "$STANDINS/.rules/docker.json"'
        docker.insert(0, Rule(r"up -d --build$", rc=17, stderr="no space left\n", effect=swap))
    box.stand_in("docker", *docker)
    if failure == "health":
        box.stand_in(
            "curl",
            Rule(r"file://", passthrough=need_binary("curl")),
            Rule(r"/health", rc=22, stderr="curl: (22) The requested URL returned error: 502\n"),
        )

    result = box.run("", *args, stdin=script(box))

    assert result.returncode != 0, output(result)
    assert (project / "compose.yaml").read_text() == old, output(result)
    assert (project / ".env").read_text().startswith("# Written by Docxy")
    assert "putting the previous project back" in result.stderr, output(result)
    ups = [c for c in box.calls("docker") if c.argv[-2:] == ["-d", "--build"]]
    assert len(ups) == 2, "the new version tried, then the previous one brought up again"
    assert sibling_leftovers(project) == []


@pytest.mark.parametrize("terminal", ["kept", "gone"])
def test_a_hangup_during_an_update_puts_the_previous_project_back(
    box: ScriptBox, resolver: Resolver, terminal: str
) -> None:
    """An SSH session dropped during the health wait of `curl ... | sudo bash -s -- --update`:
    SIGHUP was not trapped, so the EXIT trap saw status 0 and rolled nothing back; the new,
    never healthy project stayed in /opt/docxy and the old one in /opt/.docxy.previous. With
    the session, its terminal is gone ("gone": the script's output goes through a reader that
    is killed first): the rollback's first message failed and, under `set -e`, ended it."""
    args, project, old = piped_update_setup(box, resolver)
    # only the hang-up ends the health wait (a timeout of 0 raced it on a loaded machine)
    args[args.index("--health-timeout") + 1] = "60"
    reader = box.base / "output-reader"
    prefix = ""
    if terminal == "gone":  # stdout and stderr through a `cat` the hang-up kills
        prefix = f"exec > >(echo $BASHPID > {reader}; exec cat >&2) 2>&1\n"
    hangup = box.base / "hangup"
    hangup.write_text(  # SIGHUP to the script: the topmost bash of the same command line
        "#!/bin/bash\n"
        f'[[ -f {reader} ]] && kill "$(cat {reader})" && sleep 0.2\n'
        "pid=$PPID\n"
        "while :; do\n"
        '  read -r _ _ _ parent _ </proc/"$pid"/stat\n'
        '  [[ "$(tr "\\0" " " </proc/"$parent"/cmdline)" == \\\n'
        '    "$(tr "\\0" " " </proc/"$pid"/cmdline)" ]] || break\n'
        "  pid=$parent\n"
        "done\n"
        'kill -HUP "$pid"\n'
        "sleep 0.2\n"
        "exit 7\n"
    )
    hangup.chmod(0o755)
    box.stand_in(
        "curl",
        Rule(r"file://", passthrough=need_binary("curl")),
        Rule(r"/health", passthrough=str(hangup)),
    )

    # A shell cannot trap a signal ignored when it started, and `docxy.cli.main`, which other
    # tests run in this process, ignores SIGHUP (as a mirror's process must): a login shell's
    # script starts with it at its default.
    ignored = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        result = box.run("", *args, stdin=prefix + script(box))
    finally:
        signal.signal(signal.SIGHUP, ignored)

    assert result.returncode == 129, output(result)
    if terminal == "kept":
        assert "putting the previous project back" in result.stderr, output(result)
    assert (project / "compose.yaml").read_text() == old, output(result)
    assert sibling_leftovers(project) == []
    ups = [c for c in box.calls("docker") if c.argv[-2:] == ["-d", "--build"]]
    assert len(ups) == 2, "the new version tried, then the previous one brought up again"


def test_a_project_left_aside_by_an_interrupted_update_is_put_back(
    box: ScriptBox, resolver: Resolver
) -> None:
    """Killed between its two renames, an update leaves the project only at .docxy.previous:
    the next run puts it back instead of fetching a new one into an empty place."""
    args, project, old = piped_update_setup(box, resolver)
    project.rename(project.parent / ".docxy.previous")
    rerun = [a for a in args if a != "--update"]

    result = box.run("", *rerun, stdin=script(box))

    assert result.returncode == 0, output(result)
    assert "an interrupted update left the project" in result.stdout
    assert (project / "compose.yaml").read_text() == old
    assert not box.called("file://"), "nothing fetched"
    assert sibling_leftovers(project) == []


# --- uninstall ----------------------------------------------------------------------------------


def test_uninstall_keeps_the_certificates_and_undoes_the_local_docker(
    box: ScriptBox, resolver: Resolver
) -> None:
    assert install(box, resolver, "--configure-local-docker").returncode == 0
    stack_is_running(box)
    box.forget_calls()

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 0, output(result)
    assert box.called(r"^docker compose --project-name docxy .* down --remove-orphans$")
    assert box.called(r"^docker volume rm docxy_cache$")
    assert not box.called(r"volume rm docxy_certs")
    assert "kept the certificate volume docxy_certs" in result.stdout
    assert env_file(box).exists()
    assert f"https://{DOMAIN}" not in box.path("/etc/docker/daemon.json").read_text()


def test_uninstall_removes_the_stack_when_the_local_docker_cannot_be_undone(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A daemon.json this host's dockerd names the mirror in, broken by hand since: taking the
    mirror out fails. The uninstall stopped there, the stack and its cache still up; now
    they go, and the run says what is left and how to finish it (exit 1)."""
    assert install(box, resolver, "--configure-local-docker").returncode == 0
    stack_is_running(box)
    daemon = box.path("/etc/docker/daemon.json")
    daemon.write_text(daemon.read_text() + "\n}, not JSON\n")
    box.forget_calls()

    dry = box.run(clone_script(box), "--root", str(box.root), "--uninstall", "--dry-run")
    assert dry.returncode == 1, output(dry)
    assert dry.stderr.splitlines()[-1].endswith(
        "would fail (above); the rest would be uninstalled all the same. "
        "Dry run: the changes above were not made."
    )
    assert not box.called(r"down --remove-orphans") and not box.called(r"volume rm")

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 1, output(result)
    assert box.called(r"^docker compose --project-name docxy .* down --remove-orphans$")
    assert box.called(r"^docker volume rm docxy_cache$")
    said = result.stderr.splitlines()[-1]
    assert said.startswith(f"install.sh: taking https://{DOMAIN} out of this host's dockerd")
    assert said.endswith(FINISH_BY_HAND), said
    assert f"https://{DOMAIN}" in daemon.read_text()  # as found: nothing guessed


def test_uninstall_still_names_the_local_docker_when_removing_the_stack_fails_too(
    box: ScriptBox, resolver: Resolver
) -> None:
    """Taking the mirror out of this host's dockerd failed, then so did `compose down`: the run
    ended on the generic stop message alone, and the dockerd's part, said only further up,
    was easily missed. Both are said at the end now."""
    assert install(box, resolver, "--configure-local-docker").returncode == 0
    daemon = box.path("/etc/docker/daemon.json")
    daemon.write_text(daemon.read_text() + "\n}, not JSON\n")
    stack_is_running(
        box, Rule(r" down --remove-orphans$", rc=1, stderr="Error response from daemon: busy\n")
    )

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 1, output(result)
    last = result.stderr.splitlines()[-3:]
    assert last[0].startswith("install.sh: stopped at"), output(result)
    assert last[-1].startswith(f"install.sh: also: taking https://{DOMAIN} out of this host's")
    assert last[-1].endswith(FINISH_BY_HAND), output(result)


def test_uninstall_purge_of_a_fetched_copy_names_no_script_it_removed(
    box: ScriptBox, resolver: Resolver
) -> None:
    """--purge removes a fetched /opt/docxy, configure-client.sh with it: when taking the mirror
    out of this host's dockerd had failed, the way to finish must not be that script."""
    env = {"DOCXY_SOURCE_URL": source_tarball(box)}
    args = ["--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--yes"]
    args += ["--public-ip", OURS, "--dns-server", resolver.address, "--health-timeout", "0"]
    first = box.run(
        "", *args, "--configure-local-docker", env=env, stdin=clone_script(box).read_text()
    )
    assert first.returncode == 0, output(first)
    project = box.path("/opt/docxy")
    daemon = box.path("/etc/docker/daemon.json")
    daemon.write_text(daemon.read_text() + "\n}, not JSON\n")
    stack_is_running(box)

    result = box.run(
        project / "scripts" / "install.sh", "--root", str(box.root), "--uninstall", "--purge"
    )

    assert result.returncode == 1, output(result)
    assert not project.exists(), output(result)
    said = result.stderr.splitlines()[-1]
    assert said.endswith(
        f"take https://{DOMAIN} out of registry-mirrors in /etc/docker/daemon.json, "
        "then reload docker"
    ), said


@pytest.mark.parametrize("marked", [True, False], ids=["fetched", "fetched-before-the-mark"])
def test_the_fetched_copy_is_fetched_again_and_purged_when_run_from_itself(
    box: ScriptBox, resolver: Resolver, marked: bool
) -> None:
    """After a piped install, the project's own scripts/install.sh took /opt/docxy for a clone:
    --update fetched nothing (and rebuilt the old code), --uninstall --purge kept it."""
    env = {"DOCXY_SOURCE_URL": source_tarball(box)}
    args = ["--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--yes"]
    args += ["--public-ip", OURS, "--dns-server", resolver.address, "--health-timeout", "0"]
    first = box.run("", *args, env=env, stdin=clone_script(box).read_text())
    assert first.returncode == 0, output(first)
    project = box.path("/opt/docxy")
    if not marked:  # as an earlier version of the script fetched it
        (project / ".docxy-fetched").unlink()
    stack_is_running(box)
    box.forget_calls()
    own = project / "scripts" / "install.sh"

    update = box.run(own, *args, "--update", env=env)
    assert update.returncode == 0, output(update)
    assert "using the clone" not in update.stdout and "fetching file://" in update.stdout

    purge = box.run(own, "--root", str(box.root), "--uninstall", "--purge")
    assert purge.returncode == 0, output(purge)
    assert not project.exists()


def test_a_fetched_copy_in_another_dir_is_the_one_its_own_script_updates(
    box: ScriptBox, resolver: Resolver
) -> None:
    """Run from a copy fetched into --dir /srv/docxy without --dir, the script took the default
    /opt/docxy: a second project fetched there, a .env of defaults, the stack replaced."""
    env = {"DOCXY_SOURCE_URL": source_tarball(box)}
    args = ["--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--yes"]
    args += ["--public-ip", OURS, "--dns-server", resolver.address, "--health-timeout", "0"]
    srv = box.path("/srv/docxy")
    first = box.run(
        "",
        *args,
        "--dir",
        str(srv),
        "--cache-size",
        "7G",
        env=env,
        stdin=clone_script(box).read_text(),
    )
    assert first.returncode == 0, output(first)
    stack_is_running(box)

    update = box.run(srv / "scripts" / "install.sh", *args, "--update", env=env)

    assert update.returncode == 0, output(update)
    assert not box.path("/opt/docxy").exists(), output(update)
    assert "DOCXY_CACHE_MAX_SIZE=7G" in (srv / ".env").read_text().splitlines()
    assert box.called(rf"-f {srv}/compose.yaml .* up -d --build$")


def test_uninstall_purge_removes_certificates_env_and_image(
    box: ScriptBox, resolver: Resolver
) -> None:
    assert install(box, resolver).returncode == 0
    stack_is_running(box)

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall", "--purge")

    assert result.returncode == 0, output(result)
    assert box.called(r"^docker volume rm docxy_certs$")
    assert box.called(r"^docker image rm docxy:local$")
    assert not env_file(box).exists()
    assert (box.base / "clone" / "compose.yaml").exists(), "a clone is never deleted"


@pytest.mark.parametrize("place", ["/srv/docxy", "/opt/docxy"])
def test_uninstall_purge_keeps_a_copy_unpacked_by_hand(
    box: ScriptBox, resolver: Resolver, place: str
) -> None:
    """--purge deleted any --dir holding a compose.yaml that was not the clone: a copy the
    operator unpacked by hand went, their compose.override.yaml with it. Only a copy this
    script fetched (marked .docxy-fetched) is its own to delete."""
    hand = box.path(place)
    shutil.copytree(box.base / "clone", hand)
    override = "services: {docxy: {environment: {X: '1'}}}\n"
    (hand / "compose.override.yaml").write_text(override)
    assert install_from(box, resolver, hand / "scripts" / "install.sh").returncode == 0
    stack_is_running(box)

    result = box.run(
        "", "--root", str(box.root), "--uninstall", "--purge", "--dir", str(hand),
        stdin=(hand / "scripts" / "install.sh").read_text(),
    )  # fmt: skip

    assert result.returncode == 0, output(result)
    assert (hand / "compose.override.yaml").read_text() == override, output(result)
    assert (hand / "compose.yaml").exists()
    assert not (hand / ".env").exists(), "the purge still removes .env"
    assert f"kept {hand}" in result.stdout, output(result)
    assert box.called(r"^docker volume rm docxy_certs$")


def install_from(
    box: ScriptBox, resolver: Resolver, path: Path
) -> subprocess.CompletedProcess[str]:
    args = ["--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--yes"]
    args += ["--public-ip", OURS, "--dns-server", resolver.address, "--health-timeout", "0"]
    return box.run(path, *args)


@pytest.mark.parametrize("spelling", ["{clone}/", "{clone}/scripts/.."])
def test_uninstall_purge_never_deletes_the_clone_named_another_way(
    box: ScriptBox, resolver: Resolver, spelling: str
) -> None:
    """`--dir /root/docxy/` (a shell's completion adds the slash) is still the clone."""
    clone = box.base / "clone"
    assert install(box, resolver).returncode == 0
    stack_is_running(box)
    named = spelling.format(clone=clone)

    result = box.run(
        clone_script(box), "--root", str(box.root), "--uninstall", "--purge", "--dir", named
    )

    assert result.returncode == 0, output(result)
    assert (clone / "compose.yaml").exists() and (clone / "Dockerfile").exists(), output(result)
    assert not env_file(box).exists(), "the purge still removes .env"


@pytest.mark.parametrize("action", [["--update"], ["--uninstall", "--purge"]])
def test_a_piped_run_never_replaces_or_deletes_a_git_clone_named_by_dir(
    box: ScriptBox, resolver: Resolver, action: list[str]
) -> None:
    """Piped, the script has no clone of its own: a --dir holding a git clone is still one."""
    clone = box.base / "clone"
    tarball = source_tarball(box)  # the project as published: no .git, no local change
    (clone / ".git").mkdir()
    (clone / "local-change.txt").write_text("mine")
    assert install(box, resolver).returncode == 0
    stack_is_running(box)
    args = ["--root", str(box.root), "--domain", DOMAIN, "--email", EMAIL, "--yes"]
    args += ["--public-ip", OURS, "--dns-server", resolver.address, "--health-timeout", "0"]
    args += ["--dir", str(clone), "--source-url", tarball, *action]

    result = box.run("", *args, stdin=clone_script(box).read_text())

    assert result.returncode == 0, output(result)
    assert (clone / ".git").is_dir() and (clone / "local-change.txt").exists(), output(result)


def test_uninstall_twice_the_second_changes_nothing(box: ScriptBox, resolver: Resolver) -> None:
    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 0, output(result)
    assert "Nothing to change: no Docxy left to uninstall here." in result.stdout
    assert "already installed" not in result.stdout  # what it said, after --uninstall
    assert not box.called(r"(down|volume rm|image rm)")


def dockerd_down(box: ScriptBox) -> None:
    """The docker CLI is there, its daemon is not (stopped, or refusing a broken daemon.json)."""
    down = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker "
    down += "daemon running?\n"
    box.stand_in(
        "docker",
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r".", rc=1, stderr=down),
    )


@pytest.mark.parametrize("purge", [[], ["--purge"]], ids=["uninstall", "purge"])
def test_uninstall_with_dockerd_down_removes_nothing_and_says_to_start_it(
    box: ScriptBox, resolver: Resolver, purge: list[str]
) -> None:
    """With dockerd down every `docker ps` and `docker volume inspect` failed, read as "absent":
    --uninstall said "Nothing to change" (exit 0), and --purge deleted .env while the container
    (restart: unless-stopped) and its volumes stayed, to come back at the next boot."""
    assert install(box, resolver).returncode == 0
    dockerd_down(box)
    box.forget_calls()
    files = box.files()

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall", *purge)

    assert result.returncode == 1, output(result)
    assert "dockerd is not running" in result.stderr, output(result)
    assert "Nothing to change" not in result.stdout
    assert env_file(box).exists()
    assert box.files() == files
    assert not box.called(r"^(rm|docker (rm|volume rm|image rm|compose .* down))")


def test_uninstall_dry_run(box: ScriptBox, resolver: Resolver) -> None:
    assert install(box, resolver).returncode == 0
    stack_is_running(box)
    box.forget_calls()
    files = box.files()

    result = box.run(
        clone_script(box), "--root", str(box.root), "--uninstall", "--purge", "--dry-run"
    )

    assert result.returncode == 0, output(result)
    assert "would run: docker volume rm docxy_certs" in result.stdout
    assert box.files() == files and env_file(box).exists()
    assert not box.called(r"(down|volume rm|image rm)")

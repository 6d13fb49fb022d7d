"""Review of scripts/install.sh: the .env it writes as both Composes read it, what a dry run
shows of it, and the OS line of its checks.

Same sandbox as tests/unit/test_install_script.py (its box, resolver and helpers). The .env
written is read by the real docker-compose 1.29 (`config`: no daemon needed) where this
machine has it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.scriptbox import ScriptBox, output
from tests.unavailable import need_binary, skip_or_fail
from tests.unit.test_install_script import DOMAIN, Resolver, env_file, install
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)
from tests.unit.test_install_script import resolver as resolver  # noqa: F401  (fixture)

# --- the upstream password as docker-compose 1.29 passes it into the container ----------------

#: Parses `docker-compose config` (YAML; PyYAML is docker-compose 1.29's own dependency) with
#: the Python docker-compose runs on, and prints the service's environment as JSON.
READ_CONFIG = """
import json, sys, yaml
service = yaml.safe_load(sys.stdin)["services"]["docxy"]
print(json.dumps(service.get("environment", {})))
"""


def compose129_environment(project: Path, home: Path) -> dict[str, str]:
    """The container's environment as the real docker-compose 1.29 builds it from project's
    compose.yaml (`env_file: .env`) and .env, with HOME set (a variable a value could name)."""
    binary = need_binary("docker-compose")
    version = subprocess.run([binary, "version", "--short"], capture_output=True, text=True)
    if not version.stdout.startswith("1."):
        skip_or_fail(f"docker-compose here is {version.stdout.strip()}, not 1.29")
    python = Path(binary).read_text().splitlines()[0].removeprefix("#!").split()
    config = subprocess.run(
        [binary, "--project-directory", str(project), "-f", str(project / "compose.yaml"),
         "--env-file", str(project / ".env"), "config"],
        capture_output=True, text=True, timeout=60,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert config.returncode == 0, config.stderr
    parsed = subprocess.run(
        [*python, "-c", READ_CONFIG], input=config.stdout, capture_output=True, text=True
    )
    assert parsed.returncode == 0, parsed.stderr
    environment: dict[str, str] = json.loads(parsed.stdout)
    # `config` writes a Compose file, where `$$` stands for one `$`.
    return {key: value.replace("$$", "$") for key, value in environment.items()}


@pytest.mark.parametrize(
    "password",
    ["pa$word", "$HOME", "a$$b", "ends$", "x # y", 'dq"uote', "sp ace", "br{ace}$", "$(id)"],
)
def test_a_password_with_dollars_reaches_the_container_unchanged_with_compose_1_29(
    box: ScriptBox, resolver: Resolver, password: str
) -> None:
    """The single-quoted DOCXY_UPSTREAM_PASSWORD install.sh writes is taken literally by
    Compose v2 (compose-go's dotenv: no expansion in single quotes) and by 1.29 (python-dotenv
    0.21 expands only `${...}`, whatever the quotes)."""
    result = install(
        box, resolver, "--upstream-user", "bob", env={"DOCXY_UPSTREAM_PASSWORD": password}
    )
    assert result.returncode == 0, output(result)

    environment = compose129_environment(env_file(box).parent, box.base)

    assert environment["DOCXY_UPSTREAM_PASSWORD"] == password
    assert environment["DOCXY_UPSTREAM_USERNAME"] == "bob"


@pytest.mark.parametrize("password", ["${HOME}x", "a${NOPE:-b}c", "${}"])
def test_a_password_compose_1_29_would_expand_is_refused(
    box: ScriptBox, resolver: Resolver, password: str
) -> None:
    """docker-compose 1.29 (Debian 12's) expands `${NAME}` in a .env value even in single
    quotes, and no quoting stops it, while v2 takes single quotes literally: the script wrote
    the password as given, and the mirror logged in to Docker Hub with another (HOME's value
    in its place), failing with 401 and pulling anonymously. Now it is refused, saying why."""
    # The premise, with the real 1.29: no spelling of the value survives it.
    project = box.base / "premise"
    project.mkdir()
    (project / "compose.yaml").write_text("services:\n  docxy:\n    image: x\n    env_file: .env\n")
    (project / ".env").write_text(f"DOCXY_UPSTREAM_PASSWORD='{password}'\n")
    assert compose129_environment(project, box.base)["DOCXY_UPSTREAM_PASSWORD"] != password

    result = install(
        box, resolver, "--upstream-user", "bob", env={"DOCXY_UPSTREAM_PASSWORD": password}
    )

    assert result.returncode == 2, output(result)
    assert "cannot contain '${'" in result.stderr, output(result)
    assert not env_file(box).exists()


# --- what a dry run shows of .env ---------------------------------------------------------------


def test_a_dry_run_shows_no_line_of_a_multi_line_secret(box: ScriptBox, resolver: Resolver) -> None:
    """A key kept in .env as a double-quoted multi-line value (a PEM, as compose reads it):
    the dry run masked the line with its key and printed the rest of the key verbatim."""
    box.without("docker")
    box.without("systemctl")
    env_file(box).parent.mkdir(parents=True, exist_ok=True)
    env_file(box).write_text(
        'DOCXY_TLS_PRIVATE_KEY="-----BEGIN PRIVATE KEY-----\n'
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
        "Zm9vYmFy=\n"
        '-----END PRIVATE KEY-----"\n'
        "DOCXY_LOG_LEVEL=DEBUG\n"
    )

    result = install(
        box, resolver, "--dry-run", "--upstream-user", "bob", env={"DOCXY_UPSTREAM_PASSWORD": "pw9"}
    )

    assert result.returncode == 0, output(result)
    shown = result.stdout + result.stderr
    assert f"would write {env_file(box)}" in shown, output(result)
    for secret in ("MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj", "Zm9vYmFy",
                   "END PRIVATE KEY", "pw9"):  # fmt: skip
        assert secret not in shown, output(result)
    assert f"| DOCXY_DOMAIN={DOMAIN}" in shown  # ours, not secret: shown
    assert "| DOCXY_UPSTREAM_USERNAME=bob" in shown
    assert "5 lines of yours" in shown, output(result)


# --- the OS line ---------------------------------------------------------------------------------

BOOKWORM = "Debian GNU/Linux 12 (bookworm)"


@pytest.mark.parametrize(
    ("os_release", "shown"),
    [
        ('NAME="Debian GNU/Linux"\nVERSION="12 (bookworm)"\nID=debian\n', BOOKWORM),
        ("NAME=Ubuntu\nVERSION_ID=24.04\nID=ubuntu\nVERSION_CODENAME=noble\n", "Ubuntu 24.04"),
        ("ID=debian\nVERSION_ID=12\nVERSION_CODENAME=bookworm\n", "debian 12"),
        ("PRETTY_NAME='Debian GNU/Linux 12 (bookworm)'\nID='debian'\n", BOOKWORM),
    ],
)  # fmt: skip
def test_the_os_line_is_never_empty(
    box: ScriptBox, resolver: Resolver, os_release: str, shown: str
) -> None:
    """/etc/os-release without PRETTY_NAME (optional there) printed "OS: " and nothing."""
    box.path("/etc/os-release").write_text(os_release)

    result = install(box, resolver, "--dry-run")

    assert result.returncode == 0, output(result)
    assert f"\nOS: {shown}\n" in result.stdout, output(result)

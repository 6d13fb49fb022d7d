"""Review of scripts/install.sh: a run interrupted or failed halfway and run again, and a host
without systemd.

Same sandbox as tests/unit/test_install_script.py: its box, its dnsmasq resolver and helpers.
"""

from __future__ import annotations

import pytest

from tests.scriptbox import Rule, ScriptBox, output
from tests.unit.test_install_script import (
    COMPOSE_UP,
    DOMAIN,
    Resolver,
    env_file,
    install,
    stack_is_running,
)
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)
from tests.unit.test_install_script import resolver as resolver  # noqa: F401  (fixture)

# --- a settings change that did not reach the running mirror ------------------------------------


def test_a_setting_whose_restart_failed_is_applied_by_the_rerun(
    box: ScriptBox, resolver: Resolver
) -> None:
    """A running mirror, a run with a new --cache-size: .env is written, then `compose up`
    fails (Docker Hub unreachable for the build's base, a Ctrl-C or an SSH drop at that point
    does the same). The script says "fix the cause, then run this again"; the rerun found .env
    already as asked and the old container running, said "already running with these settings"
    and "Nothing to change", and never restarted it: the mirror kept the old cache size."""
    assert install(box, resolver).returncode == 0
    stack_is_running(box, Rule(r"up -d --build$", rc=17, stderr="failed to solve\n"))

    failed = install(box, resolver, "--cache-size", "2G")

    assert failed.returncode == 1, output(failed)
    assert "DOCXY_CACHE_MAX_SIZE=2G" in env_file(box).read_text().splitlines()
    stack_is_running(box)  # the old container, still running; compose up now works
    box.forget_calls()

    again = install(box, resolver, "--cache-size", "2G")

    assert again.returncode == 0, output(again)
    assert box.called(COMPOSE_UP), output(again)
    assert "already running with these settings" not in again.stdout
    assert "Nothing to change" not in again.stdout
    box.forget_calls()
    third = install(box, resolver, "--cache-size", "2G")  # now it is up as asked
    assert third.returncode == 0 and "Nothing to change" in third.stdout, output(third)
    assert not box.called(COMPOSE_UP)


def test_a_dry_run_after_a_failed_restart_says_the_real_run_would_start_it(
    box: ScriptBox, resolver: Resolver
) -> None:
    assert install(box, resolver).returncode == 0
    stack_is_running(box, Rule(r"up -d --build$", rc=17, stderr="failed to solve\n"))
    assert install(box, resolver, "--cache-size", "2G").returncode == 1
    stack_is_running(box)
    box.forget_calls()

    dry = install(box, resolver, "--cache-size", "2G", "--dry-run")

    assert dry.returncode == 0, output(dry)
    assert "would run: docker compose" in dry.stdout, output(dry)
    assert not box.called(COMPOSE_UP)


# --- no systemd, no dockerd ---------------------------------------------------------------------

NOT_BOOTED = "System has not been booted with systemd as init system (PID 1). Can't operate.\n"
NO_DAEMON = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n"


def no_systemd(box: ScriptBox, how: str) -> None:
    if how == "no systemctl":
        box.without("systemctl")
    else:
        box.stand_in(
            "systemctl",
            Rule(r"^is-system-running", stdout="offline\n", rc=1),
            Rule(r".", stderr=NOT_BOOTED, rc=1),
        )


@pytest.mark.parametrize("how", ["no systemctl", "systemd offline"])
def test_without_systemd_a_dockerd_that_is_not_running_stops_the_run_saying_so(
    box: ScriptBox, resolver: Resolver, how: str
) -> None:
    """A container or WSL host, or one booted with another init, where dockerd is not running:
    the script said "make sure dockerd runs" in passing, wrote .env, and `compose up` failed
    with "docker compose could not build or start Docxy" and the advice to pass --base-image
    (a pull from Docker Hub), which is not the cause."""
    no_systemd(box, how)
    box.stand_in(
        "docker",
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r"^(volume|image) inspect", rc=1),
        Rule(r"^(info|ps|compose .* up)", rc=1, stderr=NO_DAEMON),
    )

    result = install(box, resolver)

    assert result.returncode == 1, output(result)
    assert not box.called(COMPOSE_UP), output(result)
    assert not env_file(box).exists(), "stopped before any change of the project"
    assert "--base-image" not in result.stderr, output(result)
    assert "dockerd is not running" in result.stderr, output(result)
    assert "start dockerd" in result.stderr, output(result)


@pytest.mark.parametrize("how", ["no systemctl", "systemd offline"])
def test_without_systemd_a_running_dockerd_is_used(
    box: ScriptBox, resolver: Resolver, how: str
) -> None:
    no_systemd(box, how)

    result = install(box, resolver)

    assert result.returncode == 0, output(result)
    assert box.called(COMPOSE_UP), output(result)
    assert not box.called(r"^systemctl (enable|start)")


def test_without_systemd_a_dry_run_says_a_stopped_dockerd_would_stop_the_real_run(
    box: ScriptBox, resolver: Resolver
) -> None:
    no_systemd(box, "no systemctl")
    box.stand_in(
        "docker",
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r"^(volume|image) inspect", rc=1),
        Rule(r"^(info|ps)", rc=1, stderr=NO_DAEMON),
    )

    dry = install(box, resolver, "--dry-run")

    assert "dockerd is not running" in output(dry), output(dry)
    assert "start dockerd" in output(dry), output(dry)


# --- an upstream password the operator keeps in a file -----------------------------------------

FILE_LINE = "DOCXY_UPSTREAM_PASSWORD_FILE=/run/secrets/hub_password"


def env_with_password_file(box: ScriptBox) -> None:
    """An operator who moved the password out of .env, as the README's "Secrets in files"
    offers (the secret mounted by a compose.override.yaml)."""
    env_file(box).write_text(
        f"DOCXY_DOMAIN={DOMAIN}\nDOCXY_CACHE_MAX_SIZE=20G\nDOCXY_UPSTREAM_USERNAME=bob\n"
        f"{FILE_LINE}\n"
    )


def test_a_rerun_keeps_an_upstream_password_read_from_a_file(
    box: ScriptBox, resolver: Resolver
) -> None:
    """The rerun (an --update, a new --cache-size) took the .env's user and, finding no
    DOCXY_UPSTREAM_PASSWORD, stopped with --yes ("the password for --upstream-user: set
    DOCXY_UPSTREAM_PASSWORD ..."), or asked for it and wrote it beside the _FILE line: the
    mirror then refuses to start ("upstream.password: set twice")."""
    env_with_password_file(box)

    result = install(box, resolver, "--cache-size", "30G")

    assert result.returncode == 0, output(result)
    lines = env_file(box).read_text().splitlines()
    assert "DOCXY_UPSTREAM_USERNAME=bob" in lines
    assert FILE_LINE in lines
    assert "DOCXY_CACHE_MAX_SIZE=30G" in lines
    assert not [line for line in lines if line.startswith("DOCXY_UPSTREAM_PASSWORD=")], lines


def test_a_password_given_beside_a_password_file_is_refused_before_any_change(
    box: ScriptBox, resolver: Resolver
) -> None:
    env_with_password_file(box)
    before = env_file(box).read_bytes()

    result = install(box, resolver, env={"DOCXY_UPSTREAM_PASSWORD": "s3cret"})

    assert result.returncode == 2, output(result)
    assert "DOCXY_UPSTREAM_PASSWORD_FILE" in result.stderr, output(result)
    assert env_file(box).read_bytes() == before
    assert not box.called(COMPOSE_UP)
    assert "s3cret" not in output(result)


# --- a cache size the mirror reads, kept in .env -------------------------------------------------


def test_the_disk_check_counts_a_fractional_cache_size(box: ScriptBox, resolver: Resolver) -> None:
    """0.5T needs 512 GiB and the image's room: 500 GiB free is not enough."""
    result = install(box, resolver, "--cache-size", "0.5T")

    assert result.returncode == 1, output(result)
    assert "free space or pass a smaller --cache-size" in result.stderr, output(result)
    assert "need 514 GiB" in result.stderr, output(result)

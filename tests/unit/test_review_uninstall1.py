"""--uninstall brings down the compose files the stack's containers were made from.

A bridge install writes no COMPOSE_FILE line to .env, so uninstall chose its file from the
host's routes at uninstall time: with the IPv4 default route gone since (a DHCP lease lapsed,
VPN or policy routing), it brought down compose.host.yaml for a stack made from compose.yaml,
and compose.yaml's network stayed behind. The containers' own label says which files made them.
"""

from __future__ import annotations

import re

from tests.scriptbox import Rule, ScriptBox, output
from tests.unit.test_install_script import (
    CONFIG_FILES_LABEL,
    Resolver,
    clone_script,
    env_file,
    install,
    resolver_on,
    stack_is_running,
)
from tests.unit.test_install_script import box as box  # noqa: F401
from tests.unit.test_review_install5 import routes, with_host_file
from tests.unit.test_review_install9 import compose_down_files

resolver = resolver_on("127.0.102.2", 12850)  # this module's own address and port


def uninstall(box: ScriptBox, *args: str) -> str:
    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall", *args)
    assert result.returncode == 0, output(result)
    return result.stdout


def test_uninstall_after_the_ipv4_route_went_brings_down_the_bridge_stack(
    box: ScriptBox, resolver: Resolver
) -> None:
    routes(box, ipv4=True)
    with_host_file(box)
    assert install(box, resolver).returncode == 0
    assert "COMPOSE_FILE" not in env_file(box).read_text()
    stack_is_running(box)
    box.forget_calls()
    routes(box, ipv4=False)  # the IPv4 default route gone by uninstall time

    uninstall(box)

    assert compose_down_files(box) == [str(box.base / "clone" / "compose.yaml")]


def test_uninstall_brings_down_every_file_the_containers_were_made_from(
    box: ScriptBox, resolver: Resolver
) -> None:
    """An override the stack was brought up with by hand, since taken out of .env, still goes
    into `compose down` (it may name the networks the stack made)."""
    routes(box, ipv4=True)
    clone = box.base / "clone"
    (clone / "compose.mine.yaml").write_text("services: {}\n")
    env_file(box).write_text("COMPOSE_FILE=compose.yaml:compose.mine.yaml\n")
    assert install(box, resolver).returncode == 0
    env_file(box).write_text("DOCXY_DOMAIN=mirror.test\n")
    stack_is_running(box)
    box.forget_calls()

    uninstall(box)

    assert compose_down_files(box) == [
        str(clone / "compose.yaml"),
        str(clone / "compose.mine.yaml"),
    ]


def test_a_label_naming_files_no_longer_there_falls_back_to_env(
    box: ScriptBox, resolver: Resolver
) -> None:
    """compose down cannot read a file that is not there: the label's files are used only
    where the first is; else .env's COMPOSE_FILE decides, as before."""
    routes(box, ipv4=True)
    with_host_file(box)
    env_file(box).write_text("DOCXY_DOMAIN=mirror.test\nCOMPOSE_FILE=compose.host.yaml\n")
    gone = str(box.base / "elsewhere" / "compose.yaml")
    box.stand_in(  # made from a copy of the project since deleted
        "docker",
        Rule(r"^info", stdout="[]\n"),
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(rf"^ps .*{re.escape(CONFIG_FILES_LABEL)}", stdout=f"{gone}\n"),
        Rule(r"^ps ", stdout="3f2a1b\n"),
        Rule(r"^(volume|image) inspect"),
    )

    out = uninstall(box)

    assert compose_down_files(box) == [str(box.base / "clone" / "compose.host.yaml")]
    assert gone in out, "says why the containers' own files are not used"


def test_a_dry_run_says_the_files_it_would_bring_down(box: ScriptBox, resolver: Resolver) -> None:
    routes(box, ipv4=True)
    with_host_file(box)
    assert install(box, resolver).returncode == 0
    stack_is_running(box)
    routes(box, ipv4=False)

    out = uninstall(box, "--dry-run")

    compose_yaml = str(box.base / "clone" / "compose.yaml")
    assert "down --remove-orphans" in out
    assert f"-f {compose_yaml} " in out, out
    assert "compose.host.yaml" not in out


def test_a_network_the_files_brought_down_did_not_name_is_removed(
    box: ScriptBox, resolver: Resolver
) -> None:
    """Where neither the label's files nor .env say, the routes still guess: a stack made from
    compose.yaml brought down with compose.host.yaml (no network of its own) kept its network,
    which the label sweep skipped once `compose down` had run."""
    routes(box, ipv4=False)
    with_host_file(box)
    env_file(box).write_text("DOCXY_DOMAIN=mirror.test\n")
    gone = str(box.base / "elsewhere" / "compose.yaml")
    box.stand_in(
        "docker",
        Rule(r"^info", stdout="[]\n"),
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(rf"^ps .*{re.escape(CONFIG_FILES_LABEL)}", stdout=f"{gone}\n"),
        Rule(r"^ps ", stdout="3f2a1b\n"),
        Rule(
            r"^network ls -q --filter label=com\.docker\.compose\.project=docxy$", stdout="5e1d0c\n"
        ),
        Rule(r"^(volume|image) inspect"),
    )

    uninstall(box)

    assert compose_down_files(box) == [str(box.base / "clone" / "compose.host.yaml")]
    assert box.called(r"^docker network rm 5e1d0c$")


def test_a_network_still_in_use_is_said_and_the_rest_removed(
    box: ScriptBox, resolver: Resolver
) -> None:
    """`compose down` leaves a network another container still uses, with a warning; the sweep
    after it must not then end the run before the cache volume goes."""
    routes(box, ipv4=True)
    assert install(box, resolver).returncode == 0
    stack_is_running(
        box,
        Rule(
            r"^network ls -q --filter label=com\.docker\.compose\.project=docxy$", stdout="5e1d0c\n"
        ),
        Rule(r"^network rm ", rc=1, stderr="Error response from daemon: has active endpoints\n"),
    )
    box.forget_calls()

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 0, output(result)
    assert box.called(r"^docker network rm 5e1d0c$")
    assert box.called(r"^docker volume rm docxy_cache$")
    assert "5e1d0c" in result.stderr, output(result)
